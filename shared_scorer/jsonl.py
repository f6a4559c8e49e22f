"""Reading JSON Lines files: one decoded value per non-blank line, every error naming ``file:line``.

Shared by the recorded-answer datasets (:mod:`shared_scorer.fitting.data`), ``frugal collect``'s queries and
the answer cache's labelled pairs (:mod:`shared_scorer.cache.pairs`), so the cache reads its pairs without
loading any fitting code.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shared_scorer.errors import DataError


def iter_json_lines(path: str | Path, what: str = "dataset") -> Iterator[tuple[str, Any]]:
    """Yield ``(file:line, decoded JSON)`` for each non-blank line; a missing file or a line that is not
    JSON is a :class:`DataError` naming the file and line (``what`` names the kind of file).

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "rows.jsonl"
    >>> _ = path.write_text('{"a": 1}\\n\\n[2]\\n{"b": }\\n')
    >>> rows = iter_json_lines(path, "rows")
    >>> [(where.rsplit(":", 1)[1], row) for where, row in (next(rows), next(rows))]
    [('1', {'a': 1}), ('3', [2])]
    >>> next(rows)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    shared_scorer.errors.DataError: .../rows.jsonl:4: not valid JSON (Expecting value at column 7)
    >>> next(iter_json_lines(path.with_name("gone.jsonl"), "rows"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    shared_scorer.errors.DataError: .../gone.jsonl: no such rows file
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such {what} file")
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path}:{number}"
            line = decode_line(raw, where)
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None


def decode_line(raw: bytes, where: str) -> str:
    """One line of a JSON Lines file as text; bytes that are not UTF-8 are a :class:`DataError` naming
    ``where`` (``file:line``), the byte and its column.

    >>> decode_line(b"caf\\xc3\\xa9", "x.jsonl:1")
    'café'
    >>> decode_line(b"caf\\xe9", "x.jsonl:2")
    Traceback (most recent call last):
    ...
    shared_scorer.errors.DataError: x.jsonl:2: not UTF-8 text (byte 0xe9 at column 4)
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{where}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})") from None
