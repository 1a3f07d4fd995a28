"""A Hugging Face model card (README.md) for every model, adapter, reward model and GGUF artifact: the
hub's YAML header (base_model, library_name, tags, datasets, license, pipeline_tag) and a body that says
how it was made (its lineage, stage by stage, and the command), its figures with the number of items
behind each, what it is for and where it stops. Written into the folder before the store commits it, so
the card is part of the artifact's integrity record; `refreshed` adds the held-out evaluations that
later stages measured (the push stage uploads that one).

Rendered with huggingface_hub's ModelCard, so it parses as the hub parses it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from pipeline.artifact import Artifact, ArtifactKind
from pipeline.models.loading import is_vision

CARD = "README.md"
CARDED = (ArtifactKind.model, ArtifactKind.adapter, ArtifactKind.reward_model, ArtifactKind.gguf)

LIBRARY = {ArtifactKind.adapter: "peft", ArtifactKind.model: "transformers",
           ArtifactKind.reward_model: "transformers", ArtifactKind.gguf: "gguf"}
WHAT = {ArtifactKind.adapter: "a LoRA adapter (peft) for", ArtifactKind.model: "a model (transformers) derived from",
        ArtifactKind.reward_model: "a reward model (one score per response, transformers) derived from",
        ArtifactKind.gguf: "a GGUF file (llama.cpp) of"}

# A figure's item count: the metric key's prefix -> the metric that counts its items.
COUNTS = (("parity_image_", "parity_image_n"), ("parity_", "parity_n"), ("eval_", "eval_records"))
NOT_FIGURES = {"peak_memory_of", "batching", "health_warnings", "generation", "parity_backend"}


@dataclass
class About:
    """What the card says of the base model and the run: from the model entry and the run's chain.json."""
    chain: dict[str, Any]          # chain.json: recipe, model, model_path, overrides, stages
    license: str | None = None     # the model entry's license
    hub_id: str | None = None      # the base model's hub id (else the model's name)
    vision: bool = False
    device: str = "cpu"

    @classmethod
    def of(cls, chain: dict[str, Any], model, device: str) -> "About":
        """From chain.json and the chain's model entry (pipeline/models/config.py ModelConfig)."""
        return cls(chain=chain, license=model.license, hub_id=hub_id(model), vision=is_vision(model), device=device)


def hub_id(model) -> str | None:
    """The base model's hub id: the entry's hub_id, else its path when that is `owner/name` and no local folder."""
    if model.hub_id:
        return model.hub_id
    path = model.source or model.path
    if re.fullmatch(r"[\w.-]+/[\w.-]+", path) and not Path(path).exists():
        return path
    return None


def write(folder: Path, artifact: Artifact, lineage: list[dict[str, Any]], about: About) -> Path:
    """Write `folder`/README.md for `artifact` (replacing peft's template card)."""
    path = Path(folder) / CARD
    path.write_text(render(artifact, lineage, about, evaluations=[]))
    return path


def render(artifact: Artifact, lineage: list[dict[str, Any]], about: About,
           evaluations: list[tuple[str, dict[str, Any]]]) -> str:
    """The card's text; `evaluations`: (eval stage, its metrics) for held-out figures measured on this artifact."""
    from huggingface_hub import ModelCard, ModelCardData

    chain, license, hub_id, vision = about.chain, about.license, about.hub_id, about.vision

    kinds = [step["kind"] for step in lineage]
    data = ModelCardData(
        base_model=hub_id or chain.get("model"), library_name=LIBRARY[artifact.kind], license=license,
        tags=_unique(["tunechain", *(k for k in kinds if k != "base"), *(["lora"] if artifact.kind == ArtifactKind.adapter else []),
                      *(["gguf"] if artifact.kind == ArtifactKind.gguf else [])]),
        datasets=_unique(_dataset_name(name) for step in lineage for name in step.get("data", [])) or None,
        pipeline_tag="text-classification" if artifact.kind == ArtifactKind.reward_model
        else "image-text-to-text" if vision else "text-generation")
    body = "\n".join([
        f"# {chain.get('model')} · {artifact.stage}", "",
        f"{WHAT[artifact.kind][0].upper()}{WHAT[artifact.kind][1:]} `{hub_id or chain.get('model_path')}`, made by "
        f"[tunechain](https://github.com/tunechain/tunechain) in the chain `{chain.get('recipe')}` "
        f"(stage `{artifact.stage}`, fingerprint `{artifact.fingerprint}`).", "",
        "## How it was made", "", *_lineage_lines(lineage), "",
        "Command:", "", "```", command(chain), "```", "",
        "## Figures", "", *_figure_lines(artifact.metrics, evaluations), "",
        "## Intended use", "",
        "Research on, and evaluation of, the chain that made it. The figures above are the chain's own "
        "measurements: training figures, and held-out ones with the number of items (n) behind each.", "",
        "## Limits", "",
        f"- It inherits the base model's limits and license ({license or 'see the base model'}); the tuning data "
        "above is all it was taught beyond that.",
        "- The figures are measured on small held-out sets, not on public benchmarks; with n items a difference of "
        "about 1/sqrt(n) is within noise.",
        f"- Made on `{about.device}` with the versions in "
        "artifact.json; other hardware or versions may give other numbers.",
    ])
    return ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n\n" + body + "\n").content


def run_cards(run_dir: Path, artifacts: dict[str, Artifact], about: About) -> list[Path]:
    """After a chain: each carded artifact's card with the held-out figures of the eval stages that took it
    as their input, under <run folder>/cards/<stage>/README.md (the stored card cannot change: it is part
    of the artifact's integrity record)."""
    written = []
    for name, artifact in artifacts.items():
        if artifact.kind not in CARDED or artifact.stage != name:
            continue
        folder = Path(run_dir) / "cards" / name
        folder.mkdir(parents=True, exist_ok=True)
        text = render(artifact, lineage(name, about.chain, artifacts, base_name(about)), about,
                      evaluations(name, about.chain))
        (folder / CARD).write_text(text)
        written.append(folder / CARD)
    return written


def evaluations(stage: str, chain: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(eval stage, its metrics) for every finished eval stage of the chain whose input is `stage`."""
    return [(e["name"], e["metrics"]) for e in chain.get("stages", [])
            if e["kind"] == "eval" and e.get("inputs", [None])[0] == stage and e.get("metrics")]


def base_name(about: About) -> str:
    return about.hub_id or about.chain.get("model") or "base"


def command(chain: dict[str, Any]) -> str:
    overrides = list(chain.get("overrides", []))
    named = {o.split("=", 1)[0] for o in overrides}
    chosen = [f"{key}={chain.get(key)}" for key in ("recipe", "model") if key not in named]
    return " ".join(["python main.py", *chosen, *overrides])


def lineage(stage: str, chain: dict[str, Any], artifacts: dict[str, Artifact], base: str) -> list[dict[str, Any]]:
    """The stages from the base model to `stage` (first inputs followed back), each with its kind, data,
    settings of note and headline figures, oldest first."""
    entries = {e["name"]: e for e in chain.get("stages", [])}
    steps, name = [], stage
    while name in entries:
        entry = entries[name]
        made = artifacts.get(name)
        meta = made.meta if made is not None else {}
        steps.append({"name": name, "kind": entry["kind"], "data": meta.get("data", []),
                      "figures": _headline(made.metrics if made is not None else {})})
        name = entry["inputs"][0] if entry.get("inputs") else None
    steps.append({"name": base, "kind": "base", "data": [], "figures": {}})
    return steps[::-1]


def _lineage_lines(lineage: list[dict[str, Any]]) -> list[str]:
    lines = []
    for number, step in enumerate(lineage, 1):
        if step["kind"] == "base":
            lines.append(f"{number}. base model `{step['name']}`")
            continue
        data = f", data {', '.join(f'`{d}`' for d in step['data'])}" if step["data"] else ""
        figures = "".join(f", {k} {_number(v)}" for k, v in step["figures"].items())
        lines.append(f"{number}. `{step['name']}` ({step['kind']}){data}{figures}")
    return lines


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    keys = ("train_steps", "loss_first", "loss_last", "parity_identical", "size_mb")
    return {k: metrics[k] for k in keys if isinstance(metrics.get(k), (int, float))}


def _figure_lines(metrics: dict[str, Any], evaluations: list[tuple[str, dict[str, Any]]]) -> list[str]:
    rows = [(key, value, _count(key, metrics)) for key, value in sorted(metrics.items()) if _figure(key, value)]
    for stage, measured in evaluations:  # held-out figures: only those with an item count (and perplexity)
        rows += [(f"{stage}: {key}", value, _count(key, measured)) for key, value in sorted(measured.items())
                 if _figure(key, value) and (_count(key, measured) is not None or key == "perplexity")]
    if not rows:
        return ["No figures recorded for this stage."]
    return ["| figure | value | n |", "|---|---|---|",
            *(f"| {key} | {_number(value)} | {'' if n is None else n} |" for key, value, n in rows)]


def _figure(key: str, value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and key not in NOT_FIGURES
            and not key.endswith(("_n", "_correct", "_tokens")))


def _count(key: str, metrics: dict[str, Any]) -> int | None:
    """The items behind a figure: `<task>_n` for a task's figures, else by the key's prefix (COUNTS)."""
    for prefix, counter in COUNTS:
        if key.startswith(prefix) and counter in metrics:
            return metrics[counter]
    own = f"{key.split('_')[0]}_n"
    if own in metrics:
        return metrics[own]
    if key == "perplexity" and "perplexity_tokens" in metrics:
        return metrics["perplexity_tokens"]
    return None


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _dataset_name(path: str) -> str:
    """A hub id or project-relative file as configured; an absolute path by its file name only."""
    return Path(path).name if Path(path).is_absolute() else path


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(v for v in values if v))
