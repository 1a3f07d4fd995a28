"""Honest fingerprints (pipeline/engine/fingerprint.py): library versions, device, compute dtype, the
stage's own code and a hub revision's commit all enter a stage's fingerprint, and
`+explain_fingerprint=STAGE` shows what went in."""


from conftest import artifacts, compose, run_main
from pipeline.engine import fingerprint, registry
from pipeline.engine.plan import build_plan
from pipeline.engine.store import Store
from pipeline.hub import hub_commit


def _fingerprints(tmp_path, *overrides):
    plan = build_plan(compose(["logger=none", *overrides]), Store(tmp_path), recipe="quickstart", device="cpu")
    return {s.name: s.fingerprint for s in plan.steps}


def test_a_library_upgrade_means_a_new_artifact(tmp_path, monkeypatch):
    before = _fingerprints(tmp_path)
    real = fingerprint.installed_version
    monkeypatch.setattr(fingerprint, "installed_version", lambda name: "99.0" if name == "trl" else real(name))
    after = _fingerprints(tmp_path)
    assert after["sft"] != before["sft"]            # sft depends on trl
    assert after["eval_base"] == before["eval_base"]  # eval does not


def test_device_and_compute_dtype_enter_the_fingerprint(tmp_path):
    spec = registry.get("sft")
    assert fingerprint.environment(spec, "cpu", "float32") != fingerprint.environment(spec, "cuda", "float32")
    assert _fingerprints(tmp_path, "model.dtype=bfloat16")["sft"] != _fingerprints(tmp_path)["sft"]


def test_code_digest_follows_code_not_comments(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    digests = []
    for name, source in [("stage_a", 'def run():\n    return 1\n'),
                         ("stage_b", '"""Doc."""\n# a comment\ndef run():\n    """What it does."""\n    return 1  # why\n'),
                         ("stage_c", 'def run():\n    return 2\n')]:
        (tmp_path / f"{name}.py").write_text(source)
        digests.append(fingerprint.code_digest(name))
    assert digests[0] == digests[1] != digests[2]


def test_hub_revisions_resolve_to_commits(tmp_path, monkeypatch):
    commit = "a" * 40
    assert hub_commit("owner/model", commit, "model") == commit
    snapshot = tmp_path / "models--owner--model" / "snapshots" / ("b" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--owner--model" / "refs").mkdir()
    (tmp_path / "models--owner--model" / "refs" / "main").write_text("b" * 40)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_commit("owner/model", None, "model") == "b" * 40          # the cached snapshot's commit
    assert hub_commit("owner/other", "v2", "model") == "v2 (unresolved)"  # offline and not cached: said so


def test_explain_fingerprint_shows_what_went_in(tmp_path):
    result = run_main(["logger=none", "+explain_fingerprint=sft"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    plan_line = next(line for line in result.stdout.splitlines() if line.strip().startswith("2  sft"))
    shown = next(line for line in result.stdout.splitlines() if line.startswith("fingerprint of stage sft:"))
    assert shown.split()[-1].startswith(plan_line.split()[5])  # the plan's (12-character) fingerprint
    for key in ('"libraries"', '"trl"', '"device": "cpu"', '"dtype": "float32"', '"code"', '"learning_rate"'):
        assert key in result.stdout
    assert not artifacts(tmp_path / "store")  # nothing ran
