"""The push stage against FakeHub (tests/fake_hub.py: a local stand-in for the hub's HTTP API, the one
boundary that cannot run here; the client is the real huggingface_hub): one commit with the artifact's
files and its refreshed model card, the token from the environment only and nowhere in what the run writes,
plan-time errors for a missing token or a bad repository id."""
import json
from pathlib import Path

import pytest
from conftest import compose, merge_overrides
from fake_hub import FakeHub

from pipeline.artifact import Artifact
from pipeline.engine.plan import build_plan
from pipeline.engine.runner import run_chain
from pipeline.engine.store import Store
from pipeline.errors import ConfigError
from pipeline.stages.push import _files

TOKEN = "hf_FakeWriteToken0123456789abcdefgh"


@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub.constants

    fake = FakeHub(TOKEN)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.delenv("HF_HUB_OFFLINE")  # conftest keeps every other test off the hub
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    yield fake
    fake.close()


def _chain(tiny_llama, tmp_path, hub, *extra):
    overrides = [*merge_overrides(tiny_llama), "model.hub_id=tiny-org/tiny-llama", "+stage@stages.push=push",
                 "stages.push.repo_id=me/tiny-merged", f"stages.push.endpoint={hub.url}", *extra,
                 f"paths.store={tmp_path / 'store'}"]
    return run_chain(compose(overrides), tmp_path / "run", "lora_merge", overrides, None)


def test_the_merged_model_and_its_card_go_up_in_one_commit(tiny_llama, tmp_path, hub):
    from huggingface_hub import ModelCard

    record = _chain(tiny_llama, tmp_path, hub)
    stages = {s["name"]: s for s in record["stages"]}
    assert stages["push"]["status"] == "done" and stages["push"]["inputs"] == ["merge"]
    assert hub.repos["me/tiny-merged"]["private"] is True
    (commit,) = hub.commits
    assert commit["revision"] == "main" and commit["summary"] == "tunechain: lora_merge, stage merge"
    uploaded = hub.repos["me/tiny-merged"]["branches"]["main"]
    merged = Path(stages["merge"]["artifact"])
    assert set(uploaded) == {p.name for p in merged.iterdir()} - {"artifact.json"} | {"README.md"}
    assert uploaded["model.safetensors"] == (merged / "model.safetensors").read_bytes()
    card = ModelCard(uploaded["README.md"].decode())
    assert card.data.base_model == "tiny-org/tiny-llama" and card.data.library_name == "transformers"
    accuracy = stages["eval"]["metrics"]["math_accuracy"]
    assert f"| eval: math_accuracy | {accuracy:.4g} | 8 |" in card.text  # the eval before the push, with its n

    push = json.loads((tmp_path / "run" / "push" / "artifact.json").read_text())
    assert push["meta"]["repo_id"] == "me/tiny-merged" and push["meta"]["commit_url"].startswith(hub.url)
    assert all(headers.get("authorization") == f"Bearer {TOKEN}" for _, _, headers in hub.requests)
    written = [p for p in (tmp_path / "run").rglob("*") if p.is_file()] + list((tmp_path / "store").rglob("*.json"))
    assert not [p for p in written if TOKEN.encode() in p.read_bytes()]  # the token is nowhere on disk


def test_an_adapter_goes_to_a_branch_naming_its_base_by_hub_id(tiny_llama, tmp_path, hub):
    record = _chain(tiny_llama, tmp_path, hub, "stages.push.inputs=[sft]", "stages.push.revision=dev",
                    "stages.push.private=false")
    assert record["status"] == "done"
    repo = hub.repos["me/tiny-merged"]
    assert repo["private"] is False and set(repo["branches"]) == {"main", "dev"} and not repo["branches"]["main"]
    uploaded = repo["branches"]["dev"]
    assert "adapter_model.safetensors" in uploaded
    assert json.loads(uploaded["adapter_config.json"])["base_model_name_or_path"] == "tiny-org/tiny-llama"
    sft = Path(next(s for s in record["stages"] if s["name"] == "sft")["artifact"])
    assert json.loads((sft / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_llama)


def test_a_gguf_push_carries_the_modelfile(tmp_path):
    folder = tmp_path / "gguf"
    folder.mkdir()
    for name in ("model-q8_0.gguf", "Modelfile", "parity.jsonl", "artifact.json"):
        (folder / name).write_text(name)
    files = _files(Artifact(kind="gguf", path=str(folder), fingerprint="x"), base_id="org/base")
    assert sorted(files) == ["Modelfile", "model-q8_0.gguf", "parity.jsonl"]


@pytest.mark.parametrize("override, unset, message", [
    ("stages.push.repo_id=me/x", True, r"^stages\.push\.token_env: \$HF_TOKEN is not set; export a write token"),
    ("stages.push.repo_id=me/x", False, r"^stages\.push: HF_HUB_OFFLINE is set; a push needs the hub: unset it"),
    ("stages.push.repo_id=not-a-repo", False, r"^stages\.push\.repo_id: 'not-a-repo'; valid: owner/name"),
    (f"stages.push.token_env={TOKEN}", False, r"^stages\.push\.token_env: name the environment variable"),
])
def test_bad_push_settings_fail_at_plan_time(override, unset, message, tmp_path, monkeypatch):
    if unset:
        monkeypatch.delenv("HF_TOKEN", raising=False)
    else:
        monkeypatch.setenv("HF_TOKEN", TOKEN)
    if "offline" not in message.lower():
        monkeypatch.delenv("HF_HUB_OFFLINE")
    overrides = ["recipe=lora_merge", "logger=none", "+stage@stages.push=push", "stages.push.repo_id=me/x", override]
    with pytest.raises(ConfigError, match=message) as caught:
        build_plan(compose(overrides), Store(tmp_path / "store"), recipe="lora_merge", device="cpu")
    assert TOKEN not in str(caught.value)  # a token pasted where its variable's name goes is not echoed
