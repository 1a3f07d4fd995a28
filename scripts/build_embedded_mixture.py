"""The embedded mixture sets (conf/data/embedded-mix.yaml): embedded/data/sft_train.jsonl split by its
`task` key into embedded/data/mixture/<task>.jsonl (math, instruct, tool), the records unchanged.

    python scripts/build_embedded_mixture.py
"""
from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "embedded/data/sft_train.jsonl"
OUT = ROOT / "embedded/data/mixture"


def main() -> None:
    by_task: dict[str, list[str]] = {}
    for line in SOURCE.read_text(encoding="utf-8").splitlines():
        by_task.setdefault(json.loads(line)["task"], []).append(line)
    OUT.mkdir(parents=True, exist_ok=True)
    for task, lines in sorted(by_task.items()):
        (OUT / f"{task}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"{OUT / task}.jsonl: {len(lines)} records")


if __name__ == "__main__":
    main()
