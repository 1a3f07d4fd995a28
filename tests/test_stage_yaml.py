"""One source per default: a stage's defaults, types and help live in its config dataclass (the schema
its conf/stage/<name>.yaml extends); the YAML holds links (`${model.tuning...}`, `${data...}`) and what
a variant sets differently (bnb_int8's mode). A literal that repeats the schema's default fails here,
as does a schema field without its one-line help."""
import dataclasses
import enum
import typing

import pytest
import yaml
from conftest import CONF

from pipeline.engine import registry
from pipeline.engine.configstore import STAGE_SCHEMAS

STAGE_FILES = sorted((CONF / "stage").glob("*.yaml"))


def _schema_of(path) -> type:
    """The dataclass a stage YAML extends: its `schema/<kind>@_here_` default, or the file it builds on."""
    text = yaml.safe_load(path.read_text())
    for entry in text.get("defaults", []):
        if isinstance(entry, str) and entry.startswith(STAGE_SCHEMAS.split("/")[1] + "/"):
            return registry.get(entry.split("/")[1].split("@")[0]).config_cls
        if isinstance(entry, str) and entry != "_self_":
            return _schema_of(path.parent / f"{entry}.yaml")
    raise AssertionError(f"{path.name}: no schema in its defaults list")


def _default(f: dataclasses.Field):
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _plain(value):
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    return value


def repeated_literals(node: dict, cls: type, where: str) -> list[str]:
    found = []
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key, value in node.items():
        if key == "defaults" or key not in fields:
            continue
        if isinstance(value, str) and "${" in value:
            continue  # a link to the model entry or the chain's data: the value lives there
        if isinstance(value, dict) and dataclasses.is_dataclass(hints.get(key)):
            found += repeated_literals(value, hints[key], f"{where}.{key}")
        elif value == _plain(_default(fields[key])):
            found.append(f"{where}.{key}: {value!r} is {cls.__name__}'s default already")
    return found


@pytest.mark.parametrize("path", STAGE_FILES, ids=lambda p: p.stem)
def test_stage_yaml_repeats_no_default(path):
    assert repeated_literals(yaml.safe_load(path.read_text()), _schema_of(path), path.stem) == []


def test_repeated_literal_is_caught():
    sft = registry.get("sft").config_cls
    assert repeated_literals({"packing": False, "lora": {"r": 16}, "weight_decay": 0.1}, sft, "sft") == [
        "sft.packing: False is SFTConfig's default already", "sft.lora.r: 16 is LoraSpec's default already"]


def _fields_without_help(cls: type, where: str, seen: set) -> list[str]:
    missing = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.metadata.get("help"):
            missing.append(f"{where}.{f.name}")
        nested = hints.get(f.name)
        if dataclasses.is_dataclass(nested) and nested not in seen:
            seen.add(nested)
            missing += _fields_without_help(nested, f"{where}.{f.name}", seen)
    return missing


@pytest.mark.parametrize("kind", registry.kinds())
def test_every_stage_field_has_help(kind):
    assert _fields_without_help(registry.get(kind).config_cls, kind, set()) == []


def test_every_model_field_has_help():
    from pipeline.models.config import ModelConfig

    assert _fields_without_help(ModelConfig, "model", set()) == []
