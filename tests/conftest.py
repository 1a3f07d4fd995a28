"""Shared fixtures: tiny random models of real architectures, composed configs, and a helper
that runs main.py as a user would (in a subprocess, with its own store and run folder)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.engine.configstore import register

register()  # the conf/model schema, as main.py's import of pipeline.engine.cli does

ROOT = Path(__file__).resolve().parent.parent
EMBEDDED = ROOT / "embedded" / "model"
CONF = ROOT / "conf"

# Tests never reach a hub, and stay steady on 2 shared cores.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _tiny(arch: str, out: Path) -> Path:
    """A randomly initialised Llama or Qwen3 (hidden 64, 2 layers) with the embedded tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(EMBEDDED)
    common = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                  eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    torch.manual_seed(0)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        model = Qwen3ForCausalLM(Qwen3Config(head_dim=16, **common))
    model.save_pretrained(out)
    for name in os.listdir(EMBEDDED):  # tokenizer files (incl. tokenizer.model) and generation config
        if name.startswith("tokenizer") or name in ("special_tokens_map.json", "generation_config.json", "chat_template.jinja"):
            shutil.copy2(EMBEDDED / name, out / name)
    return out


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return _tiny("llama", tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory) -> Path:
    return _tiny("qwen3", tmp_path_factory.mktemp("tiny-qwen3"))


@pytest.fixture(params=["llama", "qwen3"])
def tiny_model(request, tiny_llama, tiny_qwen3) -> Path:
    return tiny_llama if request.param == "llama" else tiny_qwen3


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


# Overrides that shrink the quickstart chain to seconds on a tiny model.
def tiny_overrides(model: Path) -> list[str]:
    return [f"model.path={model}", "model.name=tiny", "logger=none", "hardware.num_threads=1",
            "stages.sft.max_steps=4", "stages.sft.per_device_train_batch_size=4", "stages.sft.logging_steps=1",
            "stages.eval_base.limit=8", "stages.eval_tuned.limit=8", "stages.eval_base.max_new_tokens.math=8",
            "stages.eval_tuned.max_new_tokens.math=8"]


def merge_overrides(model: Path) -> list[str]:
    """recipe=lora_merge (sft -> merge -> eval) on a tiny model, short."""
    kept = [o for o in tiny_overrides(model) if not o.startswith(("stages.eval_base.", "stages.eval_tuned."))]
    return [*kept, "recipe=lora_merge", "data.sft.limit=16", "stages.eval.limit=8", "stages.eval.max_new_tokens.math=8"]


def run_main(args: list[str], tmp: Path, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python main.py ARGS` with a private store and run folder under `tmp`."""
    full_env = {**os.environ, "TUNECHAIN_STORE": str(tmp / "store"), "OMP_NUM_THREADS": "1", **(env or {})}
    command = [sys.executable, str(ROOT / "main.py"), *args, f"hydra.run.dir={tmp / 'run'}",
               f"hydra.sweep.dir={tmp / 'sweep'}"]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=tmp)


def artifacts(store: Path) -> list[Path]:
    """The committed artifacts of a store (a plan may leave its data checks in `.data/`, never an artifact)."""
    return sorted(Path(store).glob("*/*/artifact.json"))


def read_chain(run_dir: Path) -> dict:
    return json.loads((run_dir / "chain.json").read_text())
