"""The Hugging Face Hub, asked as little as possible: is it reachable (a short connection probe, so an
unreachable hub fails in one line instead of after minutes of retries), and which commit a revision
of a model or dataset is (from the local cache first)."""
from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse


def reachable(url: str, timeout: float = 3.0) -> OSError | None:
    """A short TCP probe of a service's host: None when it answers, else the error."""
    endpoint = urlparse(url)
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout):
            return None
    except OSError as e:
        return e


def hub_reachable(timeout: float = 3.0) -> bool:
    return reachable(os.environ.get("HF_ENDPOINT", "https://huggingface.co"), timeout) is None


def hub_commit(repo: str, revision: str | None, repo_type: str) -> str:
    """The commit a hub revision (branch, tag or commit) points at: from the local cache, else from the hub.
    A branch moves; its commit is what the fingerprint keeps, so a new upload means a new artifact."""
    import re

    if revision and re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    from huggingface_hub import try_to_load_from_cache

    probe = "config.json" if repo_type == "model" else "README.md"
    cached = try_to_load_from_cache(repo, probe, revision=revision, repo_type=repo_type)
    if isinstance(cached, str):
        return Path(cached).parent.name  # .../snapshots/<commit>/<file>
    if os.environ.get("HF_HUB_OFFLINE") != "1" and hub_reachable():
        from huggingface_hub import HfApi

        try:
            info = HfApi().repo_info(repo, revision=revision, repo_type=repo_type, timeout=10)
            return info.sha or f"{revision or 'main'}"
        except Exception:  # noqa: BLE001 - unknown or gated: loading fails later with its own message
            pass
    return f"{revision or 'main'} (unresolved)"
