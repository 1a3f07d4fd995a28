"""lm-evaluation-harness on any tunechain artifact, for users who have its task data (the hub, or
a local cache): `tasks: [lm_eval]` with `settings: {lm_eval: {tasks: [gsm8k, mmlu, ceval-valid, ...]}}`.

HF folders, bnb and GPTQ checkpoints go to the harness's `hf` model; an adapter goes as
`pretrained=<base>,peft=<adapter>`. GGUF files are not passed through here (the harness's gguf model
talks to a running llama.cpp server: serve the file with the serve stage and point the harness at it).
"""
from __future__ import annotations

import importlib.util
from typing import Any

from pipeline.artifact import Artifact, ArtifactKind
from pipeline.errors import ConfigError

INSTALL = "pip install -e '.[eval]' (lm-eval)"


def check_available(where: str, tasks: list[str]) -> None:
    if importlib.util.find_spec("lm_eval") is None:
        raise ConfigError(f"{where}.tasks: task 'lm_eval' needs lm-evaluation-harness: {INSTALL}")
    if not tasks:
        raise ConfigError(f"{where}.settings.lm_eval.tasks: empty; name the harness tasks, e.g. [gsm8k, mmlu]")


def model_args(artifact: Artifact, dtype: str) -> dict[str, Any]:
    if artifact.kind == ArtifactKind.adapter:
        return {"pretrained": artifact.base_model, "peft": artifact.path, "dtype": dtype}
    if artifact.kind == ArtifactKind.model:
        return {"pretrained": artifact.path, "dtype": dtype}
    raise ConfigError(f"lm_eval: artifact kind '{artifact.kind}' is not run through the harness here "
                      "(GGUF: serve it and use the harness's server-backed models)")


def run(artifact: Artifact, tasks: list[str], device: str, dtype: str, batch_size: int,
        num_fewshot: int | None = None, limit: int | None = None) -> dict[str, float]:
    """The harness's numbers as flat metrics: lmeval_<task>_<metric>."""
    import lm_eval

    out = lm_eval.simple_evaluate(model="hf", model_args=model_args(artifact, dtype), tasks=list(tasks),
                                  num_fewshot=num_fewshot, batch_size=batch_size, device=device, limit=limit)
    metrics: dict[str, float] = {}
    for task, values in (out or {}).get("results", {}).items():
        for name, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and "stderr" not in name:
                metrics[f"lmeval_{task}_{name.replace(',', '_')}"] = float(value)
    return metrics
