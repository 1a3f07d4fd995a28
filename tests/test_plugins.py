"""A stage kind and an eval task with its own settings are one file outside tunechain: `plugins=[file.py]`
imports it, the stage runs in a chain after the shipped ones, the task's setting takes a command-line
override, and both show up in chain.json and the report."""
import json
import textwrap
from pathlib import Path

from conftest import read_chain, run_main, tiny_overrides

PLUGIN = '''
"""A user's own stage kind and eval task."""
import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.artifact import Artifact
from pipeline.engine.contract import StageConfig
from pipeline.engine.registry import stage
from pipeline.evaluation.registry import task
from pipeline.ranges import at_least, setting


@dataclass
class CountFilesConfig(StageConfig):
    kind: str = setting("count_files", "the stage kind")
    suffix: str = setting(".safetensors", "which files of the input to count")


@stage("count_files", config=CountFilesConfig, consumes={"model", "adapter"}, produces="eval")
def count_files(cfg, inputs, ctx):
    """Count the input's files that end with a suffix."""
    names = sorted(p.name for p in Path(inputs.primary.path).iterdir() if p.name.endswith(cfg.suffix))
    (Path(ctx.out_dir) / "files.json").write_text(json.dumps(names))
    return Artifact(kind="eval", path=str(ctx.out_dir), fingerprint="", format="eval-report",
                    metrics={"files": len(names)})


@dataclass
class AnswerWordsSettings:
    max_words: int = at_least(1, 50, help="answers with more words than this count as long")


@task("answer_words", order=90, headlines=("long_answers",), needs=("math",), settings=AnswerWordsSettings,
      percent=("long_answers",))
def answer_words(ev):
    """Share of the math answers with more than settings.answer_words.max_words words."""
    limit = ev.cfg.settings.answer_words.max_words
    answers = ev.shared["math"]
    return {"long_answers": sum(len(a.text.split()) > limit for a in answers) / len(answers), "max_words": limit}
'''


def test_a_stage_kind_and_a_task_from_one_outside_file_run_in_a_chain(tiny_llama, tmp_path):
    plugin = tmp_path / "elsewhere" / "my_plugin.py"
    plugin.parent.mkdir()
    plugin.write_text(textwrap.dedent(PLUGIN))
    result = run_main(tiny_overrides(tiny_llama) + [
        "data.sft.limit=32", f"plugins=[{plugin}]", "+stage/schema@stages.count=count_files",
        "stages.count.inputs=[sft]", "stages.count.suffix=.json", "stages.eval_tuned.tasks=[math,answer_words]",
        "stages.eval_tuned.settings.answer_words.max_words=3"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    stages = {s["name"]: s for s in read_chain(tmp_path / "run")["stages"]}
    assert [stages[n]["status"] for n in ("eval_base", "sft", "eval_tuned", "count")] == ["done"] * 4
    counted = json.loads((Path(stages["count"]["artifact"]) / "files.json").read_text())
    assert "adapter_config.json" in counted and stages["count"]["metrics"]["files"] == len(counted)
    tuned = stages["eval_tuned"]["metrics"]
    assert tuned["max_words"] == 3 and 0 <= tuned["long_answers"] <= 1  # the override reached the child process
    assert "long_answers" in (tmp_path / "run" / "report.md").read_text()


def test_a_plugin_setting_typo_is_named(tiny_llama, tmp_path):
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text(textwrap.dedent(PLUGIN))
    result = run_main(tiny_overrides(tiny_llama) + [f"plugins=[{plugin}]", "+stage/schema@stages.count=count_files",
                                                    "stages.count.sufix=.json"], tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[0] == (
        "error: stages.count.sufix: unknown key (did you mean 'suffix'?); valid keys: kind, inputs, optional, suffix")
