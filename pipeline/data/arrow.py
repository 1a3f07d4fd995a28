"""Data as Arrow, from the plan's check to the trainer's batches.

The plan checks a large local file by streaming it through pyarrow in record batches (memory stays
flat whatever the file size): the screens of pipeline/data/screens.py pick the rows that might be
invalid, and only those go through the record converters, so a million clean records cost seconds.
A file that Arrow cannot read as one table (a malformed line, a key whose type changes between
records) is left to the record-by-record readers, which name every bad line.

Stages get `datasets.Dataset` objects: `datasets.load_dataset` memory-maps the file into its cache
(keyed by the file's fingerprint), and `map` converts the rows to the stage's form with `num_proc`
workers, cached as well, so a re-run neither parses nor tokenizes again.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Optional

from pipeline import paths
from pipeline.data.formats import detect
from pipeline.data.parts import CHAT_KEYS, IMAGE_COLUMNS, as_parts, has_parts
from pipeline.data.problems import DataError, Invalid, summarise
from pipeline.data.readers import entries, existing_file, hub_error, is_hub, where_of
from pipeline.data.records import as_record, canonical, record_converter
from pipeline.data.screens import screen_for
from pipeline.data.spec import DatasetSpec

if TYPE_CHECKING:
    import pyarrow as pa

BATCH_BYTES = 16 << 20       # pyarrow's JSON/CSV block: a few MB of rows at a time
MAP_BATCH = 1000             # rows per `map` call when converting for a stage
PARALLEL_FROM_ROWS = 50_000  # below this, worker processes cost more than they save


class NotArrow(Exception):
    """Arrow cannot read this file as one table; the record readers can say why, or read it anyway."""


@dataclass
class Checked:
    records: int
    format: str


# ---------------------------------------------------------------------------------------------
# Record batches of a local file

def batches(path: Path) -> Iterator["pa.RecordBatch"]:
    """The file's records as Arrow batches, streamed; NotArrow when Arrow cannot read it."""
    import pyarrow as pa

    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            import pyarrow.json as pj

            reader = pj.open_json(path, read_options=pj.ReadOptions(block_size=BATCH_BYTES))
        elif suffix == ".csv":
            import pyarrow.csv as pcsv

            # every cell a string, as csv.DictReader gives them; empty cells stay empty strings
            reader = pcsv.open_csv(path, read_options=pcsv.ReadOptions(block_size=BATCH_BYTES),
                                   convert_options=pcsv.ConvertOptions(strings_can_be_null=False,
                                                                       column_types=_all_strings(path)))
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            reader = pq.ParquetFile(path).iter_batches(batch_size=65536)
        else:
            raise NotArrow(suffix)
        yield from reader
    except (pa.ArrowException, OSError, UnicodeDecodeError) as e:
        raise NotArrow(str(e)) from None


def _all_strings(path: Path) -> dict:
    import csv

    import pyarrow as pa

    with path.open(encoding="utf-8-sig", newline="") as handle:
        header = next(csv.reader(handle), [])
    return {name: pa.string() for name in header}


# ---------------------------------------------------------------------------------------------
# The plan's check

def check_file(spec: DatasetSpec, purpose: str, files: Optional[dict] = None) -> Checked:
    """Every record of a local file checked for `purpose` through Arrow batches and the screens; raises
    DataError naming each bad record's path:line, or NotArrow (the caller then reads record by record).
    `files` gets the local images looked at (pipeline.data.images.ImageRefs)."""
    return check_batches(batches(existing_file(spec.path)), spec, purpose, lambda rows: locations(spec, rows), files)


def check_batches(source: Iterator["pa.RecordBatch"], spec: DatasetSpec, purpose: str,
                  locate: Callable[[list[int]], dict[int, str]], files: Optional[dict] = None) -> Checked:
    """The check itself, for any stream of batches (a file's, or a downloaded hub split's table)."""
    import numpy as np
    import pyarrow as pa

    where = where_of(spec)
    fmt, convert, screen = None, None, None
    count, bad_rows, problems = 0, [], []
    for batch in source:
        if spec.limit is not None and count >= spec.limit:
            break
        if spec.limit is not None and count + batch.num_rows > spec.limit:
            batch = batch.slice(0, spec.limit - count)
        batch = _renamed(batch, spec.columns)
        if convert is None and batch.num_rows:
            fmt = spec.format if spec.format != "auto" else detect(as_record(batch.slice(0, 1).to_pylist()[0], {}),
                                                                   locate([0])[0])
            convert = record_converter(spec, fmt, purpose, where, detected=spec.format == "auto", files=files)
            screen = screen_for(fmt, purpose)
        flagged = screen(batch).nonzero()[0] if screen else np.arange(batch.num_rows)
        for row, item in zip(flagged, batch.take(pa.array(flagged, pa.int64())).to_pylist()):  # one conversion
            try:
                convert(as_record(item, {}))
            except Invalid as e:
                bad_rows.append(count + int(row))
                problems.append(str(e))
        count += batch.num_rows
    if count == 0:
        raise DataError(f"{where}: empty file (no records)" if not is_hub(spec.path)
                        else f"{where}: split '{spec.split}' has no records")
    if problems:
        located = locate(bad_rows)
        raise DataError(summarise([f"{located[row]}: {problem}" for row, problem in zip(bad_rows, problems)]))
    return Checked(count, fmt)


def _renamed(batch, columns: dict):
    """spec.columns applied to a batch (source column -> canonical key; the renamed one wins)."""
    present = [old for old in columns if old in batch.schema.names]
    if not present:
        return batch
    targets = {columns[old] for old in present}
    kept = [i for i, name in enumerate(batch.schema.names) if name in present or name not in targets]
    return batch.select(kept).rename_columns([columns.get(batch.schema.names[i], batch.schema.names[i])
                                              if batch.schema.names[i] in present else batch.schema.names[i]
                                              for i in kept])


def locations(spec: DatasetSpec, rows: list[int]) -> dict[int, str]:
    """Row indices as the record readers name them (path:line, item N, row N), read only for errors."""
    wanted, found = set(rows), {}
    for index, (location, _) in enumerate(entries(spec, where_of(spec))):
        if index in wanted:
            found[index] = location
            if len(found) == len(wanted):
                break
    return found


# ---------------------------------------------------------------------------------------------
# What stages get

def workers(hardware: Optional[dict], rows: int) -> Optional[int]:
    """`map` processes: hardware.dataset_num_proc, or the machine's cores (at most 8) for large sets."""
    configured = (hardware or {}).get("dataset_num_proc")
    if configured:
        return int(configured)
    if rows < PARALLEL_FROM_ROWS:
        return None
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def cache_dir() -> str:
    """datasets' cache: $HF_DATASETS_CACHE where a user set it, else under tunechain's cache."""
    return os.environ.get("HF_DATASETS_CACHE") or str(paths.cache_root() / "datasets")


def raw_dataset(spec: DatasetSpec):
    """The source rows as a memory-mapped datasets.Dataset (hub or local), limited and renamed."""
    import datasets

    datasets.disable_progress_bars()
    where = where_of(spec)
    if is_hub(spec.path):
        try:
            rows = datasets.load_dataset(spec.path, name=spec.subset, split=spec.split, revision=spec.revision,
                                         cache_dir=cache_dir())
        except Exception as e:  # offline, gated, unknown id or split...: one actionable line for all
            raise hub_error(where, e) from e
    else:
        path = existing_file(spec.path)
        builder = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}[path.suffix.lower()]
        # CSV cells stay strings, empty ones empty, as the record reader (csv.DictReader) gives them
        options = {"dtype": str, "keep_default_na": False} if builder == "csv" else {}
        try:
            rows = datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=cache_dir(), **options)
        except Exception as e:  # mixed types, malformed lines: the record readers take over
            raise NotArrow(str(e)) from None
        if _has_feature(rows.features, "Json"):  # datasets' Json columns decode "6" as 6: read the records instead
            raise NotArrow("a column whose type changes between records")
    if spec.limit is not None and spec.limit < len(rows):
        rows = rows.select(range(spec.limit))
    for old, new in spec.columns.items():
        if old in rows.column_names:
            if new in rows.column_names:
                rows = rows.remove_columns(new)
            rows = rows.rename_column(old, new)
    return rows


def hub_location(spec: DatasetSpec) -> Callable[[list[int]], dict[int, str]]:
    """Hub rows are named split:index (the index that dataset[index] takes)."""
    where = where_of(spec)
    return lambda rows: {row: f"{where} {spec.split}:{row}" for row in rows}


def prepared(spec: DatasetSpec, purpose: str, transform: Optional[Callable[[dict], dict]] = None,
             hardware: Optional[dict] = None, desc: str = ""):
    """The data set in the stage's form as a datasets.Dataset: each canonical record through `transform`
    (default: the record's chat columns as role/content messages, other columns as they are). A hub split is
    checked in full first (the plan saw a sample), so a bad row still stops the stage before training."""
    with _main_process_first():  # ranks of one job: rank 0 fills datasets' cache, the others then read it
        return _prepared(spec, purpose, transform, hardware, desc)


def _main_process_first():
    from contextlib import nullcontext

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        return PartialState().main_process_first()
    return nullcontext()


def _prepared(spec, purpose, transform, hardware, desc):
    import datasets

    try:
        rows = raw_dataset(spec)
    except NotArrow:  # a file Arrow cannot read as one table: records one by one, written to Arrow by datasets
        return datasets.Dataset.from_generator(_records, gen_kwargs={"spec": spec, "purpose": purpose,
                                                                     "transform": transform},
                                               cache_dir=cache_dir())
    if is_hub(spec.path):
        fmt = check_batches(_table_batches(rows), spec, purpose, hub_location(spec)).format
    else:  # the plan checked it
        fmt = spec.format if spec.format != "auto" else _detected(rows, spec)
    parts = _with_parts(rows.data.schema)
    if _has_feature(rows.features, "Image"):  # rows as Arrow: images stay {"bytes", "path"}, never decoded
        rows = rows.with_format("arrow")
    converted = rows.map(_convert_rows, batched=True, batch_size=MAP_BATCH, num_proc=workers(hardware, len(rows)),
                         fn_kwargs={"spec": spec, "fmt": fmt, "purpose": purpose, "transform": transform,
                                    "parts": parts},
                         remove_columns=rows.column_names, desc=desc or f"{purpose} records")
    return converted.with_format(None)


def _has_feature(feature, kind: str) -> bool:
    """A datasets feature of type `kind` anywhere: Json (what datasets makes of a key whose type changes
    between records), Image (decoded to PIL unless the rows are read as Arrow)."""
    if type(feature).__name__ == kind:
        return True
    if isinstance(feature, dict):
        return any(_has_feature(f, kind) for f in feature.values())
    if isinstance(feature, (list, tuple)):
        return any(_has_feature(f, kind) for f in feature)
    inner = getattr(feature, "feature", None)
    return inner is not None and _has_feature(inner, kind)


def _with_parts(schema: "pa.Schema") -> bool:
    """Whether a source's chats may carry content parts: an image column, or messages whose content (or
    ShareGPT value) is a list. From the schema, so a text set does no work and every batch of a set with
    parts gets them in every message (one Arrow type for the whole set)."""
    import pyarrow as pa

    if any(name in schema.names for name in IMAGE_COLUMNS):
        return True
    chats = [f.type.value_type for f in schema if pa.types.is_list(f.type) or pa.types.is_large_list(f.type)]
    return any(pa.types.is_list(item.field(name).type) or pa.types.is_large_list(item.field(name).type)
               for item in chats if pa.types.is_struct(item)
               for name in ("content", "value") if item.get_field_index(name) >= 0)


def _table_batches(rows) -> Iterator["pa.RecordBatch"]:
    """A Dataset's rows (after select/limit) as record batches."""
    for table in rows.with_format("arrow").iter(batch_size=65536):
        yield from table.combine_chunks().to_batches()


def _detected(rows, spec) -> str:
    return detect(as_record(rows[0], {}), where_of(spec))


def _records(spec, purpose, transform):
    """The record readers' canonical records, each with every key any record has (an Arrow table has one
    set of columns); read twice, never held."""
    if transform:
        yield from map(transform, canonical(spec, purpose))
        return
    keys, parts = {}, False
    for record in canonical(spec, purpose):
        keys.update(dict.fromkeys(record))
        parts = parts or has_parts(record)
    for record in canonical(spec, purpose):
        yield arrow_form(record, list(keys), parts)


def _convert_rows(batch, spec: DatasetSpec, fmt: str, purpose: str, transform, parts: bool) -> dict:
    if hasattr(batch, "to_pydict"):  # a set with images, read as Arrow
        batch = batch.to_pydict()
    convert = record_converter(spec, fmt, purpose, "", verify=False)  # the plan checked every image
    names = list(batch)
    out = []
    for values in zip(*batch.values()):
        record = convert(as_record(dict(zip(names, values)), {}))
        out.append(transform(record) if transform else arrow_form(record, names, parts))
    return {key: [row.get(key) for row in out] for key in dict.fromkeys(k for row in out for k in row)}


def arrow_form(record: dict, columns: list[str] = (), parts: bool = False) -> dict:
    """A canonical record with a fixed set of columns: every source column (None where this record has none)
    and the chat columns as role/content messages, so that every batch has one Arrow type. With `parts` (a
    set whose chats have them), every content is a list of {type, text, image} parts, unused fields None
    (pipeline.data.images.plain_messages drops them again)."""
    row = {name: record.get(name) for name in columns if name not in IMAGE_COLUMNS}
    row.update(record)
    for key in CHAT_KEYS:
        if isinstance(row.get(key), list):
            row[key] = [{"role": m["role"], "content": _full_parts(m["content"]) if parts else m["content"]}
                        for m in row[key]]
    return row


def _full_parts(content) -> list[dict]:
    return [{"type": p["type"], "text": p.get("text"), "image": p.get("image")} for p in as_parts(content)]
