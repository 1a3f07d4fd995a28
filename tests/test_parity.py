"""The parity check's reference answers: generated once per source model, prompts, budget, dtype and
device, then reused by the next export of the same source (quant_lab runs six)."""
from conftest import EMBEDDED

from exports.parity import ParityFields, compare_with_source
from pipeline.artifact import Artifact
from pipeline.data.datasets import DatasetSpec
from pipeline.engine.context import StageContext
from pipeline.models.config import ModelConfig

PROMPTS = DatasetSpec(path="embedded/data/test_math.jsonl", format="gsm8k")


def _ctx(tmp_path, device="cpu"):
    return StageContext(name="export", out_dir=tmp_path, run_dir=tmp_path, device=device, seed=0, tracker=None,
                        model=ModelConfig(name="embedded", path=str(EMBEDDED), dtype="float32"))


def test_a_second_export_of_the_same_source_reuses_its_answers(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TUNECHAIN_CACHE", str(tmp_path / "cache"))
    source = Artifact(kind="model", path=str(EMBEDDED), fingerprint="f" * 16, format="hf")
    cfg = ParityFields(parity_prompts=PROMPTS, parity_limit=4, parity_max_new_tokens=8)
    first = compare_with_source(cfg, source, source, _ctx(tmp_path))
    assert len(list((tmp_path / "cache" / "parity").iterdir())) == 1
    assert "reused" not in capsys.readouterr().out
    second = compare_with_source(cfg, source, source, _ctx(tmp_path))
    assert "greedy answers reused" in capsys.readouterr().out
    assert first == second and first["parity_identical"] == 1.0   # the model against itself, from the cache too

    compare_with_source(ParityFields(parity_prompts=PROMPTS, parity_limit=4, parity_max_new_tokens=6), source, source, _ctx(tmp_path))
    assert "reused" not in capsys.readouterr().out               # another budget: generated again
    unfingerprinted = Artifact(kind="model", path=str(EMBEDDED), fingerprint="", format="hf")
    compare_with_source(cfg, unfingerprinted, unfingerprinted, _ctx(tmp_path))  # merged inside a stage: nothing to key it by
    assert "reused" not in capsys.readouterr().out
    assert len(list((tmp_path / "cache" / "parity").iterdir())) == 2
