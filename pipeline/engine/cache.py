"""The user's cache ($TUNECHAIN_CACHE, default ~/.cache/tunechain): what tunechain fetches or derives once
and reuses across runs and stores (converted models, llama.cpp's converter, reference generations)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("TUNECHAIN_CACHE", "~/.cache/tunechain")).expanduser()
