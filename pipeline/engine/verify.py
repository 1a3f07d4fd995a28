"""`tunechain verify`: check stored artifacts against their manifests (every file's size and sha256) and
name each damaged artifact and file. Reuse checks sizes only; this reads every byte.

    tunechain verify                          # every artifact of the store (paths.store, $TUNECHAIN_STORE)
    tunechain verify --store PATH             # another store
    tunechain verify --chain outputs/.../     # the artifacts one run used (its chain.json)
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.engine.integrity import DamagedArtifact
from pipeline.engine.store import Store


def main(argv: list[str]) -> int:
    """0: all intact; 1: something is damaged (each one named)."""
    parser = argparse.ArgumentParser(prog="tunechain verify", description=__doc__.splitlines()[0])
    parser.add_argument("--store", help="the store folder (default: paths.store of the config)")
    parser.add_argument("--chain", type=Path, help="a run folder or its chain.json: only the artifacts it used")
    args = parser.parse_args(argv)
    chain = _chain(args.chain) if args.chain else None
    store = Store(args.store or (chain or {}).get("store") or _configured_store())
    wanted = [(s["output"], s["fingerprint"]) for s in chain["stages"] if s.get("artifact")] if chain else None
    damaged = checked = 0
    for kind, fingerprint in wanted if wanted is not None else store.artifacts():
        try:
            artifact = store.find(kind, fingerprint, full=True)
        except DamagedArtifact as e:
            print(f"damaged: {e}", flush=True)
            damaged += 1
            continue
        if artifact is None:
            continue  # a stage that is not stored (serve), or one never finished
        checked += 1
        files = f"{len(artifact.files)} files" if artifact.files else "no digests recorded (made before they were)"
        print(f"ok: {kind} {fingerprint} ({files})", flush=True)
    print(f"{checked} intact, {damaged} damaged in {store.root}", flush=True)
    return 1 if damaged else 0


def _chain(path: Path) -> dict:
    return json.loads((path / "chain.json" if path.is_dir() else path).read_text())


def _configured_store() -> str:
    """paths.store as the config composes it (its one default, and $TUNECHAIN_STORE)."""
    from hydra import compose, initialize_config_dir

    from pipeline.engine.cli import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return str(compose(config_name="config").paths.store)
