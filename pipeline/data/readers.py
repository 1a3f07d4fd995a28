"""Where records come from: local .jsonl/.json/.csv/.parquet files and hub datasets. Each reader
yields (location, raw entry or Invalid), so one bad line does not hide the rest."""
from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from pipeline import paths
from pipeline.data.problems import DataError, Invalid, kind_name

if TYPE_CHECKING:
    from pipeline.data.spec import DatasetSpec

EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")


def is_hub(path: str) -> bool:
    """A hub id is neither an existing path nor shaped like a file path (known extension,
    absolute or ./ relative, or more folders than a hub 'org/name' has)."""
    if paths.resolve(path).exists():
        return False
    file_like = (Path(path).suffix.lower() in EXTENSIONS or path.startswith(("/", ".", "~"))
                 or path.count("/") > 1)
    return not file_like


def display(path: Path) -> str:
    try:
        return str(path.relative_to(paths.PROJECT_ROOT))
    except ValueError:
        return str(path)


def where_of(spec: DatasetSpec) -> str:
    return f"dataset '{spec.path}'" if is_hub(spec.path) else display(paths.resolve(spec.path))


def folder_of(spec: DatasetSpec) -> Path | None:
    """Where a dataset's relative image paths start: its file's folder (a hub dataset has none)."""
    return None if is_hub(spec.path) else paths.resolve(spec.path).parent


def existing_file(path: str) -> Path:
    resolved = paths.resolve(path)
    if resolved.is_file():
        return resolved
    problem = "is a folder, not a file" if resolved.is_dir() else "file not found"
    raise DataError(f"{display(resolved)}: {problem} (tried {paths.tried(path)})")


def entries(spec: DatasetSpec, where: str) -> Iterator[tuple[str, Any]]:
    if is_hub(spec.path):
        return _read_hub(spec, where)
    path = existing_file(spec.path)
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{where}: unknown extension '{path.suffix}' (valid: {', '.join(EXTENSIONS)})")
    return reader(path, where)


def _json_problem(e: json.JSONDecodeError) -> str:
    return f"invalid JSON ({e.msg}: column {e.colno})"


def read_jsonl(path: Path, where: str) -> Iterator[tuple[str, Any]]:
    opened = gzip.open(path, "rb") if path.name.lower().endswith(".gz") else path.open("rb")
    with opened as lines:  # bytes: json.loads then handles a BOM and reports bad UTF-8 per line
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                yield f"{where}:{number}", json.loads(line)
            except json.JSONDecodeError as e:
                yield f"{where}:{number}", Invalid(_json_problem(e))
            except UnicodeDecodeError as e:
                yield f"{where}:{number}", Invalid(f"not valid UTF-8 ({e.reason} at byte {e.start})")


def read_json(path: Path, where: str) -> Iterator[tuple[str, Any]]:
    try:
        items = json.loads(path.read_bytes())
    except json.JSONDecodeError as e:
        hint = "; one object per line? name the file .jsonl" if e.msg == "Extra data" else ""
        raise DataError(f"{where}:{e.lineno}: {_json_problem(e)}{hint}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    if not isinstance(items, list):
        raise DataError(f"{where}: expected a JSON list of objects, got {kind_name(items)}")
    for number, item in enumerate(items, 1):
        yield f"{where}: item {number}", item


def read_csv(path: Path, where: str) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        rows = csv.DictReader(handle)
        try:
            for row in rows:
                location = f"{where}:{rows.line_num}"  # the header is line 1
                if None in row:  # DictReader files surplus cells under None
                    yield location, Invalid(f"more cells than the header's {len(rows.fieldnames or [])} columns")
                else:
                    yield location, row
        except csv.Error as e:
            raise DataError(f"{where}:{rows.line_num}: malformed CSV ({e})") from None
        except UnicodeDecodeError as e:
            raise DataError(f"{where}: not valid UTF-8 ({e.reason})") from None


def _read_parquet(path: Path, where: str) -> Iterator[tuple[str, Any]]:
    import pyarrow
    import pyarrow.parquet

    try:
        table = pyarrow.parquet.ParquetFile(path)
    except (pyarrow.ArrowException, OSError) as e:
        raise DataError(f"{where}: not a readable parquet file ({e})") from None
    rows = (row for batch in table.iter_batches(batch_size=1024) for row in batch.to_pylist())
    for number, row in enumerate(rows, 1):
        yield f"{where}: row {number}", row


def _read_hub(spec: DatasetSpec, where: str) -> Iterator[tuple[str, Any]]:
    rows, _ = hub_stream(spec, where)
    return rows


def hub_stream(spec: DatasetSpec, where: str) -> tuple[Iterator[tuple[str, Any]], int | None]:
    """A hub split streamed row by row (nothing downloaded ahead), each named `split:index`, and its size
    where the dataset's card gives it."""
    import datasets  # slow to import; only hub ids need it

    try:
        rows = datasets.load_dataset(spec.path, name=spec.subset, split=spec.split, revision=spec.revision,
                                     streaming=True).decode(False)  # images as {"bytes", "path"}, not decoded
        splits = getattr(getattr(rows, "info", None), "splits", None) or {}
        total = splits[spec.split].num_examples if spec.split in splits else None
    except Exception as e:  # offline, gated, unknown id or split...: one actionable line for all
        raise hub_error(where, e) from e
    return ((f"{where} {spec.split}:{index}", row) for index, row in enumerate(rows)), total or None


def hub_error(where: str, error: Exception) -> DataError:
    return DataError(f"{where}: cannot be loaded from the hub ({_short(error)}); use a local file or check the id/network")


def _short(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    reason = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return reason if len(reason) <= 160 else reason[:157] + "..."


_READERS = {".jsonl": read_jsonl, ".json": read_json, ".csv": read_csv, ".parquet": _read_parquet}
