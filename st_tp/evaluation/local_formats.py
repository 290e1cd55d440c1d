"""Readers for local mteb data: tab-separated tables and JSON lines, checked line by line, so a bad file ends in
one line that names the file, the line and the format expected (the formats: docs/evaluation.md)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from st_tp.data import check_utf8, kept_rows

# What a JSON value must be, by the name a key's rule has in `read_jsonl`.
JSON_KINDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "text": ("a string", lambda v: isinstance(v, str)),
    "texts": ("a list of strings", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)),
    "numbers": ("a list of numbers", lambda v: isinstance(v, list)
                and all(isinstance(x, int | float) and not isinstance(x, bool) for x in v)),
}


def table_format(columns: Sequence[str]) -> str:
    return "a TSV with the header line '" + "<TAB>".join(columns) + "'"


def jsonl_format(keys: Mapping[str, str]) -> str:
    return "one JSON object a line with " + ", ".join(f"{key} ({JSON_KINDS[kind][0]})" for key, kind in keys.items())


def _slice(rows: list, limit: int | None, sample: int | None, seed: int) -> list:
    return [rows[i] for i in kept_rows(len(rows), limit, sample, seed)]


def _existing(path: Path, expected: str) -> None:
    if not path.is_file():
        raise ValueError(f"{path}: no such file; expected {expected}.")
    check_utf8(path)  # a file in another encoding ends in one line naming the line and the fix


def read_table(path: str | Path, columns: Sequence[str], *, filled: Sequence[str] = ("label",),
               numeric: Sequence[str] = (), choices: Mapping[str, Sequence[str]] | None = None,
               limit: int | None = None, sample: int | None = None, seed: int = 0) -> list[dict[str, str]]:
    """The rows of a TSV whose header line is `columns`, as dicts; quotes are text (no quoting, as in
    ../shared/data). Every line is checked, whatever `limit`: its number of fields, a non-empty value in each
    `filled` column, a number in each `numeric` column, one of its `choices` in a column. Blank lines are skipped.
    `limit` keeps the first N rows; `sample` keeps N rows drawn at random (seeded), in file order."""
    path, expected = Path(path), table_format(columns)
    _existing(path, expected)
    rows = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        header = f.readline().rstrip("\r\n").split("\t")
        if header != list(columns):
            raise ValueError(f"{path} line 1: header '{'<TAB>'.join(header)}'; expected {expected}.")
        for number, line in enumerate(f, start=2):
            line = line.rstrip("\r\n")
            if not line:
                continue
            fields = line.split("\t")
            if len(fields) != len(columns):
                raise ValueError(f"{path} line {number}: {len(fields)} tab-separated fields, not {len(columns)}; "
                                 f"expected {expected}.")
            row = dict(zip(columns, fields, strict=True))
            for column in filled:
                if not row[column].strip():
                    raise ValueError(f"{path} line {number}: empty {column}; expected {expected}, every {column} filled.")
            for column in numeric:
                try:
                    float(row[column])
                except ValueError:
                    raise ValueError(f"{path} line {number}: {column} {row[column]!r} is not a number; expected "
                                     f"{expected}.") from None
            for column, allowed in (choices or {}).items():
                if row[column] not in allowed:
                    raise ValueError(f"{path} line {number}: {column} {row[column]!r} is not one of "
                                     f"{', '.join(allowed)}; expected {expected}.")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no rows after the header line; expected {expected}.")
    return _slice(rows, limit, sample, seed)


def read_jsonl(path: str | Path, keys: Mapping[str, str], *, check: Callable[[dict], str | None] | None = None,
               limit: int | None = None) -> list[dict[str, Any]]:
    """The objects of a JSON-lines file, each with every key of `keys` holding a value of its kind ('text',
    'texts' or 'numbers', see JSON_KINDS); other keys are kept and not checked. `check` may name one more problem
    of an object (a sentence, or None). Every line is checked, whatever `limit` (the first N objects kept); blank
    lines are skipped."""
    path, expected = Path(path), jsonl_format(keys)
    _existing(path, expected)
    rows = []
    for number, row in _objects(path, expected):
        for key, kind in keys.items():
            if key not in row:
                raise ValueError(f"{path} line {number}: no key '{key}'; expected {expected}.")
            what, fits = JSON_KINDS[kind]
            if not fits(row[key]):
                raise ValueError(f"{path} line {number}: '{key}' is not {what}; expected {expected}.")
        problem = check(row) if check else None
        if problem:
            raise ValueError(f"{path} line {number}: {problem}; expected {expected}.")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no rows; expected {expected}.")
    return _slice(rows, limit, None, 0)


def _objects(path: Path, expected: str):
    """(line number, object) for every non-blank line of a JSON-lines file; a line that is not a JSON object
    raises the one-line error."""
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} line {number}: not JSON ({error.msg}, column {error.colno}); expected "
                                 f"{expected}.") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path} line {number}: a JSON {type(row).__name__}, not an object; expected {expected}.")
            yield number, row


def first_keys(path: str | Path, expected: str) -> set[str]:
    """The keys of the first object of a JSON-lines file (what kind of data it holds); `expected` names the
    formats it may be in, for the error of a first line that is not a JSON object."""
    path = Path(path)
    _existing(path, expected)
    return set(next((row for _, row in _objects(path, expected)), {}))
