"""Object hallucination, POPE-style: yes/no questions "Is there a X in the image?" about objects that are
in the picture and objects that are not (absent ones sampled at random, among the most frequent, and
among those that co-occur with the present ones). The headline is the hallucination rate: the share of
questions about absent objects answered yes."""
from __future__ import annotations

import json

from pipeline.data.datasets import load
from pipeline.errors import ConfigError
from pipeline.evaluation.common import image_prompts, limited
from pipeline.evaluation.registry import EvalRun, task
from pipeline.evaluation.scoring.visual import pope_scores, yes_no
from pipeline.evaluation.tasks.vqa import _image_of, _text_of


def check(cfg, where: str) -> None:
    if cfg.pope is None:
        raise ConfigError(f"{where}.pope: task 'hallucination' needs yes/no object questions; use data=embedded-vlm "
                          f"or set {where}.pope.path=FILE (records: prompt with an image part, answer yes|no, setting)")


POPE_FIGURES = ("hallucination_rate", "pope_accuracy", "pope_precision", "pope_recall", "pope_f1", "pope_yes_ratio")
POPE_SETTINGS = ("random", "popular", "adversarial")  # how POPE samples the absent objects


@task("hallucination", order=56, headlines=("hallucination_rate", "pope_f1", "pope_yes_ratio"), budget=4,
      reads=("pope",), check=check,
      percent=POPE_FIGURES + tuple(f"{figure}_{name}" for figure in POPE_FIGURES for name in POPE_SETTINGS))
def run(ev: EvalRun) -> dict:
    """POPE accuracy, precision, recall, F1 and yes-ratio, overall and per sampling setting (`setting` of each
    record: random, popular, adversarial); pope_predictions.jsonl keeps every answer."""
    cfg, ctx = ev.cfg, ev.ctx
    records = limited(load(cfg.pope, "prompt"), cfg.limit)
    prompts, images = image_prompts(ev.backend, records, ctx)
    outputs = ev.backend.generate(prompts, cfg.budget("hallucination"), progress=f"[{ctx.name}] hallucination",
                                  images=images)
    with open(ctx.out_dir / "pope_predictions.jsonl", "w") as handle:
        for record, output in zip(records, outputs):
            handle.write(json.dumps({"image": _image_of(record), "question": _text_of(record),
                                     "setting": record.get("setting", "all"), "object": record.get("object"),
                                     "answer": record["answer"], "output": output.text,
                                     "read_as": yes_no(output.text)}, ensure_ascii=False) + "\n")
    items = [(r.get("setting", "all"), str(r["answer"]).strip().lower(), o.text) for r, o in zip(records, outputs)]
    return pope_scores(items)
