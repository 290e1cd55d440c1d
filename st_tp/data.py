"""Reading text inputs: the evaluation TSV files (../shared/data/SOURCES.md: a header line, tab-separated, no
quoting), and the UTF-8 check every text file st_tp reads goes through first (a corpus input, a sweep's dev file,
the evaluation's local data), so a file in another encoding ends in one line that names the file, the line and the fix."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

UTF8_BOM = b"\xef\xbb\xbf"
_CHUNK = 1 << 20


def _utf16_order(head: bytes) -> str | None:
    """'LE'/'BE' when `head` looks like UTF-16: a byte-order mark, or NUL bytes on every other position (ASCII text
    in UTF-16 without a BOM, which would even decode as UTF-8, NULs and all)."""
    if head.startswith(b"\xff\xfe"):
        return "LE"
    if head.startswith(b"\xfe\xff"):
        return "BE"
    even, odd = head[0::2], head[1::2]
    if len(head) >= 8:
        if odd.count(0) >= 0.3 * len(odd) and even.count(0) < 0.05 * len(even):
            return "LE"
        if even.count(0) >= 0.3 * len(even) and odd.count(0) < 0.05 * len(odd):
            return "BE"
    return None


def _converted_name(path: Path) -> str:
    return str(path.with_name(f"{path.stem}.utf8{path.suffix}"))


def _not_utf8(path: Path, line: int, head: bytes, error: UnicodeDecodeError | None) -> ValueError:
    """The one-line error for a file that is not UTF-8: which file and line, what it probably is, how to convert."""
    where = f"{path} line {line}: not UTF-8"
    if error is not None:
        where += f" ({error.reason} 0x{error.object[error.start]:02x})"
    order = _utf16_order(head)
    if order is not None:
        has_bom = head[:2] in (b"\xff\xfe", b"\xfe\xff")
        why = "a byte-order mark" if has_bom else "NUL bytes between the characters"
        source = "UTF-16" if has_bom else f"UTF-16{order}"  # without a BOM iconv must be told the byte order
        return ValueError(f"{where}; it looks like UTF-16 ({why}). st_tp reads UTF-8 text only: convert it with: "
                          f"iconv -f {source} -t UTF-8 {path} > {_converted_name(path)}")
    if b"\0" in head:
        return ValueError(f"{where}; it contains NUL bytes, so it is probably a binary file, not text. st_tp reads "
                          "UTF-8 text files only (.txt, .jsonl, .csv, .tsv; Parquet for binary columnar data).")
    return ValueError(f"{where}. st_tp reads UTF-8 text only; such bytes usually mean Latin-1 (ISO-8859-1) or "
                      f"Windows-1252: convert it with: iconv -f LATIN1 -t UTF-8 {path} > {_converted_name(path)}")


def check_utf8(path: str | Path) -> int:
    """Read `path` once, in 1 MiB pieces cut at line ends, and raise the one-line error of `_not_utf8` if it is
    not UTF-8 (a UTF-8 byte-order mark is fine). Returns the number of lines, which is also a cheap row estimate
    for progress bars. UTF-8 never uses the byte 0x0A inside a character, so a piece cut after a newline decodes
    on its own, and the line of an error is exact."""
    path = Path(path)
    lines, carry = 0, b""
    with open(path, "rb") as f:
        head = f.read(_CHUNK)
        if _utf16_order(head[: 1 << 16]) is not None:  # ASCII in UTF-16 without a BOM even decodes: refuse it first
            raise _not_utf8(path, 1, head[: 1 << 16], None)
        chunk = head.removeprefix(UTF8_BOM)
        while True:
            data = carry + chunk
            cut = data.rfind(b"\n") + 1 if chunk else len(data)
            piece, carry = data[:cut], data[cut:]
            try:
                piece.decode("utf-8")
            except UnicodeDecodeError as error:
                raise _not_utf8(path, lines + piece.count(b"\n", 0, error.start) + 1, head[: 1 << 16], error) from None
            lines += piece.count(b"\n")
            if not chunk:
                return lines + (0 if not piece or piece.endswith(b"\n") else 1)
            chunk = f.read(_CHUNK)


def read_tsv_header(path: str | Path) -> list[str]:
    """The column names of a TSV (its first line), after the UTF-8 check."""
    check_utf8(path)
    with open(path, encoding="utf-8-sig", newline="") as f:
        return f.readline().rstrip("\r\n").split("\t")


def kept_rows(count: int, limit: int | None = None, sample: int | None = None, seed: int = 0) -> np.ndarray:
    """Which of `count` rows a `sample` / `limit` keeps, in file order: `sample` rows drawn at random (seeded), then
    the first `limit` of those. Every reader of st_tp takes its rows this way, so a sample names the same rows
    everywhere (STS files, the mteb task folders, SentEval's files)."""
    rows = np.arange(count)
    if sample is not None and sample < count:
        rows = np.sort(np.random.default_rng(seed).choice(count, size=sample, replace=False))
    return rows[:limit] if limit else rows


def read_tsv(path: str | Path, limit: int | None = None, sample: int | None = None, seed: int = 0) -> list[dict[str, str]]:
    """Rows as dicts keyed by the header; quotes are text (STS sentences contain unbalanced ones).

    `limit` keeps the first N rows. `sample` keeps N rows drawn at random (seeded), in file order: the STS files
    are grouped by source, so their first rows are one genre only."""
    if not Path(path).is_file():
        raise ValueError(f"No such data file: {path}. Give a TSV with a header line (see ../shared/data/SOURCES.md).")
    check_utf8(path)
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [rows[i] for i in kept_rows(len(rows), limit, sample, seed)]


def read_pairs(
    path: str | Path, limit: int | None = None, sample: int | None = None, seed: int = 0
) -> tuple[list[str], list[str], np.ndarray]:
    """An STS-like TSV (score, sentence1, sentence2): the two sides and the gold scores."""
    rows = read_tsv(path, limit, sample, seed)
    if not rows or not {"score", "sentence1", "sentence2"} <= set(rows[0]):
        raise ValueError(f"{path} must be a TSV with columns score, sentence1, sentence2.")
    return [r["sentence1"] for r in rows], [r["sentence2"] for r in rows], np.array([float(r["score"]) for r in rows])
