"""The chain's results: report.md in the run folder and the closing table in the terminal."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.artifact import ArtifactKind
from pipeline.engine import registry
from pipeline.errors import ConfigError
from pipeline.evaluation import registry as eval_tasks

# Metrics shown in tables, in this order, when a stage has them: every eval task's headline
# (pipeline/evaluation/registry.py), then the training stages'.
TRAINING_HEADLINE = ("eval_reward_margin", "reward_end", "train_loss", "train_runtime")
COMPARED = ("math_accuracy", "vqa_accuracy", "hallucination_rate", "perplexity")
# The accuracy a lab's variants table compares, first found: (metric, its per-item file, its item count, label)
QUALITY = (("math_accuracy", "predictions.jsonl", "math_n", "math"),
           ("vqa_accuracy", "vqa_predictions.jsonl", "vqa_n", "vqa"))


def _spec(kind: str) -> registry.StageSpec:
    try:
        return registry.get(kind)
    except ConfigError:  # a chain.json of a kind this installation no longer has
        return registry.StageSpec(kind, object, None, frozenset(), "")


def headline_metrics() -> tuple[str, ...]:
    return tuple(m for metrics in eval_tasks.headlines().values() for m in metrics) + TRAINING_HEADLINE


def percent_metrics() -> set[str]:
    """Metrics shown as percentages, their deltas in points: what each eval task (`@task(percent=...)`) and
    stage kind (`@stage(percent=...)`) declares."""
    return eval_tasks.percent_metrics() | {m for kind in registry.kinds() for m in registry.get(kind).percent}


PLOT = "compression_vs_quality.png"  # quality metrics that compare_with reports as deltas


def fmt(name: str, value: Any) -> str:
    if value is None:
        return "-"
    if name in percent_metrics():
        return f"{100 * value:.1f}%"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def results_table(entries: list[dict[str, Any]]) -> list[list[str]]:
    found = {k for e in entries for k in e.get("metrics", {})}
    lm_eval = sorted(k for k in found if k.startswith("lmeval_") and "stderr" not in k)
    columns = [m for m in headline_metrics() if m in found] + lm_eval
    rows = [["stage", "kind", "status", "time"] + columns]
    for e in entries:
        seconds = e.get("seconds")
        rows.append([e["name"], e["kind"], e["status"], f"{seconds:.1f}s" if seconds is not None else "-"]
                    + [fmt(m, e.get("metrics", {}).get(m)) for m in columns])
    return rows


def comparisons(entries: list[dict[str, Any]]) -> list[str]:
    """'eval vs eval_base: math_accuracy +40.0 points' for each stage with compare_with."""
    by_name = {e["name"]: e for e in entries}
    lines = []
    for e in entries:
        other = by_name.get(e.get("compare_with") or "")
        if not other:
            continue
        for metric in COMPARED:
            a, b = e.get("metrics", {}).get(metric), other.get("metrics", {}).get(metric)
            if isinstance(a, (int, float)) and isinstance(b, (int, float)):
                delta = f"{100 * (a - b):+.1f} points" if metric in percent_metrics() else f"{a - b:+.3g}"
                lines.append(f"{e['name']} vs {other['name']}: {metric} {fmt(metric, b)} -> {fmt(metric, a)} ({delta})")
    return lines


def exports(entries: list[dict[str, Any]]) -> list[str]:
    """One line per exported artifact: size, compression and its parity with the model it came from."""
    lines = []
    for e in entries:
        m = e.get("metrics", {})
        if e.get("output") == ArtifactKind.eval or ("parity_identical" not in m and "size_mb" not in m):
            continue
        parts = []
        if "size_mb" in m:
            ratio = f", {m['compression_ratio']:.2f}x smaller" if m.get("compression_ratio") else ""
            parts.append(f"{m['size_mb']:.1f} MB{ratio}")
        if "parity_identical" in m:
            parts.append(f"greedy tokens identical on {100 * m['parity_identical']:.1f}% of {m['parity_n']} prompts "
                         f"(token agreement {100 * m['parity_token_agreement']:.1f}%), accuracy "
                         f"{100 * m['parity_source_accuracy']:.1f}% -> {100 * m['parity_accuracy']:.1f}%, "
                         f"stops at EOS {100 * m['parity_source_stopped']:.0f}% -> {100 * m['parity_stopped']:.0f}%")
        if "parity_kld_mean" in m:
            parts.append(f"mean KL divergence {_kld(m['parity_kld_mean'])} nats per token (99%: "
                         f"{_kld(m['parity_kld_p99'])}), same top token {100 * m['parity_same_top']:.1f}% of "
                         f"{m['parity_kld_positions']} answer tokens")
        if "parity_image_identical" in m:
            parts.append(f"on image prompts identical on {100 * m['parity_image_identical']:.1f}% of "
                         f"{m['parity_image_n']} (token agreement {100 * m['parity_image_token_agreement']:.1f}%)")
        lines.append(f"{e['name']}: " + "; ".join(parts))
    return lines


def ship_gate(entries: list[dict[str, Any]]) -> list[str]:
    """A select stage's choice and why each other variant lost (its manifest keeps every verdict)."""
    import json

    lines = []
    for e in entries:
        manifest = Path(e.get("artifact") or "") / "artifact.json"
        if "selected" not in e.get("metrics", {}) or not manifest.is_file():
            continue
        selection = json.loads(manifest.read_text()).get("meta", {}).get("selection", {})
        lines.append(f"{e['name']}: {e['metrics']['selected']} handed on (smallest keeping "
                     f"{selection.get('min_retained', 0):.0%} of {selection.get('reference')}'s "
                     f"{selection.get('metric')} on the interval's lower end)")
        lines += [f"{e['name']}: {v['export']}: {v['why']}" for v in selection.get("verdicts", [])]
    return lines


def serving(entries: list[dict[str, Any]]) -> list[str]:
    lines = []
    for e in entries:
        m = e.get("metrics", {})
        if e.get("output") != ArtifactKind.serve or not m:
            continue
        lines.append(f"{e['name']}: ready in {m.get('ready_seconds')}s on {m.get('bound_address')}, smoke reply "
                     f"{m.get('smoke_latency_s')}s ({m.get('smoke_tokens_per_s')} tokens/s, finish "
                     f"{m.get('smoke_finish_reason')}), {m.get('concurrent_ok')}/{m.get('concurrent_n')} concurrent "
                     f"requests ok, wrong key -> {m.get('wrong_key_status')}")
    return lines


VARIANT_COLUMNS = ("variant", "backend", "size MB", "compression", "math acc (n)", "retained [95% CI]",
                   "stops at EOS", "perplexity", "load s", "first token ms", "decode tok/s", "memory MB",
                   "instruct pass", "chrF", "judge", "KLD vs source")


def variant_entries(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The evals of one model's forms: each eval whose input is an export (bnb, GPTQ, GGUF) and compares
    with an earlier eval, and those references. A trained adapter against its base is not a variant."""
    variant = {e["name"]: _spec(e["kind"]).variant for e in entries}
    evals = [e for e in entries if e.get("output") == ArtifactKind.eval and "size_mb" in e.get("metrics", {})]
    variants = [e for e in evals if e.get("compare_with") and variant.get((e.get("inputs") or [""])[0], False)]
    references = {e["compare_with"] for e in variants}
    return [e for e in evals if e in variants or e["name"] in references]


def retained_interval(variant: dict[str, Any], reference: dict[str, Any], draws: int = 2000,
                      seed: int = 0, items: str = "predictions.jsonl") -> tuple[float, float] | None:
    """95% interval of accuracy retained (variant / reference), a paired bootstrap over the prompts both
    answered (their per-item file, `items`), so the n of a small prompt set shows in the figure."""
    import random

    def correct(entry):
        path = Path(entry.get("artifact") or "") / items
        if not path.is_file():
            return None
        import json

        return {(r["question"], r.get("image")): bool(r["correct"])
                for r in map(json.loads, path.read_text().splitlines())}

    ours, theirs = correct(variant), correct(reference)
    if not ours or not theirs:
        return None
    pairs = [(ours[q], theirs[q]) for q in ours if q in theirs]
    rng = random.Random(seed)
    ratios = []
    for _ in range(draws):
        sample = [pairs[rng.randrange(len(pairs))] for _ in pairs]
        base = sum(b for _, b in sample)
        if base:
            ratios.append(sum(a for a, _ in sample) / base)
    if len(ratios) < draws // 2:
        return None
    ratios.sort()
    return ratios[int(0.025 * len(ratios))], ratios[int(0.975 * len(ratios)) - 1]


def variants(entries: list[dict[str, Any]]) -> list[list[str]]:
    """The lab table: one row per form of the model, sizes and quality relative to what it is compared with."""
    evals = variant_entries(entries)
    if len(evals) < 2:
        return []
    by_name = {e["name"]: e for e in evals}
    made_by = {e["name"]: e.get("metrics", {}) for e in entries}  # an export's own parity figures
    metric, items, count, label = next((q for q in QUALITY if any(q[0] in e["metrics"] for e in evals)), QUALITY[0])
    hallucination = any("hallucination_rate" in e["metrics"] for e in evals)
    stops = "stopped_at_eos" if metric == "math_accuracy" else f"{label}_stopped_at_eos"
    rows = [[f"{label} acc (n)" if c == "math acc (n)" else c for c in VARIANT_COLUMNS]
            + (["hallucination"] if hallucination else [])]
    for e in evals:
        m = e["metrics"]
        reference = by_name.get(e.get("compare_with") or "")
        ref = reference["metrics"] if reference else {}
        ratio = ref["size_mb"] / m["size_mb"] if ref.get("size_mb") and m.get("size_mb") else None
        retained = m[metric] / ref[metric] if ref.get(metric) and metric in m else None
        interval = retained_interval(e, reference, items=items) if retained is not None else None
        shown = f"{100 * retained:.1f}%" if retained is not None else "-"
        if interval:
            shown += f" [{100 * interval[0]:.0f}-{100 * interval[1]:.0f}]"
        accuracy = fmt(metric, m.get(metric))
        if m.get(count):
            accuracy += f" (n={m[count]})"
        ttft = m.get("first_token_s")
        rows.append([(e.get("inputs") or [e["name"]])[0], str(m.get("backend", "-")), fmt("size_mb", m.get("size_mb")),
                     f"{ratio:.2f}x" if ratio else "-", accuracy, shown, fmt("stopped_at_eos", m.get(stops)),
                     fmt("perplexity", m.get("perplexity")),
                     fmt("load_seconds", m.get("load_seconds")), f"{1000 * ttft:.1f}" if ttft else "-",
                     fmt("decode_tokens_per_s", m.get("decode_tokens_per_s")), fmt("memory_mb", m.get("memory_mb")),
                     fmt("math_accuracy", m.get("instruct_pass_rate")), fmt("gen_chrf", m.get("gen_chrf")),
                     fmt("judge_score", m.get("judge_score")),
                     _kld(made_by.get((e.get("inputs") or [""])[0], {}).get("parity_kld_mean"))]
                    + ([fmt("hallucination_rate", m.get("hallucination_rate"))] if hallucination else []))
    return rows


def _kld(value) -> str:
    """Mean KL divergence in nats per token: small numbers, kept readable (llama.cpp prints 6 decimals)."""
    return "-" if value is None else f"{value:.4f}" if value >= 0.001 else f"{value:.2e}"


def _percent_and_interval(cell: str) -> tuple[float, float | None, float | None]:
    """'98.5% [90-104]' -> (98.5, 90, 104)."""
    value, _, rest = cell.partition("%")
    if "[" in rest:
        low, high = rest.strip(" []").split("-")
        return float(value), float(low), float(high)
    return float(value), None, None


def plot_compression(entries: list[dict[str, Any]], path: Path) -> Path | None:
    """Compression ratio vs quality retained (with its 95% interval), one point per variant."""
    rows = variants(entries)
    points = [(r[0], float(r[3][:-1]), *_percent_and_interval(r[5])) for r in rows[1:] if r[3] != "-" and r[5] != "-"]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, x, y, low, high in points:
        yerr = [[y - low], [high - y]] if low is not None else None
        ax.errorbar([x], [y], yerr=yerr, fmt="o", capsize=3, color="tab:blue")
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.axhline(100, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlabel("compression ratio (reference size / variant size)")
    ax.set_ylabel("quality retained (% of reference accuracy, 95% CI)")
    ax.set_title("compression vs quality retained")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


CURVES = "training_curves.png"
# what the training stages log per step (sft/dpo/distill: loss; grpo/rloo: the mean reward, and the share of
# groups whose completions all scored alike, which teach nothing), with each panel's label
CURVE_KEYS = {"loss": "loss", "reward": "mean reward", "frac_reward_zero_std": "share of zero-variance groups"}


def plot_curves(run_dir: Path, path: Path) -> Path | None:
    """Loss and reward per step of every training stage, from the run's metrics.jsonl."""
    import json

    source = run_dir / "metrics.jsonl"
    if not source.is_file():
        return None
    curves: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for line in source.read_text().splitlines():
        row = json.loads(line)
        for key in CURVE_KEYS:
            if isinstance(row.get(key), (int, float)) and isinstance(row.get("step"), int):
                curves.setdefault((row["stage"], key), []).append((row["step"], row[key]))
    curves = {k: v for k, v in curves.items() if len(v) > 1}
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for _, k in curves})
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.5), dpi=110, squeeze=False)
    for ax, key in zip(axes[0], keys):
        for (stage, k), points in sorted(curves.items()):
            if k == key:
                ax.plot([p[0] for p in points], [p[1] for p in points], label=stage)
        ax.set_xlabel("step")
        ax.set_ylabel(CURVE_KEYS[key])
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def judge_distributions(entries: list[dict[str, Any]]) -> list[str]:
    """Each judged eval's score histogram as a text bar chart (counts per score 1..10)."""
    lines = []
    for e in entries:
        dist = e.get("metrics", {}).get("judge_distribution")
        if dist:
            counts = [int(dist.get(str(i), dist.get(i, 0))) for i in range(1, 11)]
            lines.append(f"{e['name']}: " + " ".join(f"{i}:{c}" for i, c in zip(range(1, 11), counts))
                         + f" (unparsable {e['metrics'].get('judge_unparsable')}, failed {e['metrics'].get('judge_failed')})")
    return lines


def health(entries: list[dict[str, Any]]) -> list[str]:
    """Training-health warnings (pipeline/training/health.py) of every stage that raised any."""
    return [f"{e['name']}: {w}" for e in entries for w in e.get("metrics", {}).get("health_warnings") or []]


ITEM_EXAMPLES = 3           # per-item records shown per text task and eval stage: two wrong, one right
IMAGE_EXAMPLES = 4          # answers shown per image task and eval stage
EXAMPLE_IMAGES = "report_images"


def item_examples(entries: list[dict[str, Any]]) -> list[str]:
    """A few per-item records of each eval's tasks (TaskSpec.items), wrong ones first, so a surprising figure
    can be read: the prompt, the answer, how it was read and the verdict."""
    import json

    from pipeline.evaluation.registry import all_tasks

    lines = []
    for e in entries:
        folder = Path(e.get("artifact") or "")
        for spec in all_tasks().values():
            if e.get("output") != ArtifactKind.eval or not spec.items or not (folder / spec.items[0]).is_file():
                continue
            name, prompt, answer, read, verdict = spec.items
            rows = [json.loads(line) for line in (folder / name).read_text().splitlines()]
            picked = [r for r in rows if not r.get(verdict)][:ITEM_EXAMPLES - 1] + [r for r in rows if r.get(verdict)][:1]
            lines += [f"{e['name']}, {spec.name} ({name}):", ""]
            lines += [f"- {_short(r.get(prompt))} -> `{_short(r.get(answer))}` read as `{_short(r.get(read))}`: "
                      f"**{'right' if r.get(verdict) else 'wrong'}**" for r in picked] + [""]
    return lines


def _short(value: Any, limit: int = 160) -> str:
    text = " ".join(str(value).split())
    return (text[:limit] + "...") if len(text) > limit else text


def image_examples(entries: list[dict[str, Any]], run_dir: Path) -> list[str]:
    """A few answers of each eval's image tasks beside their pictures (copied next to the report, so report.md
    and report.html show them wherever the store is): question, reference and the model's answer."""
    import json
    import shutil

    lines = []
    for e in entries:
        folder = Path(e.get("artifact") or "")
        for items, kind in (("vqa_predictions.jsonl", "vqa"), ("pope_predictions.jsonl", "hallucination")):
            path = folder / items
            if e.get("output") != ArtifactKind.eval or not path.is_file():
                continue
            rows = [json.loads(line) for line in path.read_text().splitlines()[:IMAGE_EXAMPLES]]
            cells = []
            for i, row in enumerate(rows):
                image = Path(row.get("image") or "")
                if not image.is_file():
                    continue
                copy = run_dir / EXAMPLE_IMAGES / f"{e['name']}-{kind}-{i}{image.suffix}"
                copy.parent.mkdir(exist_ok=True)
                shutil.copy2(image, copy)
                verdict = "right" if row.get("correct", str(row.get("read_as")) == row.get("answer")) else "wrong"
                cells.append(f"![{kind} {i}]({EXAMPLE_IMAGES}/{copy.name}) {row['question']} expected "
                             f"**{row['answer']}**, answered **{row['output'].strip() or '(nothing)'}** ({verdict})")
            if cells:
                lines += [f"{e['name']}, {kind}:", ""] + [f"- {c}" for c in cells] + [""]
    return lines


def _locations(run_dir: Path, record: dict[str, Any], tracker) -> list[str]:
    lines = [f"run folder: {run_dir}", f"chain:      {run_dir / 'chain.json'}", f"report:     {run_dir / 'report.md'}",
             f"artifacts:  {record['store']}"]
    return lines + (tracker.locations() if hasattr(tracker, "locations") else [])


def _markdown_table(rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return out + ["| " + " | ".join(r) + " |" for r in rows[1:]]


def write(run_dir: Path, record: dict[str, Any], tracker) -> Path:
    lines = [f"# tunechain report: {record['recipe']}", "",
             f"model `{record['model']}` ({record['model_path']}), status **{record['status']}**", ""]
    lines += _markdown_table(results_table(record["stages"])) + [""]
    lines += [f"- {c}" for c in comparisons(record["stages"])] + [""]
    if variants(record["stages"]):
        lines += ["## Variants", ""] + _markdown_table(variants(record["stages"])) + [""]
        if plot_compression(record["stages"], run_dir / PLOT):
            lines += [f"![compression vs quality retained]({PLOT})", ""]
    if item_examples(record["stages"]):
        lines += ["## Answers, a few per task", ""] + item_examples(record["stages"])
    shown = image_examples(record["stages"], run_dir)
    if shown:
        lines += ["## Image answers", ""] + shown + [""]
    if exports(record["stages"]):
        lines += ["## Exports (parity with the source model)", ""] + [f"- {x}" for x in exports(record["stages"])] + [""]
    if ship_gate(record["stages"]):
        lines += ["## Ship gate", ""] + [f"- {x}" for x in ship_gate(record["stages"])] + [""]
    if serving(record["stages"]):
        lines += ["## Serving", ""] + [f"- {x}" for x in serving(record["stages"])] + [""]
    if judge_distributions(record["stages"]):
        lines += ["## Judge scores", ""] + [f"- {x}" for x in judge_distributions(record["stages"])] + [""]
    if plot_curves(run_dir, run_dir / CURVES):
        lines += ["## Training curves", "", f"![loss, reward and zero-variance groups per step]({CURVES})", ""]
    if record.get("skipped"):
        lines += ["## Skipped", ""] + [f"- {x}" for x in record["skipped"]] + [""]
    if health(record["stages"]):
        lines += ["## Training health", ""] + [f"- {w}" for w in health(record["stages"])] + [""]
    lines += ["## Where things are", ""] + [f"- {line}" for line in _locations(run_dir, record, tracker)]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    _html(path)
    if hasattr(tracker, "log_report"):
        tracker.log_report(variants(record["stages"]), run_dir / PLOT, path.with_suffix(".html"))
    return path


def _html(markdown_path: Path) -> None:
    """report.html beside report.md (same content; the plot shows inline)."""
    import markdown

    body = markdown.markdown(markdown_path.read_text(), extensions=["tables"])
    style = ("body{font-family:sans-serif;max-width:72em;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}td:first-child{text-align:left}")
    markdown_path.with_suffix(".html").write_text(
        f"<!doctype html><meta charset='utf-8'><title>tunechain report</title><style>{style}</style>\n{body}\n")


def terminal_summary(run_dir: Path, record: dict[str, Any], tracker) -> str:
    rows = results_table(record["stages"])
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["", f"== results: recipe '{record['recipe']}' ({record['status']})"]
    lines += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines += ["  " + c for c in comparisons(record["stages"])]
    lab = variants(record["stages"])
    if lab:
        lab_widths = [max(len(r[c]) for r in lab) for c in range(len(lab[0]))]
        lines += ["  variants:"] + ["    " + "  ".join(cell.ljust(w) for cell, w in zip(row, lab_widths)) for row in lab]
    lines += ["  export " + x for x in exports(record["stages"])]
    lines += ["  ship   " + x for x in ship_gate(record["stages"])]
    lines += ["  serve  " + x for x in serving(record["stages"])]
    lines += ["  health: " + w for w in health(record["stages"])]
    lines += ["  " + line for line in _locations(run_dir, record, tracker)]
    return "\n".join(lines)
