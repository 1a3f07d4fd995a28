"""One source per default: each conf/stage/<kind>.yaml lists every key of its stage's config dataclass,
with the dataclass's default wherever the YAML writes a literal (an interpolation, such as
`${model.tuning.sft.learning_rate}`, takes the value from the model entry instead). A YAML key the
dataclass lacks, a dataclass key the YAML omits, or two different defaults fail here."""
import dataclasses
import enum

import pytest
from conftest import CONF, compose
from omegaconf import MISSING, OmegaConf

from pipeline.engine import registry

STAGE_FILES = sorted(p.stem for p in (CONF / "stage").glob("*.yaml"))
# Files that preset one kind another way (bnb_int8 and bnb_nf4 are both kind bnb): the keys they set on purpose.
VARIANT_KEYS = {"bnb_int8": {"mode"}}


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return MISSING


def _plain(value):
    """A default as YAML would write it: enums by value, dataclasses as mappings."""
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _differences(yaml_node, cls, where: str) -> list[str]:
    found = []
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in sorted(set(yaml_node) - set(fields)):
        found.append(f"{where}.{key}: in the YAML, not in {cls.__name__}")
    for key in sorted(set(fields) - set(yaml_node)):
        found.append(f"{where}.{key}: in {cls.__name__}, missing from the YAML")
    for key in sorted(set(fields) & set(yaml_node)):
        value, default = yaml_node[key], _default(fields[key])
        if isinstance(value, str) and "${" in value:
            continue  # the model entry's value (model.tuning) or the chain's data
        if isinstance(value, dict) and dataclasses.is_dataclass(default):
            found += _differences(value, type(default), f"{where}.{key}")
            continue
        if isinstance(value, dict) and isinstance(default, dict):  # per-task budgets: item by item
            value = {k: v for k, v in value.items() if not (isinstance(v, str) and "${" in v)}
            default = {k: v for k, v in default.items() if k in value or k not in yaml_node[key]}
        if default is MISSING:
            continue
        if _plain(default) != value:
            found.append(f"{where}.{key}: YAML {value!r}, {cls.__name__} {_plain(default)!r}")
    return found


@pytest.mark.parametrize("name", STAGE_FILES)
def test_stage_yaml_and_its_dataclass_agree(name):
    node = compose([f"+stage@stages.probe={name}", "logger=none"]).stages.probe
    raw = OmegaConf.to_container(node, resolve=False)
    spec = registry.get(raw["kind"])
    raw.pop("optional", None)  # a key of every stage, handled by the plan
    where = f"conf/stage/{name}.yaml"
    found = [d for d in _differences(raw, spec.config_cls, where)
             if not any(d.startswith(f"{where}.{key}: YAML") for key in VARIANT_KEYS.get(name, ()))]
    assert found == []


def test_the_check_catches_drift():
    from pipeline.stages.grpo import GRPOConfig

    raw = OmegaConf.to_container(compose(["+stage@stages.probe=grpo", "logger=none"]).stages.probe, resolve=False)
    raw["beta"], raw["made_up"] = 0.5, 1
    found = _differences(raw, GRPOConfig, "grpo")
    assert "grpo.beta: YAML 0.5, GRPOConfig 0.04" in found and "grpo.made_up: in the YAML, not in GRPOConfig" in found

