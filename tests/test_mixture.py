"""Data mixtures (pipeline/data/mixture.py): entries checked and shown at plan time, drawn by weight, and
the shares training really drew recorded in the stage's metrics."""
from __future__ import annotations

import json

import pytest
from conftest import compose, tiny_overrides

from pipeline.data.datasets import load
from pipeline.data.problems import DataError
from pipeline.engine.plan import build_plan
from pipeline.engine.runner import run_chain
from pipeline.engine.store import Store

MIX = "embedded/data/mixture"
WEIGHTS = {"math": 0.5, "instruct": 0.3, "tool": 0.2}


def _mixture(entries: str, *extra: str) -> list[str]:
    return ["data.sft.path=null", f"+data.sft.mixture={entries}", *extra]


def test_the_plan_shows_each_entry_with_its_records_weight_and_share(tmp_path):
    cfg = compose(["data=embedded-mix", "logger=none"])
    plan = build_plan(cfg, Store(tmp_path / "store"), recipe="quickstart", device="cpu")
    note = next(n for s in plan.steps for n in s.data_notes if n.startswith("dataset"))
    assert note == ("dataset <- mixture (sft, 3 entries, first_exhausted, ~2333 rows: math 3000 records, weight 0.5 "
                    "(50% of rows); instruct 700 records, weight 0.3 (30% of rows); tool 500 records, weight 0.2 "
                    "(20% of rows))")  # 700 instruct records at 30% run out first: ~2333 rows


def test_weights_reach_the_fingerprint_and_the_same_mixture_reuses_it(tmp_path):
    def sft_fingerprint(*overrides):
        cfg = compose(["data=embedded-mix", "logger=none", *overrides])
        return build_plan(cfg, Store(tmp_path / "store"), recipe="quickstart", device="cpu").steps[1].fingerprint

    first = sft_fingerprint()
    assert sft_fingerprint() == first
    assert sft_fingerprint("data.sft.mixture.0.weight=0.6") != first
    assert sft_fingerprint("data.sft.stopping=all_exhausted") != first


@pytest.mark.parametrize("overrides, message", [
    (["+data.sft.mixture=[{path: embedded/data/mixture/math.jsonl}]"],
     r"^stages\.sft\.dataset: dataset spec has both a path \(embedded/data/sft_train\.jsonl\) and a mixture: set "
     r"path: null"),
    (_mixture(f"[{{path: {MIX}/math.jsonl, weight: 0.5}}, {{path: {MIX}/tool.jsonl, weight: -1}}]"),
     r"^stages\.sft\.dataset: mixture\[1\]\.weight: -1; valid: a number > 0"),
    (_mixture(f"[{{path: {MIX}/math.jsonl}}, {{path: {MIX}/absent.jsonl}}]"),
     r"^stages\.sft\.dataset: mixture\[1\] \(absent\): .*absent\.jsonl"),
    (_mixture(f"[{{path: {MIX}/math.jsonl}}, {{path: {MIX}/math.jsonl}}]"),
     r"^stages\.sft\.dataset: mixture: entries named \['math'\] more than once; give each a distinct `name`"),
    (["data=embedded-mix", "data.sft.stopping=longest"],
     r"stages\.sft\.dataset\.stopping: 'longest'"),
])
def test_a_bad_mixture_is_named_at_plan_time(overrides, message, tmp_path):
    with pytest.raises(Exception, match=message):
        build_plan(compose(["logger=none", *overrides]), Store(tmp_path / "store"), recipe="quickstart", device="cpu")
    assert not (tmp_path / "store").exists() or not list((tmp_path / "store").glob("adapter/*"))


def test_an_entry_with_a_bad_record_names_the_entry_and_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")  # no assistant turn
    with pytest.raises(DataError, match=r"^stages\.sft\.dataset: mixture\[1\] \(bad\): .*bad\.jsonl:1: .messages. must end with an assistant"):
        build_plan(compose(["logger=none", *_mixture(f"[{{path: {MIX}/tool.jsonl}}, {{path: {bad}}}]")]),
                   Store(tmp_path / "store"), recipe="quickstart", device="cpu")


def test_load_draws_the_mixture_seeded_and_limited():
    spec = {"path": None, "limit": 400, "mixture": [{"path": f"{MIX}/{name}.jsonl", "weight": w}
                                                    for name, w in WEIGHTS.items()]}
    first, again = load(spec, "sft"), load(spec, "sft")
    assert len(first) == 400 and first == again
    entry_of = {json.dumps(r["messages"]): name for name in WEIGHTS for r in load(f"{MIX}/{name}.jsonl", "sft")}
    drawn = [entry_of[json.dumps(r["messages"])] for r in first]
    assert {name: round(drawn.count(name) / 400, 1) for name in WEIGHTS} == WEIGHTS
    assert load({**spec, "mixture_seed": 1}, "sft") != first


def test_training_on_a_mixture_records_the_share_each_entry_gave(tiny_llama, tmp_path):
    """1,920 rows drawn (120 steps x 16) from 0.5/0.3/0.2: each share within 2 points of its weight."""
    overrides = [*tiny_overrides(tiny_llama), "data=embedded-mix", "stages.sft.max_steps=120",
                 "stages.sft.per_device_train_batch_size=16", "stages.sft.max_length=64", "stages.sft.logging_steps=20",
                 f"paths.store={tmp_path / 'store'}"]
    overrides += ["~stages.eval_base", "~stages.eval_tuned"]
    record = run_chain(compose(overrides), tmp_path / "run", "quickstart", overrides, None)
    metrics = record["stages"][0]["metrics"]
    assert metrics["mixture_rows"] == 1920
    shares = {name: metrics[f"mixture_share/{name}"] for name in WEIGHTS}
    assert all(abs(shares[n] - w) <= 0.02 for n, w in WEIGHTS.items()), shares
    assert metrics["loss_last"] < metrics["loss_first"]


def test_dpo_on_a_mixture_of_pairs_records_the_shares_too(tiny_llama, tmp_path):
    """The preference-style stages (DPO here) draw from a mixture and count its shares like SFT."""
    pairs = "embedded/data/preference_train.jsonl"
    kept = [o for o in tiny_overrides(tiny_llama) if not o.startswith(("stages.eval_", "stages.sft."))]
    overrides = [*kept, "recipe=sft_dpo", "~stages.sft", "~stages.eval_sft", "~stages.eval_dpo",
                 "stages.dpo.inputs=[base]", "data.preference.path=null",
                 f"+data.preference.mixture=[{{path: {pairs}, name: first, limit: 60}}, "
                 f"{{path: {pairs}, name: rest, weight: 3}}]", "data.preference_test.limit=4",
                 "stages.dpo.max_steps=10", "stages.dpo.per_device_train_batch_size=8", "stages.dpo.logging_steps=5",
                 f"paths.store={tmp_path / 'store'}"]
    record = run_chain(compose(overrides), tmp_path / "run", "sft_dpo", overrides, None)
    metrics = record["stages"][0]["metrics"]
    assert metrics["mixture_rows"] == 80 and 200 <= metrics["train_records"] <= 300  # first runs out: 60 of ~240
    assert abs(metrics["mixture_share/first"] - 0.25) <= 0.1 and \
        metrics["mixture_share/first"] + metrics["mixture_share/rest"] == pytest.approx(1)
