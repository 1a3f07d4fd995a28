"""Start a recipe from the dashboard as the command line would: the plan first (`+dry_run=true`, the same
checks), then the run itself in the background, in a run folder under the first output root, where the
run list finds it. Overrides are Hydra's `key=value` words; those that would move Hydra's own folders or
start a sweep are refused, so every started run lands where the dashboard looks."""
from __future__ import annotations

import datetime as dt
import os
import shlex
import subprocess
import sys
from pathlib import Path

MAIN = Path(__file__).resolve().parents[2] / "main.py"
PLAN_TIMEOUT_S = 300


class BadRequest(ValueError):
    """A recipe or override the page refuses, with the reason."""


def recipes() -> list[str]:
    return sorted(p.stem for p in (MAIN.parent / "conf" / "recipe").glob("*.yaml") if not p.stem.startswith("_"))


def words(recipe: str, overrides: str) -> list[str]:
    if recipe not in recipes():
        raise BadRequest(f"recipe '{recipe}' is not one of: {', '.join(recipes())}")
    try:
        parts = shlex.split(overrides or "")
    except ValueError as e:
        raise BadRequest(f"overrides: {e}") from None
    for part in parts:
        if part.startswith("-") or "=" not in part:
            raise BadRequest(f"override '{part}': write key=value (flags such as -m are for the command line)")
        if part.lstrip("+~").startswith(("hydra.", "hydra/")):
            raise BadRequest(f"override '{part}': Hydra's own settings are fixed here, so the run lands in the list")
    return [f"recipe={recipe}", *parts]


def plan(recipe: str, overrides: str, scratch: Path, store: Path) -> tuple[int, str]:
    """The plan as `python main.py ... +dry_run=true` prints it (exit status, output)."""
    command = [sys.executable, str(MAIN), *words(recipe, overrides), "+dry_run=true", f"hydra.run.dir={scratch}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=PLAN_TIMEOUT_S, cwd=MAIN.parent,
                          env={**os.environ, "TUNECHAIN_STORE": str(store)})
    return done.returncode, (done.stdout + done.stderr).strip()


def start(recipe: str, overrides: str, output_root: Path, store: Path) -> Path:
    """Start the run in the background, on the store the dashboard shows; return its run folder (chain.json
    appears there once the chain is planned)."""
    command_words = words(recipe, overrides)
    folder = output_root / dt.datetime.now().strftime("%Y-%m-%d") / \
        f"{dt.datetime.now().strftime('%H-%M-%S')}_{recipe}_dashboard"
    folder.mkdir(parents=True, exist_ok=False)
    with open(folder / "console.log", "w") as log:
        subprocess.Popen([sys.executable, str(MAIN), *command_words, f"hydra.run.dir={folder}"], cwd=MAIN.parent,
                         env={**os.environ, "TUNECHAIN_STORE": str(store)}, stdout=log, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    return folder
