"""Check a stage's config against its dataclass: unknown keys and wrong types name the key."""
from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, InterpolationResolutionError, MissingMandatoryValue, ValidationError

from pipeline.errors import ConfigError


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _nested_class(cls: type, dotted: str) -> type:
    """The dataclass that owns the last key of a dotted path (for 'did you mean')."""
    for part in dotted.split(".")[:-1]:
        hint = typing.get_type_hints(cls).get(part)
        if not dataclasses.is_dataclass(hint):
            return cls
        cls = hint
    return cls


def unknown_key_message(where: str, key_path: str, cls: type) -> str:
    owner = _nested_class(cls, key_path)
    key = key_path.split(".")[-1]
    valid = field_names(owner)
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"{where}.{key_path}: unknown key{hint}; valid keys: {', '.join(valid)}"


def typed_config(node: Any, cls: type, where: str) -> Any:
    """Resolve `node` and merge it into `cls`'s schema; return the dataclass instance."""
    try:
        data = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})
    except InterpolationResolutionError as e:
        raise ConfigError(f"{where}: cannot resolve {e.full_key or ''}: {e.msg}") from None
    schema = OmegaConf.structured(cls)
    try:
        merged = OmegaConf.merge(schema, data)
        return OmegaConf.to_object(merged)
    except ConfigKeyError as e:
        raise ConfigError(unknown_key_message(where, e.full_key or str(e.key), cls)) from None
    except MissingMandatoryValue as e:
        raise ConfigError(f"{where}.{e.full_key}: a value is required") from None
    except ValidationError as e:
        raise ConfigError(f"{where}.{e.full_key}: {_short(e.msg)}") from None


def _short(msg: str) -> str:
    # OmegaConf's messages carry object_type/full_key lines after the first; the first says it all.
    return msg.strip().splitlines()[0]
