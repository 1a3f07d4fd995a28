"""The artifact store: atomic commits, lookups by fingerprint, crash leftovers, fingerprints."""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.artifact import MANIFEST, Artifact
from pipeline.engine.fingerprint import fingerprint_inputs, fingerprint_of
from pipeline.engine.store import Store


def stage_fingerprint(*args) -> str:
    return fingerprint_of(fingerprint_inputs(*args))


def _make(store: Store, fp: str, payload: str = "weights") -> Artifact:
    tmp = store.new_tmp_dir(fp)
    (tmp / "model.bin").write_text(payload)
    return store.commit(tmp, Artifact(kind="model", path=str(tmp), fingerprint=fp, metrics={"loss": 1.0}))


def test_commit_moves_folder_into_place_with_manifest(tmp_path):
    store = Store(tmp_path / "store")
    artifact = _make(store, "abc")
    final = tmp_path / "store" / "model" / "abc"
    assert artifact.path == str(final)
    assert (final / "model.bin").read_text() == "weights"
    assert json.loads((final / MANIFEST).read_text())["metrics"] == {"loss": 1.0}
    assert not any((tmp_path / "store" / ".tmp").iterdir())
    assert store.find("model", "abc").metrics == {"loss": 1.0}
    assert store.find("model", "other") is None
    assert store.find("adapter", "abc") is None


def test_unfinished_folder_is_not_found_and_is_replaced(tmp_path):
    store = Store(tmp_path / "store")
    half = tmp_path / "store" / "model" / "abc"
    half.mkdir(parents=True)
    (half / "model.bin").write_text("half")  # no manifest: a crash mid-copy
    assert store.find("model", "abc") is None
    _make(store, "abc", "whole")
    assert (half / "model.bin").read_text() == "whole"


def test_second_commit_of_same_fingerprint_keeps_the_first(tmp_path):
    store = Store(tmp_path / "store")
    _make(store, "abc", "first")
    _make(store, "abc", "second")
    assert (tmp_path / "store" / "model" / "abc" / "model.bin").read_text() == "first"


def test_stale_tmp_of_dead_process_is_cleaned(tmp_path):
    store = Store(tmp_path / "store")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / "store" / ".tmp" / f"abc-{int(dead.stdout)}-1"
    stale.mkdir(parents=True)
    live = tmp_path / "store" / ".tmp" / f"def-{os.getppid()}-1"
    live.mkdir()
    host = socket.gethostname()
    dead_here = tmp_path / "store" / ".tmp" / f"ghi-{host}-{int(dead.stdout)}-1"
    dead_here.mkdir()
    elsewhere = tmp_path / "store" / ".tmp" / f"jkl-other-node-7-{int(dead.stdout)}-1"  # a pid on another host
    elsewhere.mkdir()
    store.clean_stale_tmp()
    assert not stale.exists() and not dead_here.exists()
    assert live.exists() and elsewhere.exists()  # alive here, or not ours to judge


def test_a_waiting_run_names_who_holds_the_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from pipeline.engine.store import Store\n"
        "with Store(sys.argv[2]).lock('abc'):\n    print('held', flush=True); time.sleep(3)"),
        str(Path(__file__).resolve().parent.parent), str(tmp_path / "store")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    said = []
    started = time.time()
    with Store(tmp_path / "store").lock("abc", announce=said.append):
        waited = time.time() - started
    holder.wait()
    assert waited > 1 and len(said) == 1
    assert said[0].startswith("waiting for stage abc: another run builds it (") and f"pid {holder.pid}" in said[0]
    assert socket.gethostname() in said[0]


def test_a_waiting_run_gives_up_after_lock_timeout_s(tmp_path):
    from pipeline.engine.store import StoreLockTimeout

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from pipeline.engine.store import Store\n"
        "with Store(sys.argv[2]).lock('abc'):\n    print('held', flush=True); time.sleep(20)"),
        str(Path(__file__).resolve().parent.parent), str(tmp_path / "store")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        said = []
        started = time.time()
        with pytest.raises(StoreLockTimeout, match=rf"gave up after 2 s .* pid {holder.pid} .* is still building"):
            with Store(tmp_path / "store", lock_timeout_s=2).lock("abc", announce=said.append):
                pass
        assert 2 <= time.time() - started < 10 and said[0].endswith("for at most 2 s")
    finally:
        holder.kill()


def test_store_survives_being_moved(tmp_path):
    _make(Store(tmp_path / "a"), "abc")
    os.rename(tmp_path / "a", tmp_path / "b")
    assert Store(tmp_path / "b").find("model", "abc").path == str(tmp_path / "b" / "model" / "abc")


def test_fingerprint_depends_on_config_inputs_and_data_not_cosmetics():
    base = stage_fingerprint("sft", {"learning_rate": 1e-4, "logging_steps": 10}, ["in1"], ["data1"])
    assert base == stage_fingerprint("sft", {"learning_rate": 1e-4, "logging_steps": 99}, ["in1"], ["data1"])
    assert base != stage_fingerprint("sft", {"learning_rate": 2e-4, "logging_steps": 10}, ["in1"], ["data1"])
    assert base != stage_fingerprint("sft", {"learning_rate": 1e-4, "logging_steps": 10}, ["in2"], ["data1"])
    assert base != stage_fingerprint("sft", {"learning_rate": 1e-4, "logging_steps": 10}, ["in1"], ["data2"])
    assert base != stage_fingerprint("dpo", {"learning_rate": 1e-4, "logging_steps": 10}, ["in1"], ["data1"])


def test_the_chain_seed_is_part_of_every_fingerprint(tmp_path):
    from conftest import compose

    from pipeline.engine.plan import build_plan

    def prints(seed):
        plan = build_plan(compose(["logger=none", f"seed={seed}"]), Store(tmp_path), recipe="quickstart", device="cpu")
        return [s.fingerprint for s in plan.steps]

    assert prints(42) == prints(42)
    assert all(a != b for a, b in zip(prints(42), prints(7)))  # seed=7 must not reuse seed 42's artifacts


@pytest.mark.slow
def test_two_runs_started_together_train_once(tiny_llama, tmp_path):
    """Two `python main.py` on one empty store: both finish, the SFT adapter is trained once and reused."""
    from conftest import ROOT, tiny_overrides

    env = {**os.environ, "TUNECHAIN_STORE": str(tmp_path / "store"), "OMP_NUM_THREADS": "1"}
    runs = [subprocess.Popen([sys.executable, str(ROOT / "main.py"), *tiny_overrides(tiny_llama),
                              "stages.eval_base.tasks=[math]", "stages.eval_tuned.tasks=[math]",
                              f"hydra.run.dir={tmp_path / f'run{i}'}"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=env) for i in (0, 1)]
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    outcomes = sorted(next(s["status"] for s in json.loads((tmp_path / f"run{i}" / "chain.json").read_text())["stages"]
                           if s["name"] == "sft") for i in (0, 1))
    assert outcomes == ["done", "reused"]
    assert len(list((tmp_path / "store" / "adapter").iterdir())) == 1
