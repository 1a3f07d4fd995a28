"""The serve stage's API key: the user's own from an environment variable, else a random one written to a
0600 file in the stage's run folder; and the one way tunechain compares a key (constant time).

The key's value goes to the server through its environment only; what tunechain prints and records is
where the key comes from (the variable's name, the file's path), never the key."""
from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from pipeline.redaction import remember_secret

DEFAULT_ENV = "TUNECHAIN_API_KEY"
KEY_FILE = "api_key"  # in the serve stage's run folder: <run folder>/<stage name>/api_key


def from_env(name: str | None) -> str | None:
    """The user's key: the value of the variable `name` (None when unset, empty, or no variable is named)."""
    return (os.environ.get(name) or None) if name else None


def generate(folder: Path) -> tuple[str, Path]:
    """A random key, written to `folder`/api_key readable by its owner only; (key, path)."""
    key = secrets.token_urlsafe(32)
    remember_secret(key)  # any redacted text of this process (manifest, metrics) drops it too
    path = Path(folder) / KEY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # O_EXCL below: the file is 0600 from its first byte, never widened later
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key, path


def same_key(given: str | None, expected: str) -> bool:
    """True if `given` is `expected`; the time taken does not tell how much of it matched."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())
