"""Crashes contained (pipeline/engine/launch.py): stages with native code (eval, gguf, bnb, gptq) run in
a child process; one that dies of a signal fails as that stage, named with the signal and its last
lines in chain.json, the report is still written, and an optional stage's failure skips only the
stages that need it. The signal is sent from outside, as the kernel would (a segfault, an OOM kill)."""
import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from conftest import ROOT, tiny_overrides


def _worker(chain: subprocess.Popen):
    """This chain's stage process (another test's may still be ending)."""
    for proc in psutil.Process(chain.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "pipeline.engine.worker" in " ".join(proc.cmdline()):
                return proc
    return None


def _crash(tiny_llama, tmp_path, sig, *extra):
    env = {**os.environ, "TUNECHAIN_STORE": str(tmp_path / "store"), "OMP_NUM_THREADS": "1"}
    overrides = [o for o in tiny_overrides(tiny_llama) if not o.startswith("stages.eval_base.")]
    command = [sys.executable, str(ROOT / "main.py"), *overrides, "stages.eval_base.tasks=[math]",
               "stages.eval_base.max_new_tokens.math=256",
               "stages.eval_base.batch_size=1",  # a minute or more of generation: the signal lands in it
               "stages.eval_tuned.tasks=[math]", *extra,
               f"hydra.run.dir={tmp_path / 'run'}"]
    chain = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.time() + 180
    while (worker := _worker(chain)) is None:
        assert chain.poll() is None and time.time() < deadline, "eval_base's process never started"
        time.sleep(0.2)
    time.sleep(8)  # past loading, into generation
    os.kill(worker.pid, sig)
    output, _ = chain.communicate(timeout=300)
    record = json.loads((tmp_path / "run" / "chain.json").read_text())
    return chain.returncode, output, {s["name"]: s for s in record["stages"]}, record


@pytest.mark.slow
def test_a_segfault_fails_its_stage_with_the_signal_and_the_report_is_written(tiny_llama, tmp_path):
    code, output, stages, record = _crash(tiny_llama, tmp_path, signal.SIGSEGV)
    assert code != 0 and "stages.eval_base: the stage process died of SIGSEGV" in output
    assert stages["eval_base"]["status"] == "failed" and stages["eval_base"]["signal"] == "SIGSEGV"
    assert isinstance(stages["eval_base"]["last_lines"], list) and stages["sft"]["status"] == "pending"
    assert record["status"] == "failed" and (tmp_path / "run" / "report.md").is_file()
    assert not list((tmp_path / "store").glob("eval/*/artifact.json"))


@pytest.mark.slow
def test_an_optional_stage_killed_by_the_oom_killer_lets_the_chain_go_on(tiny_llama, tmp_path):
    code, output, stages, record = _crash(tiny_llama, tmp_path, signal.SIGKILL, "stages.eval_base.optional=true")
    assert code == 0, output[-3000:]
    assert stages["eval_base"]["status"] == "failed" and stages["eval_base"]["signal"] == "SIGKILL"
    assert "out-of-memory kill" in stages["eval_base"]["error"]
    assert stages["sft"]["status"] == "done"
    assert stages["eval_tuned"]["status"] == "skipped"  # it compares with eval_base
    assert (tmp_path / "run" / "report.md").is_file()
