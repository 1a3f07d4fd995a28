"""Nested mappings (configs, fingerprint inputs) as flat `a.b.c` keys: for MLflow params and the dashboard's
config differences."""
from __future__ import annotations

from typing import Any, Mapping


def flat(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in nested.items():
        if isinstance(value, Mapping):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
