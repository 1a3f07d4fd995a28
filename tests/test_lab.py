"""The evaluation lab's pieces: the speed task (one streamed generation), the variants table with
compression and quality retained, the plot and report.html, and optional stages that are skipped
with their reason (and their dependents) where they cannot run."""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import compose, tiny_overrides

from pipeline.engine import report
from pipeline.engine.plan import build_plan
from pipeline.engine.runner import run_chain
from pipeline.engine.store import Store
from pipeline.errors import PlanError


def _eval(name, source, size, accuracy, compare_with=None, **extra):
    return {"name": name, "kind": "eval", "output": "eval", "status": "done", "inputs": [source], "compare_with": compare_with,
            "metrics": {"size_mb": size, "math_accuracy": accuracy, "backend": "transformers", **extra}}


def _predictions(folder: Path, correct: list[bool]) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "predictions.jsonl").write_text("".join(json.dumps({"question": f"q{i}", "correct": c}) + "\n"
                                                      for i, c in enumerate(correct)))
    return str(folder)


def test_variants_table_plot_and_html(tmp_path):
    exports = [{"name": n, "kind": "gguf", "output": "gguf", "status": "done", "inputs": ["merge"],
                "metrics": {"parity_kld_mean": kld}} for n, kld in (("gguf_q8", 0.00042), ("gguf_q4", 0.0213))]
    entries = [*exports, _eval("eval_reference", "merge", 16.0, 0.80, first_token_s=0.04, decode_tokens_per_s=50.0,
                               math_n=10, stopped_at_eos=0.9),
               _eval("eval_q8", "gguf_q8", 4.0, 0.80, "eval_reference", math_n=10),
               _eval("eval_q4", "gguf_q4", 2.0, 0.60, "eval_reference", math_n=10)]
    entries[2]["artifact"] = _predictions(tmp_path / "ref", [True] * 8 + [False] * 2)
    entries[4]["artifact"] = _predictions(tmp_path / "q4", [True] * 6 + [False] * 4)
    rows = report.variants(entries)
    assert rows[0][:7] == ["variant", "backend", "size MB", "compression", "math acc (n)", "retained [95% CI]",
                           "stops at EOS"]
    assert rows[1][4:7] == ["80.0% (n=10)", "-", "90.0%"]
    assert rows[2][3:6] == ["4.00x", "80.0% (n=10)", "100.0%"]  # no predictions: no interval
    ratio, interval = rows[3][5].split(" ", 1)
    low, high = map(float, interval.strip("[]").split("-"))
    assert rows[3][3] == "8.00x" and ratio == "75.0%" and low < 75 < high and high - low > 20  # n=10 is wide
    assert rows[1][9] == "40.0"  # first token in ms
    assert [r[15] for r in rows] == ["KLD vs source", "-", "4.20e-04", "0.0213"]  # from each export's parity
    record = {"recipe": "lab", "model": "m", "model_path": "p", "status": "done", "store": "s", "stages": entries}
    report.write(tmp_path, record, SimpleNamespace())
    png = tmp_path / report.PLOT
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (tmp_path / "report.html").read_text()
    assert "<table>" in html and report.PLOT in html and "gguf_q4" in html


def test_a_trained_adapter_is_no_variant_of_its_base(tmp_path):
    """quickstart compares the SFT adapter with the base model: that is a comparison, not a Variants table
    (which would show the adapter as a '0.93x' model with '2883% retained')."""
    entries = [_eval("eval_base", "base", 15.0, 0.03),
               {"name": "sft", "kind": "sft", "status": "done", "inputs": ["base"], "metrics": {}},
               _eval("eval_tuned", "sft", 16.0, 0.865, "eval_base")]
    assert report.variants(entries) == []
    record = {"recipe": "quickstart", "model": "m", "model_path": "p", "status": "done", "store": "s",
              "stages": entries}
    report.write(tmp_path, record, SimpleNamespace())
    text = (tmp_path / "report.md").read_text()
    assert "## Variants" not in text and "eval_tuned vs eval_base: math_accuracy 3.0% -> 86.5% (+83.5 points)" in text
    assert not (tmp_path / report.PLOT).exists()


def test_every_tasks_headline_is_in_the_tables(tmp_path):
    entries = [{"name": "eval_code", "kind": "eval", "output": "eval", "status": "done", "inputs": ["base"], "seconds": 3.0,
                "metrics": {"code_pass@1": 0.25, "code_n": 4}},
               {"name": "eval_mcq", "kind": "eval", "output": "eval", "status": "done", "inputs": ["base"], "seconds": 2.0,
                "metrics": {"mcq_accuracy": 0.5, "lmeval_gsm8k_exact_match": 0.1, "lmeval_gsm8k_stderr": 0.01}}]
    record = {"recipe": "r", "model": "m", "model_path": "p", "status": "done", "store": "s", "stages": entries}
    report.write(tmp_path, record, SimpleNamespace())
    text = (tmp_path / "report.md").read_text()
    assert "code_pass@1" in text and "25.0%" in text and "mcq_accuracy" in text and "lmeval_gsm8k_exact_match" in text
    assert "stderr" not in text
    terminal = report.terminal_summary(tmp_path, record, SimpleNamespace())
    assert "code_pass@1" in terminal and "25.0%" in terminal


def test_speed_task_measures_one_streamed_generation(tiny_llama, tmp_path):
    cfg = compose([*tiny_overrides(tiny_llama), "~stages.sft", "~stages.eval_tuned", f"paths.store={tmp_path / 's'}",
                   "stages.eval_base.tasks=[speed]", "stages.eval_base.settings.speed.new_tokens=12"])
    record = run_chain(cfg, tmp_path / "run", "quickstart", [], None)
    metrics = record["stages"][0]["metrics"]
    assert metrics["speed_new_tokens"] == 12 and metrics["speed_repeats"] == 3
    # a prompt of realistic length (worked examples before the question), within the model's 512 positions
    assert 200 < metrics["speed_prompt_tokens"] <= 512 - 12
    assert 0 < metrics["first_token_s"] < 5 and metrics["decode_tokens_per_s"] > 1
    assert metrics["size_mb"] > 0 and metrics["memory_of"] == "peak_rss_growth" and metrics["memory_mb"] >= 0


def test_optional_stage_that_cannot_run_is_skipped_with_its_dependents(tmp_path, monkeypatch):
    from exports.gptq import GPTQConfig

    def unavailable(self, where, device):
        raise PlanError(f"{where}: gptqmodel cannot be imported")

    monkeypatch.setattr(GPTQConfig, "check_device", unavailable)
    cfg = compose(["recipe=quant_lab", "logger=none"])
    plan = build_plan(cfg, Store(tmp_path))
    names = [s.name for s in plan.steps]
    assert "gptq" not in names and "eval_gptq" not in names and "eval_gguf_q8_0" in names
    assert plan.skipped == ["eval_gptq, gptq: skipped (optional) because stages.gptq: gptqmodel cannot be imported"]
    assert "skip  eval_gptq, gptq" in plan.render()

    cfg = compose(["recipe=quant_lab", "logger=none", "stages.gptq.optional=false"])
    with pytest.raises(PlanError, match="stages.gptq: gptqmodel cannot be imported"):
        build_plan(cfg, Store(tmp_path))


def test_an_optional_stage_that_fails_its_plan_checks_is_skipped(tiny_llama, tmp_path):
    """The ready-model lab on a model whose layer sizes (64) GPTQ's group size (128) does not divide: the
    optional GPTQ stage is skipped with the reason, the other variants still plan."""
    cfg = compose(["recipe=quant_lab", "logger=none", "lab.source=base", "~stages.sft", "~stages.merge",
                   f"model.path={tiny_llama}", "model.name=tiny"])
    plan = build_plan(cfg, Store(tmp_path), device="cpu")
    names = [s.name for s in plan.steps]
    assert "gptq" not in names and "eval_gptq" not in names and "gguf_q8_0" in names
    assert len(plan.skipped) == 1 and "stages.gptq.group_size: 128 does not divide" in plan.skipped[0]


def test_quant_lab_sources_every_variant_from_one_stage():
    cfg = compose(["recipe=quant_lab", "lab.source=base", "~stages.sft", "~stages.merge"])
    variants = [n for n in cfg.stages if not n.startswith("eval_")]
    assert variants == ["int8", "nf4", "gptq", "gguf_f16", "gguf_q8_0", "gguf_q4_k_m"]
    assert all(list(cfg.stages[n].inputs) == ["base"] for n in variants)
    assert list(cfg.stages.eval_nf4.tasks) == ["math", "instruct", "perplexity", "speed"]


def test_chain_record_lists_skipped_stages(tmp_path):
    entries = [_eval("a", "base", 1.0, 0.5)]
    record = {"recipe": "r", "model": "m", "model_path": "p", "status": "done", "store": "s", "stages": entries,
              "skipped": ["gptq: skipped (optional) because no gptqmodel"]}
    report.write(Path(tmp_path), record, SimpleNamespace())
    assert "## Skipped" in (tmp_path / "report.md").read_text()


def test_instruct_and_judge_tasks_in_a_chain(tiny_llama, tmp_path, monkeypatch):
    from test_judge import FakeJudgeEndpoint

    replies = iter(["Rating: 7/10", "no verdict here", "Rating: 3/10"] * 10)
    monkeypatch.setenv("TUNECHAIN_JUDGE_API_KEY", "sk-judge-secret")
    with FakeJudgeEndpoint(lambda prompt: (200, next(replies), 0)) as judge:
        monkeypatch.setenv("TUNECHAIN_JUDGE_URL", judge.url)
        cfg = compose([*tiny_overrides(tiny_llama), "~stages.sft", "~stages.eval_tuned", f"paths.store={tmp_path / 's'}",
                       "stages.eval_base.tasks=[instruct,judge]", "stages.eval_base.limit=6", "logger=none"])
        record = run_chain(cfg, tmp_path / "run", "quickstart", [], None)
    metrics = record["stages"][0]["metrics"]
    assert metrics["instruct_n"] == 6 and 0 <= metrics["instruct_pass_rate"] <= 1
    assert 0 <= metrics["gen_bleu"] <= 100 and 0 <= metrics["gen_rougeL"] <= 1
    assert metrics["judge_parsed"] == 4 and metrics["judge_unparsable"] == 2 and metrics["judge_failed"] == 0
    assert metrics["judge_score"] == 5.0  # 7, 3, 7, 3: unparsable verdicts are counted, never scored
    assert all(r["auth"] == "Bearer sk-judge-secret" for r in judge.requests)
    folder = Path(record["stages"][0]["artifact"])
    assert len((folder / "judge.jsonl").read_text().splitlines()) == 6
    for path in [folder / "artifact.json", folder / "judge.jsonl", tmp_path / "run" / "chain.json"]:
        assert "sk-judge-secret" not in path.read_text()


def test_judge_without_an_endpoint_fails_at_plan_time(tmp_path, monkeypatch):
    from pipeline.errors import ConfigError

    monkeypatch.delenv("TUNECHAIN_JUDGE_URL", raising=False)
    cfg = compose(["stages.eval_tuned.tasks=[math,judge]", "logger=none"])
    with pytest.raises(ConfigError, match=r"^stages\.eval_tuned\.judge\.base_url_env: \$TUNECHAIN_JUDGE_URL is unset"):
        build_plan(cfg, Store(tmp_path))


def test_malformed_instruct_data_fails_at_plan_time_with_path_and_line(tmp_path):
    from pipeline.data.datasets import DataError

    bad = tmp_path / "instruct.jsonl"
    bad.write_text('{"prompt": "Say hi", "check": {"type": "question"}}\n'
                   '{"prompt": "Count", "check": {"type": "word_count"}}\n')
    cfg = compose([f"data.test_instruct.path={bad}", "stages.eval_base.tasks=[instruct]", "logger=none"])
    with pytest.raises(DataError, match=r"^stages\.eval_base\.instruct: .*instruct\.jsonl:2: check: "):
        build_plan(cfg, Store(tmp_path))


def test_tools_mcq_code_and_reasoning_tasks_in_a_chain(tiny_llama, tmp_path):
    data = Path(__file__).parent / "data"
    cfg = compose([*tiny_overrides(tiny_llama), "~stages.sft", "~stages.eval_tuned", f"paths.store={tmp_path / 's'}",
                   "stages.eval_base.tasks=[reasoning,tools,mcq,code]", "stages.eval_base.limit=3",
                   f"stages.eval_base.settings.mcq.path={data / 'mcq_sample.jsonl'}",
                   f"stages.eval_base.settings.code.path={data / 'code_sample.jsonl'}",
                   "stages.eval_base.settings.code.allow_code_execution=true", "logger=none"])
    record = run_chain(cfg, tmp_path / "run", "quickstart", [], None)
    metrics = record["stages"][0]["metrics"]
    assert metrics["tools_n"] == 3 and 0 <= metrics["tools_choice_accuracy"] <= 1
    assert metrics["mcq_n"] == 3 and 0 <= metrics["mcq_accuracy"] <= 1
    assert metrics["code_n_problems"] == 3 and metrics["code_pass@1"] == 0.0  # a random model writes no code
    assert metrics["reasoning_n"] == 3 and "math_accuracy" in metrics
    folder = Path(record["stages"][0]["artifact"])
    episodes = [json.loads(line) for line in (folder / "tools_episodes.jsonl").read_text().splitlines()]
    assert [e["call_match"] for e in episodes].count(True) == round(3 * metrics["tools_call_match"])
    assert all(e["prompt"] and e["tool"] for e in episodes)  # the case beside the episode
    chosen = [json.loads(line) for line in (folder / "mcq_predictions.jsonl").read_text().splitlines()]
    assert sum(c["correct"] for c in chosen) == round(3 * metrics["mcq_accuracy"]) and all(c["question"] for c in chosen)
    text = (tmp_path / "run" / "report.md").read_text()  # a few of each task's items, for reading
    assert "eval_base, tools (tools_episodes.jsonl):" in text and "eval_base, mcq (mcq_predictions.jsonl):" in text


def test_file_based_tasks_fail_at_plan_time(tmp_path):
    from pipeline.data.datasets import DataError
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^stages\.eval_base\.settings\.mcq\.path: task 'mcq' needs a file"):
        build_plan(compose(["stages.eval_base.tasks=[mcq]", "logger=none"]), Store(tmp_path))
    bad = tmp_path / "tools.jsonl"
    bad.write_text('{"prompt": "2+2?", "tool": "calculator", "arguments": {"expression": "2+2"}, "answer": "4"}\n'
                   '{"prompt": "weather?", "tool": "teleport", "arguments": {}, "answer": "x"}\n')
    with pytest.raises(DataError, match=r"tools\.jsonl:2: "):
        build_plan(compose(["stages.eval_base.tasks=[tools]", f"stages.eval_base.settings.tools.path={bad}",
                            "logger=none"]),
                   Store(tmp_path))


def test_lm_eval_task_is_checked_at_plan_time(tmp_path, monkeypatch):
    import importlib.util

    from pipeline.artifact import Artifact
    from pipeline.errors import ConfigError
    from pipeline.evaluation.scoring.lmeval import model_args

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real(name, *a))
    with pytest.raises(ConfigError, match=r"^stages\.eval_base\.tasks: task 'lm_eval' needs lm-evaluation-harness"):
        build_plan(compose(["stages.eval_base.tasks=[lm_eval]", "logger=none"]), Store(tmp_path))
    adapter = Artifact(kind="adapter", path="/a", fingerprint="", base_model="/base")
    assert model_args(adapter, "float32") == {"pretrained": "/base", "peft": "/a", "dtype": "float32"}


def test_report_draws_training_curves_and_judge_scores(tmp_path):
    rows = [{"stage": "sft", "step": i, "loss": 4.0 / i} for i in range(1, 6)]
    rows += [{"stage": "grpo", "step": i, "reward": 0.1 * i} for i in range(1, 4)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    judged = _eval("eval", "base", 1.0, 0.5, judge_distribution={"7": 2, "3": 1}, judge_unparsable=1, judge_failed=0)
    record = {"recipe": "r", "model": "m", "model_path": "p", "status": "done", "store": "s", "stages": [judged]}
    report.write(tmp_path, record, SimpleNamespace())
    text = (tmp_path / "report.md").read_text()
    assert (tmp_path / report.CURVES).read_bytes()[:4] == b"\x89PNG"
    assert "## Training curves" in text
    assert "eval: 1:0 2:0 3:1 4:0 5:0 6:0 7:2 8:0 9:0 10:0 (unparsable 1, failed 0)" in text


def test_a_gguf_stage_of_the_chain_judges_on_loopback(tiny_llama, tmp_path):
    pytest.importorskip("llama_cpp.server")
    cfg = compose([*tiny_overrides(tiny_llama), "~stages.sft", "~stages.eval_tuned", "~stages.eval_base",
                   f"paths.store={tmp_path / 's'}", "logger=none", "+stage@stages.judge_gguf=gguf",
                   "stages.judge_gguf.inputs=[base]", "stages.judge_gguf.quant=f16", "stages.judge_gguf.parity=false",
                   "+stage@stages.judged=eval", "stages.judged.inputs=[base,judge_gguf]",
                   "stages.judged.judge_stage=judge_gguf", "stages.judged.tasks=[instruct,judge]",
                   "stages.judged.limit=3", "stages.judged.max_new_tokens.instruct=8", "stages.judged.judge.max_tokens=16"])
    record = run_chain(cfg, tmp_path / "run", "judge", [], None)
    metrics = record["stages"][-1]["metrics"]
    assert metrics["judge_failed"] == 0
    assert metrics["judge_parsed"] + metrics["judge_unparsable"] == 3


def test_judge_stage_must_be_an_input(tmp_path):
    from pipeline.errors import ConfigError

    cfg = compose(["recipe=sft_to_gguf", "logger=none", "stages.eval_merged.judge_stage=gguf",
                   "stages.eval_merged.tasks=[judge]"])
    with pytest.raises(ConfigError, match=r"^stages\.eval_merged\.judge_stage: 'gguf' must be an earlier gguf stage"):
        build_plan(cfg, Store(tmp_path))


def test_the_seed_labs_math_problems_ship_with_corrected_answers():
    from pipeline.data.datasets import DatasetSpec, load

    records = load(DatasetSpec(path="embedded/seed_lab/math.jsonl", format="gsm8k"), "gsm8k")
    assert len(records) == 13
    assert records[-1]["target"] == "30"  # the seed says 32: (8+2)*(5+2) - 8*5 = 30


def test_report_shows_a_few_items_of_each_task_wrong_ones_first(tmp_path):
    folder = tmp_path / "eval"
    folder.mkdir()
    rows = [{"question": f"q{i}", "target": "4", "output": f"it is {i}", "predicted": str(i), "correct": i == 4}
            for i in range(6)]
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    entry = {**_eval("eval", "base", 1.0, 1 / 6), "artifact": str(folder)}
    text = "\n".join(report.item_examples([entry]))
    assert "eval, math (predictions.jsonl):" in text
    assert text.index("q0") < text.index("q1") < text.index("q4") and "q2" not in text
    assert "`it is 4` read as `4`: **right**" in text and "`it is 0` read as `0`: **wrong**" in text
