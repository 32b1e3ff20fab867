"""A dataset file's lines as text, and one JSON line as a record: the checks a line gets before
it becomes a record, each failure a RecordError naming the line.

Lines are split on `\\n` only (a JSON string may hold U+2028 or a form feed; a CSV field its
`\\r\\n`), read with `readline(limit)` so that a line past the limit is refused without ever
being held whole.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from typing import Any, BinaryIO

UTF8_BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


class RecordError(ValueError):
    """A malformed dataset; `line` is the 1-based line number in the file, when known."""

    def __init__(self, message: str, *, line: int | None = None) -> None:
        super().__init__(f"line {line}: {message}" if line is not None else message)
        self.line = line


def text_lines(stream: BinaryIO, *, max_line_bytes: int | None) -> Iterator[tuple[int, str]]:
    """(line number, the line decoded, with its `\\n`), refusing a line longer than the limit,
    NUL bytes and bytes that are not UTF-8. A UTF-8 byte-order mark at the start is dropped."""
    size = -1 if max_line_bytes is None else max_line_bytes + 1
    number = 0
    while raw := stream.readline(size):
        number += 1
        if number == 1:
            if raw.startswith(UTF16_BOMS):
                raise RecordError("the file is UTF-16 text (it starts with a UTF-16 byte-order "
                                  "mark): save it as UTF-8", line=1)
            raw = raw.removeprefix(UTF8_BOM)
        if max_line_bytes is not None and len(raw) > max_line_bytes:
            raise RecordError(f"the line is longer than {max_line_bytes} bytes, the limit per "
                              "line (DISTILL_MAX_RECORD_BYTES)", line=number)
        nul = raw.find(b"\0")
        if nul >= 0:
            raise RecordError(f"a NUL byte at byte {nul + 1} of the line: the file looks binary "
                              "or UTF-16; upload UTF-8 text", line=number)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RecordError(f"bytes that are not UTF-8 text at byte {exc.start + 1} of the "
                              f"line ({raw[exc.start:exc.start + 4]!r}): save the file as UTF-8",
                              line=number) from None
        yield number, text


class _Refused(Exception):
    """Raised from the decoder's hooks: JSON that parses but is no dataset value."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Refused(f"the field {key!r} appears twice in the object")
            seen.add(key)
    return value


def _no_constant(name: str) -> Any:
    raise _Refused(f"{name} is not JSON: numbers must be finite")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"the number {text[:40]} is too large to be finite")
    return value


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_no_constant,
                            parse_float=_finite_float)


def _decode(text: str, line: int) -> Any:
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise RecordError(f"invalid JSON ({exc.msg} at column {exc.colno})", line=line) from None
    except _Refused as exc:
        raise RecordError(f"invalid value ({exc})", line=line) from None
    except RecursionError:
        raise RecordError("invalid value (JSON nested too deeply)", line=line) from None
    except ValueError as exc:  # an integer past Python's digit limit; nothing else raises it
        if "digits" in str(exc):
            raise RecordError(f"invalid value (an integer with more than "
                              f"{sys.get_int_max_str_digits()} digits)", line=line) from None
        raise RecordError(f"invalid JSON ({exc})", line=line) from None


def _unpaired_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


_SCALARS = (str, int, float)


def _flat_object(item: Any) -> bool:
    return isinstance(item, dict) and all(v is None or isinstance(v, _SCALARS)
                                          for v in item.values())


def _strings(item: Any) -> list[Any]:
    """The strings a field's value holds (keys of its objects too), to check as Unicode."""
    if isinstance(item, list):
        return [s for x in item for s in _strings(x)]
    if isinstance(item, dict):
        return [*item.keys(), *item.values()]
    return [item]


def json_record(text: str, *, line: int) -> dict[str, Any]:
    """One JSONL line as a record: an object whose values are strings, numbers, booleans, null,
    or lists of strings, numbers and flat objects (a chat record's `messages`: objects whose
    values are strings, numbers, booleans or null), and whose text is valid Unicode."""
    value = _decode(text, line)
    if not isinstance(value, dict):
        raise RecordError("each line must be a JSON object", line=line)
    # A `\u` escape is the only way an unpaired surrogate gets in (the bytes were valid UTF-8).
    escaped = "\\u" in text
    for key, item in value.items():
        if isinstance(item, dict):
            raise RecordError(f"field {key!r} must be a string or number (or a list of them, "
                              "or of chat turns)", line=line)
        if isinstance(item, list):
            for index, x in enumerate(item):
                if isinstance(x, dict) and not _flat_object(x):
                    inner = next(k for k, v in x.items() if isinstance(v, (list, dict)))
                    raise RecordError(f"field {key!r}: {inner!r} of item {index} must be a "
                                      "string or number", line=line)
                if not isinstance(x, (*_SCALARS, dict)):
                    raise RecordError(f"field {key!r}: item {index} must be a string, a number "
                                      'or an object (a chat turn: {"role": …, "content": …})',
                                      line=line)
        if escaped and any(isinstance(s, str) and _unpaired_surrogate(s)
                           for s in (key, *_strings(item))):
            raise RecordError(f"field {key!r} holds an unpaired surrogate (a \\ud800-\\udfff "
                              "escape on its own), which is not Unicode text", line=line)
    return value
