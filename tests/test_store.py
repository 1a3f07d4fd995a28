"""The artifact store: atomic commits, lookups by fingerprint, crash leftovers, fingerprints."""
import json
import os
import shutil
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


def _hold_lock(store_root: Path, fingerprint: str, seconds: float = 60) -> subprocess.Popen:
    """Another writer: a real process that holds `fingerprint`'s lock (as a run building it does) and sleeps."""
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from pipeline.engine.store import Store\n"
        "with Store(sys.argv[2]).lock(sys.argv[3]):\n    print('held', flush=True); time.sleep(float(sys.argv[4]))"),
        str(Path(__file__).resolve().parent.parent), str(store_root), fingerprint, str(seconds)],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_tmp_folder_without_a_lock_holder_is_cleaned_whoever_made_it(tmp_path):
    store = Store(tmp_path / "store")
    tmp = tmp_path / "store" / ".tmp"
    old_style = tmp / f"abc-{os.getppid()}-1"  # its pid is alive, but nobody holds abc's lock
    elsewhere = tmp / "def-other-node-7-1"
    for folder in (old_style, elsewhere):
        folder.mkdir(parents=True)
    store.clean_stale_tmp()
    assert not old_style.exists() and not elsewhere.exists()


def test_a_live_writer_with_our_host_name_keeps_its_folder_until_it_dies(tmp_path):
    """Two containers with one host name: a folder named like ours whose pid is not alive here, but whose
    writer holds the fingerprint's lock, is left alone; once the writer is gone it is taken over."""
    store = Store(tmp_path / "store")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    live = tmp_path / "store" / ".tmp" / f"abc-{socket.gethostname()}-{int(dead.stdout)}-1"
    (live / "trainer" / "checkpoint-10").mkdir(parents=True)
    (live / "trainer" / "checkpoint-10" / "trainer_state.json").write_text("{}")
    (live / "notes").mkdir()
    holder = _hold_lock(tmp_path / "store", "abc")
    try:
        store.clean_stale_tmp()
        taken = store.new_tmp_dir("abc")
        assert live.exists() and taken != live and not (taken / "trainer").exists()
        shutil.rmtree(taken)
    finally:
        holder.kill()
        holder.wait()
    with store.lock("abc"):
        taken = store.new_tmp_dir("abc")
    assert not live.exists() and (taken / "trainer" / "checkpoint-10" / "trainer_state.json").is_file()


def test_a_commit_that_loses_the_rename_race_returns_the_twin(tmp_path):
    """Two writers of one fingerprint on a shared store: the one whose rename finds the other's finished
    folder in place returns that artifact and discards its own folder."""
    ours = Store(tmp_path / "store")
    with ours.lock("abc"):
        tmp = ours.new_tmp_dir("abc")
        (tmp / "model.bin").write_text("ours")
        their_tmp = tmp_path / "other-machine"  # flock that does not reach across machines: both built it
        their_tmp.mkdir()
        (their_tmp / "model.bin").write_text("theirs")
        Store(tmp_path / "store").commit(their_tmp, Artifact(kind="model", path="", fingerprint="abc",
                                                             metrics={"loss": 1.0}))
        got = ours.commit(tmp, Artifact(kind="model", path=str(tmp), fingerprint="abc", metrics={"loss": 2.0}))
    assert got.metrics == {"loss": 1.0} and got.path == str(tmp_path / "store" / "model" / "abc")
    assert (tmp_path / "store" / "model" / "abc" / "model.bin").read_text() == "theirs"
    assert not tmp.exists()


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
