"""The one rule for a path in a config (data files, model folders, task files, templates):
`~` is expanded; an absolute path is taken as given; a relative path is looked up in the working
folder first, then in the project root, where the shipped `embedded/` model and data live. So
`data.sft.path=my_chats.jsonl` finds your file from wherever you run, and `embedded/data/...`
works from any folder."""
from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def candidates(path: str | Path) -> list[Path]:
    given = Path(path).expanduser()
    return [given] if given.is_absolute() else [Path.cwd() / given, PROJECT_ROOT / given]


def resolve(path: str | Path) -> Path:
    """The first candidate that exists, else the last one (where an error message should point)."""
    found = candidates(path)
    return next((c for c in found if c.exists()), found[-1])


def tried(path: str | Path) -> str:
    """For error messages: every place the rule looked."""
    return " and ".join(str(c) for c in candidates(path))


def cache_root() -> Path:
    """The user's cache ($TUNECHAIN_CACHE, default ~/.cache/tunechain): what tunechain fetches or derives
    once and reuses across runs and stores (converted models, llama.cpp's converter, reference answers)."""
    import os

    return Path(os.environ.get("TUNECHAIN_CACHE", "~/.cache/tunechain")).expanduser()
