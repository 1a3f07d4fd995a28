"""A dataset as a config names it (conf/data/*.yaml): a DatasetSpec, and the purposes stages read data for."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

from omegaconf import MISSING

from pipeline.data.problems import DataError
from pipeline.ranges import at_least, one_of, setting

PURPOSES = ("sft", "preference", "unpaired", "prompt", "gsm8k", "text", "instruct")
STOPPING = ("first_exhausted", "all_exhausted")  # datasets.interleave_datasets' stopping strategies


@dataclass
class DatasetSpec:
    """One dataset as a config names it; types stay OmegaConf-compatible for structured configs."""

    path: Optional[str] = setting(MISSING, "local .jsonl/.json/.csv/.parquet (absolute or project-root relative), or a "
                                           "hub id; null for a mixture")
    format: str = setting("auto", "auto | messages | alpaca | sharegpt | preference | unpaired | prompt | gsm8k | text")
    split: str = setting("train", "hub split")
    subset: Optional[str] = setting(None, "hub config name")
    revision: Optional[str] = setting(None, "hub branch, tag or commit (null: main); its commit enters the fingerprint")
    limit: Optional[int] = at_least(1, None, help="keep the first N records")
    columns: Dict[str, str] = setting(factory=dict, help="source column -> canonical key")
    remote_images: bool = setting(False, "accept http(s) image URLs in chats: not fetched, so not checked, at plan "
                                         "time; the stage fetches them")
    streaming: bool = setting(False, "training reads the records as it goes (datasets.IterableDataset), tokenized on "
                                     "the fly: for corpora larger than the disk or memory; needs max_steps")
    mixture: List[Any] = setting(factory=list, help="several sets at once: entries {path, weight, name, and any key "
                                                    "above}; each record is drawn from entry i with probability "
                                                    "weight_i / sum of weights (pipeline/data/mixture.py); path: null")
    stopping: str = one_of("first_exhausted", STOPPING, help="a mixture ends when its first entry runs out, or its "
                                                             "last (all_exhausted: the others repeat)")
    mixture_seed: int = at_least(0, 0, help="seed of a mixture's draws")

    def paths(self) -> list[str]:
        """The files or hub ids this spec reads: its path, or its mixture's."""
        if self.mixture:
            return [str(e.get("path")) for e in self.mixture if isinstance(e, Mapping)]
        return [self.path] if self.path else []


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
    if spec.mixture and spec.path and spec.path != MISSING:
        raise DataError(f"dataset spec has both a path ({spec.path}) and a mixture: set path: null to train on the "
                        f"mixture, or drop the mixture")
    if not spec.mixture and (not spec.path or spec.path == MISSING):
        raise DataError("dataset spec has no path: set path to a local file or a hub dataset id (or a mixture)")
    return spec
