"""Fingerprints: what makes two stage runs the same run.

A stage's fingerprint hashes its kind, its resolved config (minus keys that change nothing it
produces), its inputs' fingerprints, the hashes of the data files it reads, and its environment:
the versions of the libraries its result depends on (declared by its @stage), the device and
compute dtype, the project version and a digest of the stage's own code. Equal fingerprints mean
the stored artifact can be reused; `python main.py +explain_fingerprint=STAGE` prints all of it.

The code digest hashes the stage module's syntax tree without docstrings, so an edit of the
stage's code means a new artifact while comments, docstrings and formatting do not; a change in a
shared helper that alters results (pipeline/training, pipeline/data) bumps the project version.
"""
from __future__ import annotations

import ast
import functools
import importlib.metadata
import importlib.util
from typing import Any, Iterable

from pipeline import __version__
from pipeline.hashing import hash_json

# Keys that only change how a run is shown, not what it produces.
COSMETIC_KEYS = frozenset({"inputs", "optional", "logging_steps", "compare_with", "progress", "checkpoint"})


def strip_cosmetic(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in COSMETIC_KEYS}


def fingerprint_inputs(kind: str, config: dict[str, Any], input_fingerprints: Iterable[str],
                       data_fingerprints: Iterable[str], extra: dict[str, Any] | None = None,
                       environment: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything a stage's fingerprint is the hash of."""
    return {
        "kind": kind,
        "config": strip_cosmetic(config),
        "inputs": list(input_fingerprints),
        "data": sorted(data_fingerprints),
        "version": __version__,
        "extra": extra or {},
        "environment": environment or {},
    }


def fingerprint_of(inputs: dict[str, Any]) -> str:
    return hash_json(inputs)[:20]


def environment(spec, device: str, dtype: str) -> dict[str, Any]:
    """What besides config and data changes a stage's result: library versions, device, dtype, code."""
    return {"libraries": {name: installed_version(name) for name in spec.libraries},
            "device": device, "dtype": dtype, "code": code_digest(spec.run.__module__)}


def installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=None)
def code_digest(module: str) -> str:
    """sha256 of the module's syntax tree with docstrings removed (comments never reach the tree)."""
    found = importlib.util.find_spec(module)
    if found is None or not found.origin:
        return "unknown"
    with open(found.origin, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and \
                isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return hash_json(ast.dump(tree))[:16]
