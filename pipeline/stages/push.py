"""Publish an artifact to the Hugging Face Hub (huggingface_hub: create_repo, create_branch, create_commit):
a model, adapter, reward model or GGUF folder (with its Ollama Modelfile), its model card refreshed with
the held-out figures the chain measured before this stage, in one commit.

    python main.py recipe=lora_merge +stage@stages.push=push stages.push.repo_id=me/tuned-smollm2

The token comes from the environment only (`token_env`, default HF_TOKEN), checked at plan time and never
written anywhere; the store's manifest (artifact.json, local paths) stays home, and an adapter's
adapter_config.json names the base by its hub id where the model entry has one. Runs every time (not
cached): its record, with the commit, is in <run folder>/<stage>/artifact.json.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from omegaconf import MISSING

from pipeline.artifact import MANIFEST, Artifact, ArtifactKind
from pipeline.cards import model_card
from pipeline.engine.context import Inputs, StageContext
from pipeline.engine.contract import StageConfig
from pipeline.engine.registry import stage
from pipeline.errors import ConfigError
from pipeline.ranges import setting

PUSHABLE = (ArtifactKind.model, ArtifactKind.adapter, ArtifactKind.reward_model, ArtifactKind.gguf)
REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")
ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")  # upper case: a pasted token (hf_...) is refused, and not echoed


@dataclass
class PushConfig(StageConfig):
    kind: str = setting("push", "the stage kind")
    repo_id: str = setting(MISSING, "the hub repository, owner/name (created if missing)")
    private: bool = setting(True, "a new repository is private (an existing one keeps its visibility)")
    revision: Optional[str] = setting(None, "branch to commit to (created from main if missing); null: main")
    token_env: str = setting("HF_TOKEN", "environment variable holding a write token (the token never goes in a config)")
    endpoint: Optional[str] = setting(None, "hub URL; null: $HF_ENDPOINT, else https://huggingface.co")
    commit_message: Optional[str] = setting(None, "null: 'tunechain: <recipe>, stage <input stage>'")

    def validate(self, where: str, earlier: dict) -> None:
        if not REPO_ID.fullmatch(self.repo_id or ""):
            raise ConfigError(f"{where}.repo_id: '{self.repo_id}'; valid: owner/name (letters, digits, - _ .)")
        if not ENV_NAME.fullmatch(self.token_env):
            raise ConfigError(f"{where}.token_env: name the environment variable that holds the token, in upper "
                              f"case (e.g. HF_TOKEN), not the token itself")
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
            raise ConfigError(f"{where}: HF_HUB_OFFLINE is set; a push needs the hub: unset it for this run")
        if not os.environ.get(self.token_env):
            raise ConfigError(f"{where}.token_env: ${self.token_env} is not set; export a write token "
                              f"(huggingface.co/settings/tokens) as {self.token_env} before the run")


def _input_name(source: Artifact, ctx: StageContext) -> str:
    """The name this chain knows the input by (a reused artifact's own stage name may be another run's)."""
    return next((name for name, a in ctx.chain.items() if a.fingerprint == source.fingerprint and name != "base"),
                source.stage or "model")


def _files(source: Artifact, base_id: str | None) -> dict[str, bytes | str]:
    """Path in the repository -> local file (or bytes where tunechain rewrites it)."""
    folder = Path(source.path)
    files: dict[str, bytes | str] = {p.relative_to(folder).as_posix(): str(p) for p in sorted(folder.rglob("*"))
                                     if p.is_file() and p.name != MANIFEST}
    adapter_config = folder / "adapter_config.json"
    if source.kind == ArtifactKind.adapter and base_id and adapter_config.is_file():
        settings = json.loads(adapter_config.read_text())
        settings["base_model_name_or_path"] = base_id  # a local path means nothing to whoever downloads it
        files["adapter_config.json"] = json.dumps(settings, indent=2).encode()
    return files


@stage("push", config=PushConfig, consumes=set(PUSHABLE), produces="push", cache=False,
       libraries=("huggingface_hub",))
def run(cfg: PushConfig, inputs: Inputs, ctx: StageContext) -> Artifact:
    """Upload the input artifact and its refreshed model card to the hub in one commit."""
    from huggingface_hub import CommitOperationAdd, HfApi

    source = inputs.primary
    name = _input_name(source, ctx)
    chain = json.loads((ctx.run_dir / "chain.json").read_text())
    about = model_card.About.of(chain, ctx.model, ctx.device)
    files = _files(source, about.hub_id)
    files[model_card.CARD] = model_card.render(
        source, model_card.lineage(name, chain, ctx.chain, model_card.base_name(about)), about,
        model_card.evaluations(name, chain)).encode()
    api = HfApi(endpoint=cfg.endpoint or os.environ.get("HF_ENDPOINT") or None, token=os.environ[cfg.token_env])
    url = api.create_repo(cfg.repo_id, private=cfg.private, exist_ok=True)
    revision = cfg.revision or "main"
    if revision != "main":
        api.create_branch(cfg.repo_id, branch=revision, exist_ok=True)
    message = cfg.commit_message or f"tunechain: {chain.get('recipe')}, stage {name}"
    commit = api.create_commit(cfg.repo_id, revision=revision, commit_message=message,
                               operations=[CommitOperationAdd(path, content) for path, content in files.items()])
    ctx.log(f"pushed {name} ({source.kind}, {len(files)} files) to {cfg.repo_id}@{revision}: {commit.commit_url}")
    meta = {"repo_id": cfg.repo_id, "revision": revision, "private": cfg.private, "url": str(url),
            "commit": commit.oid, "commit_url": commit.commit_url, "files": sorted(files), "source": source.path}
    return Artifact(kind=ArtifactKind.push, path=str(ctx.out_dir), fingerprint="", format="hub",
                    metrics={"files": len(files), "bytes": sum(len(c) if isinstance(c, bytes) else
                                                               Path(c).stat().st_size for c in files.values())},
                    meta=meta)
