"""The same LoRA SFT through tunechain and through a hand-written trl script: wall time, tokens/s, peak
memory and final loss of each, the wall-time ratio and the loss difference.

    python scripts/bench_train.py [--model embedded|smollm2-135m|<conf/model name>|<folder, hub id or .gguf>]
        [--steps N] [--batching auto|padded|padding-free|packed] [--threads N] [--overrides key=value ...] [--out FILE]
        [--only tunechain|plain] [--random-init llama-0.5b|<config JSON or file>] [--peak-flops F] [--keep]

tunechain side: `python main.py recipe=bench_sft ...` (the SFT stage alone) with a fresh store
(TUNECHAIN_STORE in a temporary folder), W&B offline, its run folder in the same temporary folder; its
numbers come from the run's chain.json and metrics.jsonl (`--overrides logger=none`: no W&B at all). Plain side: scripts/plain_trl_sft.py with every
setting taken from the same composed config (learning rate, steps, batch, length, warmup, scheduler, decay,
grad norm, LoRA, seed, dtype, threads), so the two cannot disagree. Same seed, data and masks give the
same LoRA init and data order, so the losses should agree to float rounding.

Measured per process: wall time from start to exit; training tokens/s (trl's count of the non-padding
tokens the trainer saw / the time spent in trainer.train()); peak RSS: the larger of psutil polling every
50 ms (which can miss a short spike) and the kernel's ru_maxrss from wait4 (which misses what came before
tunechain's stage: it resets that counter at each stage's start); on a GPU torch.cuda.max_memory_allocated
and MFU = 6 * params * tokens/s / peak bf16 dense FLOPs (6: the usual forward + backward count for full
training; a LoRA step skips the frozen weights' gradients, so this overstates its work by about a third).

A model of a size of your choosing with random weights (e.g. for MFU on a GPU): `--random-init llama-0.5b`
(a ~0.5B Llama on the embedded tokenizer), or a JSON of transformers config keys, e.g.
`--random-init '{"model_type": "qwen2", "hidden_size": 896, "num_hidden_layers": 24, ...}'`; the folder is
written into the temporary folder and trained as `model=custom` (pipeline/models/tuning.py's defaults).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PLAIN_SCRIPT = ROOT / "scripts" / "plain_trl_sft.py"
RECIPE = "bench_sft"
# Peak dense bf16 FLOP/s per GPU (vendor figures, no sparsity), matched against the device name.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
# About 0.48B parameters, Qwen2.5-0.5B's depth, on the embedded tokenizer's 3,072 tokens.
RANDOM_PRESETS = {"llama-0.5b": {"model_type": "llama", "hidden_size": 1024, "intermediate_size": 5632,
                                 "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 4,
                                 "max_position_embeddings": 4096, "tie_word_embeddings": True}}


BATCHING = ("auto", "padded", "padding-free", "packed")
BATCHING_OVERRIDES = {"auto": [], "padded": ["stages.sft.padding_free=false"],
                      "padding-free": ["stages.sft.padding_free=true"], "packed": ["stages.sft.packing=true"]}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="embedded", help="a conf/model entry, or a folder, hub id or .gguf file")
    p.add_argument("--steps", type=int, default=None, help="default: the model's tuning (model.tuning.sft.max_steps)")
    p.add_argument("--batching", choices=BATCHING, default="auto",
                   help="both sides: auto (tunechain's default for the model), padded, padding-free or packed")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads on both sides (default: "
                   "hardware.num_threads if set, else torch's default)")
    p.add_argument("--overrides", nargs="*", default=[], help="more Hydra overrides, applied to both sides")
    p.add_argument("--out", default=None, help="also write the JSON line to this file")
    p.add_argument("--only", choices=("tunechain", "plain"), default=None)
    p.add_argument("--random-init", default=None, help="train a random-weight model instead of --model")
    p.add_argument("--peak-flops", type=float, default=None, help="the GPU's peak FLOP/s, for MFU")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (store, run folder, logs)")
    return p.parse_args()


# ---------------------------------------------------------------------------------------------
# The composed config: what both sides train with

def model_overrides(model: str) -> list[str]:
    if (ROOT / "conf" / "model" / f"{model}.yaml").is_file():
        return [f"model={model}"]
    local = Path(model).expanduser()
    return ["model=custom", f"model.path={local.resolve() if local.exists() else model}"]


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from pipeline.engine.configstore import register

    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def resolved_speed(sft: dict, device: str, model_path: str) -> dict:
    """What tunechain's sft stage turns its null switches into for this model and device (the plain script is
    given the same batching, so that the two train the same tokens)."""
    from pipeline.artifact import Artifact
    from pipeline.training.common import speed_args

    return speed_args(SimpleNamespace(**sft), device, Artifact(kind="model", path=model_path, fingerprint=""))


def plain_command(cfg, device: str, threads: int | None, out_dir: Path, result: Path) -> list[str]:
    """scripts/plain_trl_sft.py's arguments for the composed SFT stage, refusing what it does not mirror."""
    from omegaconf import OmegaConf

    from pipeline import paths
    from pipeline.engine.typed_config import typed_config
    from pipeline.models.config import ModelConfig
    from pipeline.models.loading import local_folder, resolve_dtype
    from pipeline.models.sources import prepare
    from pipeline.artifact import Artifact
    from pipeline.training.common import resolved_checkpointing

    sft = OmegaConf.to_container(cfg.stages.sft, resolve=True)
    data = sft["dataset"]
    model = prepare(typed_config(cfg.model, ModelConfig, "model"))  # a GGUF source: the HF folder tunechain trains
    unsupported = {"data format": data.get("format") not in ("messages", "auto"), "data columns": bool(data.get("columns")),
                   "stage inputs": sft.get("inputs") not in (None, ["base"]), "model.chat_template": model.chat_template,
                   "model.trust_remote_code": model.trust_remote_code}
    if any(unsupported.values()):
        sys.exit(f"the plain script does not mirror: {', '.join(k for k, v in unsupported.items() if v)}")
    lora = sft["lora"]
    model_path = str(local_folder(model.path) or model.path)  # absolute where it is a folder, else a hub id
    command = [
        sys.executable, str(PLAIN_SCRIPT), "--model", model_path, "--data", str(paths.resolve(data["path"])),
        "--output-dir", str(out_dir), "--result", str(result), "--seed", str(cfg.seed),
        "--max-steps", str(sft["max_steps"]), "--epochs", str(sft["num_train_epochs"]),
        "--lr", str(sft["learning_rate"]), "--batch-size", str(sft["per_device_train_batch_size"]),
        "--grad-accum", str(sft["gradient_accumulation_steps"]), "--max-length", str(sft["max_length"]),
        "--warmup", str(sft["warmup_steps"]), "--scheduler", sft["lr_scheduler_type"],
        "--weight-decay", str(sft["weight_decay"]), "--max-grad-norm", str(sft["max_grad_norm"]),
        "--logging-steps", str(sft["logging_steps"]), "--assistant-turns", sft["assistant_turns"],
        "--lora-r", str(lora["r"]), "--lora-alpha", str(lora["alpha"]), "--lora-dropout", str(lora["dropout"]),
        "--target-modules", ",".join(lora["target_modules"] or model.lora_target_modules),
        "--dtype", resolve_dtype(model.dtype, device, model.path),
    ]
    speed = resolved_speed(sft, device, model_path)
    switches = {"--packing": speed["packing"], "--padding-free": speed["padding_free"],
                "--gradient-checkpointing": resolved_checkpointing(sft["gradient_checkpointing"], device,
                                                                   Artifact(kind="model", path=model_path, fingerprint="")),
                "--full": sft["method"] == "full", "--dora": lora["use_dora"], "--rslora": lora["use_rslora"]}
    command += [flag for flag, on in switches.items() if on]
    if data.get("limit"):
        command += ["--limit", str(data["limit"])]
    if threads:
        command += ["--threads", str(threads)]
    if model.attn_implementation:
        command += ["--attn-implementation", model.attn_implementation]
    if model.enable_thinking is not None:
        command += ["--enable-thinking", str(model.enable_thinking).lower()]
    return command


# ---------------------------------------------------------------------------------------------
# Running one side and measuring its process

def run_measured(command: list[str], env: dict, log: Path) -> dict:
    """Run to exit; wall time and peak RSS: polled (the process alone, and with its children such as
    W&B's service) and the kernel's ru_maxrss of the process from wait4."""
    import psutil

    peaks = {"rss": 0, "tree": 0}
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        done = threading.Event()

        def poll():
            watched = psutil.Process(proc.pid)
            while not done.is_set():
                try:
                    rss = watched.memory_info().rss
                    tree = rss + sum(c.memory_info().rss for c in watched.children(recursive=True))
                except psutil.Error:  # exited, or a child vanished mid-count
                    tree = rss = 0
                peaks["rss"], peaks["tree"] = max(peaks["rss"], rss), max(peaks["tree"], tree)
                done.wait(0.05)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait again
        done.set()
        poller.join()
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        sys.exit(f"{command[1]} failed (exit {proc.returncode}); last lines of {log}:\n{tail}")
    maxrss = usage.ru_maxrss * 1024  # Linux reports KiB
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(max(peaks["rss"], maxrss) / 2**20, 1),
            "polled_rss_mb": round(peaks["rss"] / 2**20, 1), "ru_maxrss_mb": round(maxrss / 2**20, 1),
            "peak_rss_with_children_mb": round(max(peaks["tree"], maxrss) / 2**20, 1)}


def run_tunechain(overrides: list[str], env: dict, work: Path) -> dict:
    run_dir = work / "tunechain-run"
    command = [sys.executable, str(ROOT / "main.py"), *overrides, f"hydra.run.dir={run_dir}"]
    found = run_measured(command, {**env, "TUNECHAIN_STORE": str(work / "store")}, work / "tunechain.log")
    chain = json.loads((run_dir / "chain.json").read_text())
    stage = next(s for s in chain["stages"] if s["name"] == "sft")
    if stage["status"] != "done":
        sys.exit(f"tunechain's sft stage was {stage['status']}, not trained: the store was not fresh")
    m = stage["metrics"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("stage") == "sft"]
    tokens = [r["num_tokens"] for r in rows if "num_tokens" in r]
    found.update(train_loss=m["train_loss"], loss_first=m.get("loss_first"), loss_last=m.get("loss_last"),
                 train_steps=m["train_steps"], train_records=m["train_records"], train_runtime=m["train_runtime"],
                 num_tokens=tokens[-1] if tokens else None, losses=[[r["step"], r["loss"]] for r in rows if "loss" in r],
                 batching=m.get("batching"), stage_s=stage.get("seconds"), stage_peak_rss_mb=m.get("peak_rss_mb"),
                 peak_cuda_mb=m.get("peak_memory_mb") if m.get("peak_memory_of", "").startswith("cuda") else None)
    found["command"] = " ".join(command)
    return found


def run_plain(command: list[str], env: dict, work: Path) -> dict:
    found = run_measured(command, env, work / "plain.log")
    found.update(json.loads(Path(command[command.index("--result") + 1]).read_text()))
    found["command"] = " ".join(command)
    return found


# ---------------------------------------------------------------------------------------------
# Helpers: a random-weight model, parameter counts, the GPU

def random_model(spec: str, folder: Path) -> Path:
    """A model with random weights from a preset, a JSON file or inline JSON of config keys, on the
    embedded model's tokenizer (its vocabulary sets vocab_size), saved in bf16 into `folder`."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    keys = dict(RANDOM_PRESETS.get(spec) or json.loads(Path(spec).read_text() if Path(spec).is_file() else spec))
    embedded = ROOT / "embedded" / "model"
    tokenizer = AutoTokenizer.from_pretrained(embedded)
    config = AutoConfig.for_model(keys.pop("model_type", "llama"), **keys, vocab_size=len(tokenizer),
                                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                  bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(folder)
    for name in os.listdir(embedded):  # the tokenizer's files (tokenizer.model included) and its chat template
        if name.startswith("tokenizer") or name in ("special_tokens_map.json", "chat_template.jinja"):
            shutil.copy2(embedded / name, folder / name)
    return folder


def count_params(folder: str) -> int | None:
    """Parameters stored in a local folder's safetensors files, read from their headers (no weights loaded)."""
    import math

    files = sorted(Path(folder).glob("*.safetensors")) if Path(folder).is_dir() else []
    total = 0
    for file in files:
        with open(file, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(size))
        total += sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")
    return total or None


def gpu_name(cfg) -> str | None:
    """The GPU both sides will train on (hardware.device null: cuda where available), asked in a child
    process so that this one holds no CUDA context while they run."""
    if cfg.hardware.get("device") == "cpu":
        return None
    probe = "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() or None


def peak_flops(name: str | None, given: float | None) -> float | None:
    if given or name is None:
        return given
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)


# ---------------------------------------------------------------------------------------------
# Report

def add_rates(side: dict, params: int | None, flops: float | None) -> None:
    runtime, tokens = side.get("train_runtime"), side.get("num_tokens")
    side["tokens_per_s"] = round(tokens / runtime, 1) if tokens and runtime else None
    side["outside_train_s"] = round(side["wall_s"] - runtime, 2) if runtime else None
    side["mfu"] = round(6 * params * side["tokens_per_s"] / flops, 4) if params and flops and side["tokens_per_s"] else None


def comparison(sides: dict) -> dict:
    if len(sides) < 2:
        return {}
    t, p = sides["tunechain"], sides["plain"]
    curve_t, curve_p = dict((s, v) for s, v in t["losses"]), dict((s, v) for s, v in p["losses"])
    shared = sorted(set(curve_t) & set(curve_p))
    return {"wall_ratio": round(t["wall_s"] / p["wall_s"], 3),
            "train_loss_abs_diff": abs(t["train_loss"] - p["train_loss"]),
            "loss_last_abs_diff": abs(t["loss_last"] - p["loss_last"]) if t["loss_last"] is not None else None,
            "logged_loss_max_abs_diff": max((abs(curve_t[s] - curve_p[s]) for s in shared), default=None),
            "same_tokens": t["num_tokens"] == p["num_tokens"], "same_steps": t["train_steps"] == p["train_steps"]}


def table(sides: dict, on_gpu: bool) -> str:
    rows = [("wall, whole process (s)", "wall_s", "{:.1f}"), ("  in trainer.train() (s)", "train_runtime", "{:.1f}"),
            ("  outside it (s)", "outside_train_s", "{:.1f}"),
            ("tunechain's sft stage (s)", "stage_s", "{:.1f}"), ("tokens seen in training", "num_tokens", "{:,.0f}"),
            ("training tokens/s", "tokens_per_s", "{:,.0f}"), ("peak RSS, process (MB)", "peak_rss_mb", "{:,.0f}"),
            ("peak RSS, with children (MB)", "peak_rss_with_children_mb", "{:,.0f}")]
    if on_gpu:
        rows += [("peak CUDA allocated (MB)", "peak_cuda_mb", "{:,.0f}"), ("MFU", "mfu", "{:.1%}")]
    rows += [("steps / records", None, None), ("train_loss", "train_loss", "{:.6f}"),
             ("last logged loss", "loss_last", "{:.6f}")]
    names = list(sides)
    lines = [f"{'':30}" + "".join(f"{n:>16}" for n in names)]
    for label, key, fmt in rows:
        cells = []
        for n in names:
            side = sides[n]
            if key is None:
                cells.append(f"{side['train_steps']} / {side['train_records']}")
            else:
                value = side.get(key)
                cells.append("-" if value is None else fmt.format(value))
        lines.append(f"{label:30}" + "".join(f"{c:>16}" for c in cells))
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    model = str(random_model(args.random_init, work / "random-model")) if args.random_init else args.model
    overrides = [f"recipe={RECIPE}", *model_overrides(model), *args.overrides]
    if args.steps is not None:
        overrides.append(f"stages.sft.max_steps={args.steps}")
    overrides += BATCHING_OVERRIDES[args.batching]
    if args.threads:
        overrides.append(f"hardware.num_threads={args.threads}")
    cfg = compose(overrides)
    if "wandb" in cfg.logger.backends:
        overrides.append("logger.mode=offline")  # the mode W&B gets without an API key, whatever is configured here
    threads = args.threads or cfg.hardware.get("num_threads")
    gpu = gpu_name(cfg)
    # the same environment for both; tunechain sets the first two itself (pipeline/engine/cli.py)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
           "WANDB_MODE": "offline"}
    plain = plain_command(cfg, "cuda" if gpu else "cpu", threads, work / "plain-out", work / "plain.json")

    sides = {}
    for side in ("tunechain", "plain"):
        if args.only in (None, side):
            print(f"running {side} ... (log: {work / (side + '.log')})", flush=True)
            sides[side] = run_tunechain(overrides, env, work) if side == "tunechain" else run_plain(plain, env, work)
    params = count_params(plain[plain.index("--model") + 1])
    flops = peak_flops(gpu, args.peak_flops)
    for side in sides.values():
        add_rates(side, params, flops)
    result = {"model": cfg.model.name or model, "params": params, "steps": int(cfg.stages.sft.max_steps),
              "batching": sides.get("tunechain", {}).get("batching") or args.batching, "device": gpu or "cpu", "threads": threads,
              "peak_flops": flops, "overrides": overrides, **comparison(sides), **sides}

    print(f"\nSFT {cfg.stages.sft.method} on {result['model']} ({params or '?'} params), {result['steps']} steps, "
          f"batch {cfg.stages.sft.per_device_train_batch_size}, max_length {cfg.stages.sft.max_length}, "
          f"{result['batching']} batches, {result['device']}, threads {threads or 'torch default'}")
    print(table(sides, gpu is not None))
    if gpu and flops is None:
        print(f"MFU: unknown peak FLOP/s for {gpu}; pass --peak-flops")
    if "wall_ratio" in result:
        def e(key):
            return "-" if result[key] is None else f"{result[key]:.2e}"

        print(f"wall tunechain / plain: {result['wall_ratio']:.2f}x; |loss diff|: train_loss {e('train_loss_abs_diff')}, "
              f"last logged {e('loss_last_abs_diff')}, largest over logged steps {e('logged_loss_max_abs_diff')}; "
              f"same tokens: {result['same_tokens']}, same steps: {result['same_steps']}")
    line = json.dumps(result)
    print(line)
    if args.out:
        Path(args.out).write_text(line + "\n")
    if args.keep:
        print(f"kept: {work}")
    else:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
