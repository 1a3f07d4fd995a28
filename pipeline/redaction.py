"""What is a secret, decided in one place, and the one filter that keeps secrets out of everything a run
writes: chain.json (config and command-line overrides), Hydra's .hydra/ record, manifests, metrics,
logs and the W&B run (its config and the command line it records).

A value is a secret when
  - its key names one: `api_key`, `*_api_key`, `secret_key`, `aws_secret_access_key`, `private_key`,
    `password`, `secret`, `credential(s)`, `auth`, `authorization`;
  - its key ends in `token` (`hf_token`, `access_token`) and the value looks like a token (16+ characters
    without spaces): `max_new_tokens: 256` and `pad_token: <|endoftext|>` are not secrets;
  - it is the value of an environment variable whose name holds a secret (`WANDB_API_KEY`, `HF_TOKEN`,
    `OPENAI_API_KEY`, `TUNECHAIN_JUDGE_API_KEY`...), wherever it appears in a string.
  - it is the value of a variable that a config names in an `*_env` setting (`api_key_env: MY_SERVER_KEY`);
  - it sits in a string as a URL's credentials (`https://user:pass@host`, `?api-key=...`, `&token=...`) or
    after `Bearer ` (an Authorization header).
Keys ending in `_env` (e.g. `api_key_env`) hold a variable's name, not its value, and stay visible.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterator

REDACTED = "<redacted>"
ALWAYS_SECRET = re.compile(r"(^|[._-])(api_?key|secret_?(access_)?key|private_?key|password|passwd|secret|"
                           r"credentials?|auth|authorization)$", re.IGNORECASE)
TOKEN_KEY = re.compile(r"(^|[._-])token$", re.IGNORECASE)
LOOKS_LIKE_TOKEN = re.compile(r"^[A-Za-z0-9_\-.:/+=]{16,}$")
NAMES_A_VARIABLE = re.compile(r"_env$", re.IGNORECASE)
SECRET_ENV = re.compile(r"(API_?KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)$", re.IGNORECASE)
MIN_SECRET_LENGTH = 8  # shorter environment values ("1", "true") are not scrubbed out of every text
URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@:]+:[^/\s@]+@")
URL_SECRET_PARAM = re.compile(r"(?i)([?&](?:api[-_]?key|key|token|access[-_]?token|secret|password|sig|signature|"
                              r"auth)=)[^&#\s'\"]+")
BEARER = re.compile(r"\b(Bearer\s+)[A-Za-z0-9_\-.~+/=:]{16,}")  # as headers write it: not "the bearer of..."
_NAMED_VARIABLES: set[str] = set()  # variables a config names in an *_env setting, for this process
_KNOWN_SECRETS: set[str] = set()  # values this process made itself (serve's generated key)


def is_secret(key: str, value: Any) -> bool:
    """`key` may be dotted or an override's (`+some.api_key`): its last part decides."""
    key = str(key).lstrip("+~").split(".")[-1]
    if value in (None, "") or NAMES_A_VARIABLE.search(key):
        return False
    if ALWAYS_SECRET.search(key):
        return True
    return bool(TOKEN_KEY.search(key)) and isinstance(value, str) and bool(LOOKS_LIKE_TOKEN.match(value))


def remember_named_variables(obj: Any) -> None:
    """Note the variables that `*_env` settings in a config name (their values are secrets from now on)."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if NAMES_A_VARIABLE.search(str(key)) and isinstance(value, str) and value:
                _NAMED_VARIABLES.add(value)
            else:
                remember_named_variables(value)
    elif isinstance(obj, list):
        for value in obj:
            remember_named_variables(value)


def remember_secret(value: str) -> None:
    """A secret this process holds outside the environment (a generated key): scrubbed from now on."""
    if len(value) >= MIN_SECRET_LENGTH:
        _KNOWN_SECRETS.add(value)


def environment_secrets() -> list[str]:
    """Values of this process's secret-named environment variables (and of those a config named), and the
    secrets it remembered, longest first."""
    found = {v for k, v in os.environ.items()
             if (SECRET_ENV.search(k) or k in _NAMED_VARIABLES) and len(v) >= MIN_SECRET_LENGTH} | _KNOWN_SECRETS
    return sorted(found, key=len, reverse=True)


def scrub(text: str, secrets: list[str] | None = None) -> str:
    """`text` with every secret environment value (`secrets`, default: read now), URL credential and bearer
    token replaced."""
    for secret in environment_secrets() if secrets is None else secrets:
        text = text.replace(secret, REDACTED)
    text = URL_USERINFO.sub(rf"\1{REDACTED}@", text)
    text = URL_SECRET_PARAM.sub(rf"\1{REDACTED}", text)
    return BEARER.sub(rf"\1{REDACTED}", text)


def redact(obj: Any, secrets: list[str] | None = None) -> Any:
    """A config (dicts, lists, scalars) with secret values replaced, keys kept. The environment is read
    once per call, not once per string (manifests and eval results hold thousands)."""
    if secrets is None:
        remember_named_variables(obj)
    secrets = environment_secrets() if secrets is None else secrets
    if isinstance(obj, dict):
        return {k: REDACTED if is_secret(k, v) else redact(v, secrets) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v, secrets) for v in obj]
    return scrub(obj, secrets) if isinstance(obj, str) else obj


def redact_override(override: str) -> str:
    """A command-line override (`key=value`, `+key=value`) with a secret value replaced."""
    key, sep, value = override.partition("=")
    if sep and is_secret(key, value):
        return f"{key}={REDACTED}"
    return scrub(override)


def redact_overrides(overrides: list[str]) -> list[str]:
    return [redact_override(o) for o in overrides]


def scrub_file(path: Path) -> None:
    """Rewrite a text file another library wrote (Hydra's .hydra/*.yaml) without secrets."""
    text = path.read_text(encoding="utf-8")
    cleaned = "\n".join(_scrub_yaml_line(line) for line in text.split("\n"))
    if cleaned != text:
        path.write_text(cleaned, encoding="utf-8")


_YAML_PAIR = re.compile(r"^(\s*-?\s*)([^\s:=]+)([:=]\s*)(\S.*)$")
_INLINE_PAIR = re.compile(r"([\w.+~-]+)=([^,\s'\"\]]+)")  # key=value inside a line (Hydra's override_dirname)


def _scrub_inline(line: str) -> str:
    def replace(match: re.Match) -> str:
        key, value = match.groups()
        return f"{key}={REDACTED}" if is_secret(key, value) else match.group(0)

    return _INLINE_PAIR.sub(replace, line)


def _scrub_yaml_line(line: str) -> str:
    """`key: value`, `- key=value` (Hydra's override lists) with a secret value replaced."""
    match = _YAML_PAIR.match(line)
    if match:
        lead, key, sep, value = match.groups()
        if is_secret(key, value.strip("'\"")):
            return f"{lead}{key}{sep}{REDACTED}"
    return scrub(_scrub_inline(line))


@contextlib.contextmanager
def redacted_argv() -> Iterator[None]:
    """sys.argv without secrets while a library records it (W&B keeps the command line in its run files)."""
    original = sys.argv
    sys.argv = [original[0], *redact_overrides(original[1:])]
    try:
        yield
    finally:
        sys.argv = original
