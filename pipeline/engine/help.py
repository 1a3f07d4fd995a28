"""`python main.py --help`: what tunechain is, the recipes with one line each, the config groups, and how
to read a stage's keys. Hydra prints it through `hydra.help.template: ${tunechain_help:}` (conf/config.yaml)."""
from __future__ import annotations

import re

from pipeline.paths import PROJECT_ROOT

CONF = PROJECT_ROOT / "conf"
GROUPS = {"model": "the chain's base model", "hardware": "devices, processes, sharding", "logger": "tracking",
          "data": "the named data sets stages read"}


def recipe_line(path) -> str:
    """A recipe's first sentence: its comment lines after the command on line 2."""
    comments = []
    for line in path.read_text().splitlines()[2:]:
        if not line.startswith("#"):
            break
        comments.append(line.lstrip("# ").strip())
    text = " ".join(comments)
    sentence = re.split(r"(?<=\.)\s", text, maxsplit=1)[0]
    return sentence if len(sentence) <= 100 else sentence[:97].rsplit(" ", 1)[0] + " ..."


def help_text() -> str:
    recipes = sorted((CONF / "recipe").glob("*.yaml"))
    width = max(len(p.stem) for p in recipes)
    lines = ["tunechain: a chain of LLM stages (SFT, QLoRA, DPO, GRPO, distillation, merge, bnb / GPTQ / GGUF export,",
             "evaluation, serving) from one Hydra config; every stage's artifact fingerprinted, stored, reused and",
             "handed to the next.", "",
             "  python main.py                                   the quickstart recipe on the embedded model",
             "  python main.py recipe=NAME model=NAME key=value  any recipe, model and override",
             "  python main.py -m recipe=quickstart stages.sft.learning_rate=1e-4,3e-4   a sweep",
             "  python main.py +dry_run=true                     the checked plan only",
             "  python main.py +explain=stages.sft               a stage's keys: value, default, help",
             "  python main.py +explain_fingerprint=sft          what a stage's fingerprint hashes", "",
             "Recipes (recipe=NAME, recipes/*.yaml):"]
    lines += [f"  {p.stem.ljust(width)}  {recipe_line(p)}" for p in recipes]
    lines += ["", "Config groups (GROUP=NAME):"]
    for group, what in GROUPS.items():
        names = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
        lines.append(f"  {group.ljust(width)}  {', '.join(names)}  ({what})")
    lines += ["", "Stage defaults (+stage/NAME@stages.MINE adds a stage; +explain=KIND lists a kind's keys):",
              "  " + ", ".join(sorted(p.stem for p in (CONF / "stage").glob("*.yaml"))), "",
              "Hydra's own options: python main.py --hydra-help"]
    return "\n".join(lines)
