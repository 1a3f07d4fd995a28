"""`python main.py` as a new user runs it: the quickstart recipe on the embedded model, end to end.

Slow (about 3 minutes on 2 cores); `pytest -m "not gpu"` (the README's test command, run by CI) includes it.
"""
import time

import pytest
from conftest import read_chain, run_main

pytestmark = pytest.mark.slow


def test_default_chain_tunes_the_embedded_model_and_reuses_it(tmp_path):
    threads = {"OMP_NUM_THREADS": "2"}  # the user's default, not the 1 thread the fast tests use
    started = time.perf_counter()
    first = run_main([], tmp_path, timeout=1200, env=threads)
    first_s = time.perf_counter() - started
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.index("tunechain plan") < first.stdout.index("== stage sft")  # plan first
    assert "vs eval_base: math_accuracy" in first.stdout and "report:" in first.stdout and "W&B:" in first.stdout

    record = read_chain(tmp_path / "run")
    metrics = {s["name"]: s["metrics"] for s in record["stages"]}
    base, tuned = metrics["eval_base"]["math_accuracy"], metrics["eval_tuned"]["math_accuracy"]
    assert tuned >= base + 0.20, (base, tuned)
    assert metrics["sft"]["loss_last"] < 0.5 * metrics["sft"]["loss_first"]
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))

    (tmp_path / "run").rename(tmp_path / "first_run")
    started = time.perf_counter()
    second = run_main([], tmp_path, timeout=600, env=threads)
    second_s = time.perf_counter() - started
    assert second.returncode == 0, second.stderr[-3000:]
    assert [s["status"] for s in read_chain(tmp_path / "run")["stages"]] == ["reused"] * 3
    ratio = second_s / first_s
    print(f"\nquickstart: first run {first_s:.1f}s, all-reused rerun {second_s:.1f}s, ratio {ratio:.1%} "
          f"(target <= 5%); math accuracy {base:.1%} -> {tuned:.1%}")
