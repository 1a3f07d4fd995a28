"""Stored artifacts stay honest (pipeline/engine/integrity.py): the manifest records each file's size and
sha256; a reuse refuses an artifact whose sizes differ, naming it, its file and the fix; `tunechain verify`
(here `python main.py verify`) reads every byte and names each damaged artifact and file."""
import hashlib
import json
import subprocess
import sys

import pytest

from conftest import ROOT, compose
from pipeline.artifact import MANIFEST, Artifact
from pipeline.engine.integrity import DamagedArtifact
from pipeline.engine.plan import build_plan
from pipeline.engine.store import Store


def _make(store: Store, fp: str, kind: str = "model", payload: bytes = b"weights" * 100) -> Artifact:
    tmp = store.new_tmp_dir(fp)
    (tmp / "model.safetensors").write_bytes(payload)
    (tmp / "sub").mkdir()
    (tmp / "sub" / "config.json").write_text("{}")
    return store.commit(tmp, Artifact(kind=kind, path=str(tmp), fingerprint=fp))


def _verify(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "main.py"), "verify", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def test_the_manifest_records_each_files_size_and_sha256(tmp_path):
    artifact = _make(Store(tmp_path), "abc")
    recorded = json.loads((tmp_path / "model" / "abc" / MANIFEST).read_text())["files"]
    assert recorded == artifact.files
    assert set(recorded) == {"model.safetensors", "sub/config.json"}
    assert recorded["model.safetensors"] == {"size": 700, "sha256": hashlib.sha256(b"weights" * 100).hexdigest()}


def test_a_truncated_file_is_refused_on_reuse_with_the_fix(tmp_path):
    store = Store(tmp_path)
    _make(store, "abc")
    (tmp_path / "model" / "abc" / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(DamagedArtifact) as refused:
        store.find("model", "abc")
    message = str(refused.value)
    assert message.startswith("stored model abc is damaged") and "model.safetensors: 7 bytes, the manifest says 700" in message
    assert f"rm -r {tmp_path / 'model' / 'abc'}" in message
    (tmp_path / "model" / "abc" / "sub" / "config.json").unlink()
    with pytest.raises(DamagedArtifact, match="sub/config.json: missing"):
        store.find("model", "abc")


def test_a_torn_manifest_is_refused_not_a_traceback(tmp_path):
    store = Store(tmp_path)
    _make(store, "abc")
    (tmp_path / "model" / "abc" / MANIFEST).write_text('{"kind": "mod')
    with pytest.raises(DamagedArtifact, match="artifact.json does not parse"):
        store.find("model", "abc")


def test_verify_names_an_altered_file_that_sizes_alone_miss(tmp_path):
    store = Store(tmp_path / "store")
    _make(store, "abc")
    _make(store, "def", kind="adapter")
    old = _make(store, "old", kind="eval")
    manifest = tmp_path / "store" / "eval" / "old" / MANIFEST  # as written before digests were recorded
    manifest.write_text(json.dumps({k: v for k, v in old.to_json().items() if k != "files"}))
    altered = tmp_path / "store" / "adapter" / "def" / "model.safetensors"
    altered.write_bytes(b"W" + altered.read_bytes()[1:])
    assert store.find("adapter", "def") is not None  # same size: a reuse's cheap check cannot see it
    assert store.find("eval", "old").files == {}

    checked = _verify("--store", str(tmp_path / "store"))
    assert checked.returncode == 1, checked.stderr[-2000:]
    lines = checked.stdout.splitlines()
    assert "ok: model abc (2 files)" in lines
    assert "ok: eval old (no digests recorded (made before they were))" in lines
    damaged = [line for line in lines if line.startswith("damaged:")]
    assert len(damaged) == 1 and "stored adapter def is damaged" in damaged[0]
    assert "model.safetensors: its sha256 differs from the manifest's" in damaged[0]
    assert lines[-1] == f"2 intact, 1 damaged in {tmp_path / 'store'}"

    run = tmp_path / "run"
    run.mkdir()
    (run / "chain.json").write_text(json.dumps({"store": str(tmp_path / "store"), "stages": [
        {"output": "model", "fingerprint": "abc", "artifact": "x"}, {"output": "serve", "fingerprint": "s", "artifact": "y"}]}))
    only = _verify("--chain", str(run))
    assert only.returncode == 0 and only.stdout.splitlines()[-1].startswith("1 intact, 0 damaged")


def test_a_rerun_refuses_a_damaged_artifact_at_plan_time(tmp_path):
    cfg = compose(["logger=none"])
    store = Store(tmp_path)
    step = build_plan(cfg, store, recipe="quickstart", device="cpu").steps[0]
    _make(store, step.fingerprint, kind=str(step.output_kind))
    assert build_plan(cfg, store, recipe="quickstart", device="cpu").steps[0].cached is not None
    (store.final_dir(step.output_kind, step.fingerprint) / "model.safetensors").write_bytes(b"")
    with pytest.raises(DamagedArtifact, match=f"stored {step.output_kind} {step.fingerprint} is damaged"):
        build_plan(cfg, store, recipe="quickstart", device="cpu")
