"""How data problems are reported: DataError for a data set (each line `path:line: reason`), Invalid for
one record (collected, then reported with its location), capped lists, readable type names."""
from __future__ import annotations

from typing import Any

from pipeline.errors import TunechainError

MAX_LISTED_ERRORS = 5  # a file with thousands of bad lines needs its first few, not all


class DataError(TunechainError, ValueError):
    """A dataset cannot feed its stage; each message line names path:line and the reason."""


class Invalid(Exception):
    """One record's problem; collected per record and reported with its location."""


_KINDS = {str: "string", int: "number", float: "number", bool: "boolean", list: "list", dict: "object"}


def kind_name(value: Any) -> str:
    return "null" if value is None else _KINDS.get(type(value), type(value).__name__)



def summarise(errors: list[str]) -> str:
    shown = errors[:MAX_LISTED_ERRORS]
    if len(errors) > len(shown):
        shown.append(f"... and {len(errors) - len(shown)} more")
    return "\n".join(shown)


def collect(entries, parse, where: str) -> list:
    """Each (location, entry) through `parse(location, entry)`. An entry that is already a problem (a reader's
    Invalid), or one that `parse` rejects with Invalid or ValueError, is reported with its location; all of
    them together in one DataError, after the last entry. An empty source is an error too."""
    records, errors = [], []
    for location, item in entries:
        try:
            if isinstance(item, Exception):
                raise Invalid(str(item))
            records.append(parse(location, item))
        except DataError:
            raise
        except (Invalid, ValueError) as e:
            errors.append(f"{location}: {e}")
    if errors:
        raise DataError(summarise(errors))
    if not records:
        raise DataError(f"{where}: empty file (no records)")
    return records
