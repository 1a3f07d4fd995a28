"""Column-wise screens that let a million records be checked in seconds.

A screen looks at a whole Arrow batch at once and returns the rows that *might* be invalid for a
(format, purpose): it may flag a good row, never pass a bad one. Only the flagged rows go through
the record converters of pipeline/data/formats.py, which stay the one source of what is valid and
of every message; a clean batch costs no Python per record. A (format, purpose) without a screen,
or a column whose Arrow type a screen does not expect, flags every row, which is slower, not wrong.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.data.formats import ROLES
from pipeline.data.parts import IMAGE_COLUMNS

# Rows flagged per batch as a boolean numpy array (True: check this row in Python).
Screen = Callable[[pa.RecordBatch], np.ndarray]


def _all(batch: pa.RecordBatch) -> np.ndarray:
    return np.ones(batch.num_rows, dtype=bool)


def _mask(array) -> np.ndarray:
    """A boolean Arrow array as numpy, null counted as flagged."""
    return np.asarray(pc.fill_null(array, True).to_numpy(zero_copy_only=False), dtype=bool)


def _column(batch: pa.RecordBatch, name: str):
    index = batch.schema.get_field_index(name)
    return None if index < 0 else batch.column(index)


# Exactly the characters Python's str.isspace() accepts (str.strip() removes them; Arrow's own trim differs)
_PYTHON_SPACE = r"\t\n\x0b\x0c\r\x1c-\x20\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}"


def _blank(strings) -> np.ndarray:
    """Null, or nothing but whitespace (formats._string's 'is empty': `not value.strip()`)."""
    return _mask(pc.match_substring_regex(strings, f"^[{_PYTHON_SPACE}]*$"))


def _required_string(batch: pa.RecordBatch, name: str) -> np.ndarray:
    column = _column(batch, name)
    if column is None or not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
        return _all(batch)
    return _blank(column)


def _optional_string(batch: pa.RecordBatch, name: str) -> np.ndarray:
    column = _column(batch, name)
    if column is None or pa.types.is_null(column.type) or pa.types.is_string(column.type):
        return np.zeros(batch.num_rows, dtype=bool)
    return _all(batch)


def _is_message_list(column) -> bool:
    if not pa.types.is_list(column.type) and not pa.types.is_large_list(column.type):
        return False
    item = column.type.value_type
    if not pa.types.is_struct(item):
        return False
    names = {item.field(i).name: item.field(i).type for i in range(item.num_fields)}
    return (pa.types.is_string(names.get("role", pa.null())) and
            pa.types.is_string(names.get("content", pa.null())))


def _messages(column, need_user: bool, end_assistant: bool) -> np.ndarray:
    """formats._messages (+ _has_user, _ends_with_assistant) as column operations. Null content and
    empty user/assistant content are flagged, which also covers the tool-call turns that may carry none."""
    rows = len(column)
    if not _is_message_list(column):
        return np.ones(rows, dtype=bool)
    lengths = pc.list_value_length(column)
    flagged = _mask(pc.less_equal(lengths, 0))  # null or empty lists
    items = pc.list_flatten(column)
    parents = pc.list_parent_indices(column).to_numpy(zero_copy_only=False)
    roles, contents = pc.struct_field(items, "role"), pc.struct_field(items, "content")
    speaking = pc.is_in(roles, value_set=pa.array(["user", "assistant"]))
    bad = _mask(pc.invert(pc.is_in(roles, value_set=pa.array(ROLES)))) | _mask(pc.is_null(contents))
    bad |= _blank(contents) & _mask(pc.fill_null(speaking, False))
    bad_items = np.zeros(rows, dtype=bool)
    bad_items[parents[bad]] = True
    flagged |= bad_items
    if need_user:
        users = np.bincount(parents[_mask(pc.fill_null(pc.equal(roles, "user"), False))], minlength=rows)
        flagged |= users == 0
    if end_assistant:
        has, last_roles = _last(column, roles)
        ends_elsewhere = np.ones(rows, dtype=bool)
        ends_elsewhere[has] = _mask(pc.not_equal(last_roles, "assistant"))
        flagged |= ends_elsewhere
    return flagged


def _last(column, field):
    """(rows that have items, `field` of those rows' last items): `field` is one field of the flattened items."""
    has = _mask(pc.greater(pc.list_value_length(column), 0)) & ~_mask(pc.is_null(column))
    offsets = column.offsets.to_numpy()
    ends = offsets[1:] - 1 - offsets[0]  # a sliced batch's offsets start where the slice does
    return has, pc.take(field, pa.array(ends[has]))


def _text_or_messages(batch: pa.RecordBatch, name: str, need_user: bool, end_assistant: bool) -> np.ndarray:
    """formats._as_messages: a plain string is one message."""
    column = _column(batch, name)
    if column is None:
        return _all(batch)
    if pa.types.is_string(column.type):
        return _blank(column)
    return _messages(column, need_user, end_assistant)


def _sft_messages(batch):
    column = _column(batch, "messages")
    return _all(batch) if column is None else _messages(column, need_user=True, end_assistant=True)


def _sft_alpaca(batch):
    return (_required_string(batch, "instruction") | _required_string(batch, "output")
            | _optional_string(batch, "input") | _optional_string(batch, "system"))


def _preference(batch):
    if _column(batch, "prompt") is None:  # the implicit-prompt form: left to the converter
        return _all(batch)
    flagged = (_text_or_messages(batch, "prompt", need_user=True, end_assistant=False)
               | _text_or_messages(batch, "chosen", need_user=False, end_assistant=True)
               | _text_or_messages(batch, "rejected", need_user=False, end_assistant=True))
    chosen, rejected = _column(batch, "chosen"), _column(batch, "rejected")
    if pa.types.is_string(chosen.type) and pa.types.is_string(rejected.type):
        flagged |= _mask(pc.equal(chosen, rejected))  # "chosen and rejected are identical"
    else:
        flagged |= _same_messages(chosen, rejected)
    return flagged


def _same_messages(chosen, rejected) -> np.ndarray:
    """Rows whose two message lists might be identical: same length and same last content."""
    if not (_is_message_list(chosen) and _is_message_list(rejected)):
        return np.ones(len(chosen), dtype=bool)
    same = _mask(pc.equal(pc.list_value_length(chosen), pc.list_value_length(rejected)))
    has_chosen, chosen_last = _last(chosen, pc.struct_field(pc.list_flatten(chosen), "content"))
    has_rejected, rejected_last = _last(rejected, pc.struct_field(pc.list_flatten(rejected), "content"))
    both = has_chosen & has_rejected
    equal_last = np.ones(len(chosen), dtype=bool)  # rows without items are flagged by the message checks
    equal_last[both] = _mask(pc.equal(pc.take(chosen_last, pa.array(np.nonzero(both[has_chosen])[0])),
                                      pc.take(rejected_last, pa.array(np.nonzero(both[has_rejected])[0]))))
    return same & equal_last


def _prompt_prompt(batch):
    flagged = _text_or_messages(batch, "prompt", need_user=True, end_assistant=False)
    answer = _column(batch, "answer")
    if answer is not None and not (pa.types.is_null(answer.type) or pa.types.is_string(answer.type)
                                   or pa.types.is_integer(answer.type) or pa.types.is_floating(answer.type)):
        flagged |= True  # booleans, lists...: the converter words the problem
    return flagged


def _text(batch):
    return _required_string(batch, "text")


_SCREENS: dict[tuple[str, str], Screen] = {
    ("messages", "sft"): _sft_messages,
    ("alpaca", "sft"): _sft_alpaca,
    ("preference", "preference"): _preference,
    ("preference", "unpaired"): _preference,   # pairs a KTO stage splits in two
    ("prompt", "prompt"): _prompt_prompt,
    ("text", "text"): _text,
}


def screen_for(fmt: str, purpose: str) -> Optional[Screen]:
    """The screen of a (format, purpose), or None when every record goes through the converter. Rows with an
    image column always go through it: their images are checked there (content parts are lists, which the
    message screens flag already)."""
    screen = _SCREENS.get((fmt, purpose))
    return None if screen is None else lambda batch: screen(batch) | _with_images(batch)


def _with_images(batch: pa.RecordBatch) -> np.ndarray:
    flagged = np.zeros(batch.num_rows, dtype=bool)
    for name in IMAGE_COLUMNS:
        column = _column(batch, name)
        if column is not None:
            flagged |= ~_mask(pc.is_null(column))
    return flagged
