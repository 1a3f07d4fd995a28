"""Plans and data preparation at scale: a dry run of the default chain with a large SFT file, first (every
record checked) and again (the check known from the store), against a dry run with the shipped data; and a
GRPO prompt set of the same size prepared as a datasets.Dataset; and 50 SFT steps streamed from the large file
(`streaming: true`, its check already known) against the same from the shipped file, whose peak RSS should
match: a stream's memory does not grow with the file. Prints seconds, peak RSS and the ratios.

    python scripts/bench_data.py [--records 1000000] [--out FILE]

The large files repeat the shipped records (embedded/data) up to --records lines, in a temporary folder with
its own store, so nothing is reused from earlier runs.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PREPARE = """
import sys
from pipeline.data.datasets import DatasetSpec, prepared
rows = prepared(DatasetSpec(path=sys.argv[1]), "prompt")
print(len(rows), rows.column_names)
"""


def repeated(source: Path, target: Path, records: int) -> Path:
    lines = [line for line in source.read_text().splitlines() if line.strip()]
    with target.open("w") as handle:
        for line in itertools.islice(itertools.cycle(lines), records):
            handle.write(line + "\n")
    return target


def measured(command: list[str], env: dict) -> dict:
    """Wall seconds and the child's own peak RSS (wait4), and its last output line."""
    started = time.time()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{output[-3000:]}")
    lines = [line for line in output.splitlines() if "<-" in line or line.startswith("dry run") or "[" in line]
    return {"s": round(time.time() - started, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024), "last": lines[-3:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-data-"))
    sft = repeated(ROOT / "embedded/data/sft_train.jsonl", work / "sft.jsonl", args.records)
    prompts = repeated(ROOT / "embedded/data/prompts_train.jsonl", work / "prompts.jsonl", args.records)
    env = {**os.environ, "TUNECHAIN_STORE": str(work / "store"), "HF_DATASETS_CACHE": str(work / "hf"),
           "WANDB_MODE": "offline"}
    plan = [sys.executable, "main.py", "+dry_run=true", f"hydra.run.dir={work / 'run'}"]
    result = {"records": args.records, "sft_file_mb": round(sft.stat().st_size / 2**20)}
    result["shipped"] = measured(plan, env)
    result["first"] = measured(plan + [f"data.sft.path={sft}"], env)
    result["again"] = measured(plan + [f"data.sft.path={sft}"], env)
    result["prompts_prepared"] = measured([sys.executable, "-c", PREPARE, str(prompts)], env)
    train = [*plan[:2], "~stages.eval_base", "~stages.eval_tuned", "+data.sft.streaming=true", "stages.sft.max_steps=50",
             f"hydra.run.dir={work / 'train'}", "logger=none"]
    result["stream_shipped"] = measured(train, env)
    result["stream_large"] = measured(train + [f"data.sft.path={sft}"], env)
    result["stream_large_vs_shipped_rss"] = round(result["stream_large"]["peak_rss_mb"] /
                                                  result["stream_shipped"]["peak_rss_mb"], 2)
    result["first_vs_shipped"] = round(result["first"]["s"] / result["shipped"]["s"], 2)
    result["again_vs_shipped"] = round(result["again"]["s"] / result["shipped"]["s"], 2)
    print(f"{args.records} records ({result['sft_file_mb']} MB of chats)")
    for key in ("shipped", "first", "again", "prompts_prepared", "stream_shipped", "stream_large"):
        print(f"  {key:17} {result[key]['s']:7.1f} s  peak RSS {result[key]['peak_rss_mb']:5} MB")
    print(f"  first plan / shipped plan: {result['first_vs_shipped']}x; again / shipped: {result['again_vs_shipped']}x")
    print(f"  50 streamed steps, peak RSS large / shipped file: {result['stream_large_vs_shipped_rss']}x")
    line = json.dumps(result)
    print(line)
    if args.out:
        Path(args.out).write_text(line + "\n")


if __name__ == "__main__":
    main()
