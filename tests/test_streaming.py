"""Streamed training data (`streaming: true`): the plan admits it only where a kind reads streams and with a
step count; SFT then trains from a datasets.IterableDataset. The resume after kill -9 is in test_resume.py,
the flat memory on 1M records in scripts/bench_data.py."""
from __future__ import annotations

import pytest
from conftest import compose, tiny_overrides

from pipeline.data.datasets import prepared
from pipeline.engine.plan import build_plan
from pipeline.engine.runner import run_chain
from pipeline.engine.store import Store
from pipeline.errors import ConfigError


@pytest.mark.parametrize("overrides, message", [
    (["recipe=sft_dpo", "+data.preference.streaming=true"],
     r"^stages\.dpo\.dataset\.streaming: this stage kind reads its data whole; streaming works for qlora, sft "),
    (["+data.sft.streaming=true", "stages.sft.max_steps=-1"],
     r"^stages\.sft\.max_steps: -1, but dataset is streamed and a stream has no length; set max_steps"),
    (["model=embedded-vlm", "data=embedded-vlm", "+data.sft.streaming=true"],
     r"^stages\.sft\.dataset\.streaming: image chats are read whole"),
])
def test_streaming_is_refused_where_it_cannot_work(overrides, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        build_plan(compose(["logger=none", *overrides]), Store(tmp_path / "store"), recipe="x", device="cpu")


def test_the_plan_says_the_data_is_streamed(tmp_path):
    plan = build_plan(compose(["logger=none", "+data.sft.streaming=true"]), Store(tmp_path / "store"),
                      recipe="quickstart", device="cpu")
    assert "dataset <- embedded/data/sft_train.jsonl (4200 records, sft, streamed)" in plan.render()


def test_a_stream_gives_the_records_in_file_order():
    import datasets

    stream = prepared({"path": "embedded/data/sft_train.jsonl", "streaming": True}, "sft")
    whole = prepared({"path": "embedded/data/sft_train.jsonl"}, "sft")
    assert isinstance(stream, datasets.IterableDataset)
    assert [r["messages"] for r in stream.take(5)] == whole[:5]["messages"]


def test_sft_trains_from_a_stream(tiny_llama, tmp_path):
    overrides = [*tiny_overrides(tiny_llama), "+data.sft.streaming=true", "stages.sft.max_steps=12",
                 "stages.sft.learning_rate=1e-2", "~stages.eval_base", "~stages.eval_tuned",
                 f"paths.store={tmp_path / 'store'}"]
    record = run_chain(compose(overrides), tmp_path / "run", "quickstart", overrides, None)
    metrics = record["stages"][0]["metrics"]
    assert metrics["train_steps"] == 12 and metrics["train_records"] == "streamed"
    assert metrics["loss_last"] < metrics["loss_first"]
