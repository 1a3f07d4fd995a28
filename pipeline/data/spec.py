"""A dataset as a config names it (conf/data/*.yaml): a DatasetSpec, and the purposes stages read data for."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

from omegaconf import MISSING

from pipeline.data.problems import DataError
from pipeline.ranges import at_least, setting

PURPOSES = ("sft", "preference", "unpaired", "prompt", "gsm8k", "text", "instruct")


@dataclass
class DatasetSpec:
    """One dataset as a config names it; types stay OmegaConf-compatible for structured configs."""

    path: str = setting(MISSING, "local .jsonl/.json/.csv/.parquet (absolute or project-root relative), or a hub id")
    format: str = setting("auto", "auto | messages | alpaca | sharegpt | preference | unpaired | prompt | gsm8k | text")
    split: str = setting("train", "hub split")
    subset: Optional[str] = setting(None, "hub config name")
    revision: Optional[str] = setting(None, "hub branch, tag or commit (null: main); its commit enters the fingerprint")
    limit: Optional[int] = at_least(1, None, help="keep the first N records")
    columns: Dict[str, str] = setting(factory=dict, help="source column -> canonical key")
    remote_images: bool = setting(False, "accept http(s) image URLs in chats: not fetched, so not checked, at plan "
                                         "time; the stage fetches them")


def as_spec(spec: DatasetSpec | Mapping[str, Any] | str) -> DatasetSpec:
    """Stages may pass a DatasetSpec, a plain dict or DictConfig, or a bare path."""
    if isinstance(spec, str):
        spec = DatasetSpec(path=spec)
    elif isinstance(spec, Mapping):
        fields = dict(spec)
        fields["columns"] = dict(fields.get("columns") or {})
        try:
            spec = DatasetSpec(**fields)
        except TypeError as e:  # an unknown key
            raise DataError(f"invalid dataset spec {fields}: {e}") from None
    if not spec.path or spec.path == MISSING:
        raise DataError("dataset spec has no path: set path to a local file or a hub dataset id")
    return spec
