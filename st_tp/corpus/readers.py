"""Reading the input in Arrow tables of at most READ_ROWS rows, in input order, only the wanted columns.

Parquet and CSV/TSV go through `pyarrow.dataset` (its fragments and `to_batches(columns=...)`), JSONL through
`pyarrow.json` in pieces. What is st_tp's own is the fallback: a JSONL piece pyarrow rejects is parsed again line
by line, so an error can name its line and a text that is not a string becomes a bad row like any other."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .inputs import CorpusInput, json_line

if TYPE_CHECKING:
    import pyarrow as pa

READ_ROWS = 8192  # rows per Arrow table read from the input: memory is bounded by this and the shard size
BAD = "_bad"  # reader- or actor-side reason a row cannot be embedded (null when fine)


def iter_input(source: CorpusInput, columns: list[str], first_file: int = 0,
               skip_rows: int = 0) -> Iterator[tuple[int, pa.Table]]:
    """(file index, table) in input order from file `first_file` on, whose first `skip_rows` rows are left out
    (a resume inside a file); only `columns` (+ `_bad`)."""
    reader = {"txt": _read_txt, "jsonl": _read_jsonl, "csv": _read_csv, "tsv": _read_csv, "parquet": _read_parquet}
    for index in range(first_file, len(source.files)):
        for table in reader[source.format](source.files[index], columns, source.format):
            if skip_rows:
                dropped = min(skip_rows, table.num_rows)
                table, skip_rows = table.slice(dropped), skip_rows - dropped
                if not table.num_rows:
                    continue
            yield index, table


def _read_txt(path: Path, columns: list[str], fmt: str) -> Iterator[pa.Table]:
    """Lines as `str.splitlines` cuts them (the same rows as Ray's read_text and the .npy path), BOM dropped."""
    import pyarrow as pa

    lines: list[str] = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        for raw in f:  # newline="": split on \n, \r, \r\n only, untranslated; splitlines cuts the rest (\v, \u2028)
            lines.extend(raw.splitlines())
            if len(lines) >= READ_ROWS:
                yield pa.table({"text": pa.array(lines, pa.string())})
                lines = []
    if lines:
        yield pa.table({"text": pa.array(lines, pa.string())})


def _read_parquet(path: Path, columns: list[str], fmt: str) -> Iterator[pa.Table]:
    import pyarrow as pa
    import pyarrow.dataset as pds

    for batch in pds.dataset(path, format="parquet").to_batches(columns=columns, batch_size=READ_ROWS):
        if batch.num_rows:
            yield pa.Table.from_batches([batch])


def csv_options(fmt: str, columns: list[str], text_column: str) -> dict:
    """pyarrow.csv options both engines use: TSV is unquoted (STS sentences hold unbalanced quotes); a CSV field
    may hold a quoted newline (so a row is never cut where a read block ends); the text is always a string (never
    inferred as a number), an empty field is the empty text (not null)."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    parse = (pcsv.ParseOptions(delimiter="\t", quote_char=False) if fmt == "tsv"
             else pcsv.ParseOptions(newlines_in_values=True))
    convert = pcsv.ConvertOptions(column_types={text_column: pa.string()}, include_columns=columns)
    return {"parse_options": parse, "convert_options": convert}


def _read_csv(path: Path, columns: list[str], fmt: str) -> Iterator[pa.Table]:
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.dataset as pds

    options = csv_options(fmt, columns, columns[0])
    convert = pcsv.ConvertOptions(column_types={columns[0]: pa.string()})  # the dataset picks the columns itself
    file_format = pds.CsvFileFormat(parse_options=options["parse_options"], convert_options=convert,
                                    read_options=pcsv.ReadOptions(block_size=1 << 22))
    try:
        for batch in pds.dataset(path, format=file_format).to_batches(columns=columns, batch_size=READ_ROWS):
            if batch.num_rows:
                yield pa.Table.from_batches([batch])
    except pa.ArrowInvalid as error:
        raise ValueError(f"{path}: {error}. Check that every row has the header's number of fields"
                         f"{' (a .tsv has no quoting)' if fmt == 'tsv' else ''}.") from None


def _read_jsonl(path: Path, columns: list[str], fmt: str) -> Iterator[pa.Table]:
    """pyarrow's JSON parser on pieces of READ_ROWS lines (fast; the same types as Ray's read_json). A piece it
    rejects (a text that is a number in one row and a string in another, a line that is not JSON) is parsed again
    line by line, so the error can name the line, and a non-string text becomes a bad row like any other."""
    import io

    import pyarrow as pa
    import pyarrow.json as pj

    with open(path, "rb") as f:
        lineno = 0
        while True:
            piece = [line for _, line in zip(range(READ_ROWS), f, strict=False)]
            if not piece:
                return
            if lineno == 0 and piece[0].startswith(b"\xef\xbb\xbf"):
                piece[0] = piece[0][3:]
            try:
                table = pj.read_json(io.BytesIO(b"".join(line if line.endswith(b"\n") else line + b"\n" for line in piece)))
                if not set(columns) <= set(table.column_names):
                    raise pa.ArrowInvalid("missing columns")
                if any(pa.types.is_floating(table[c].type) for c in columns[1:]):  # integers beside decimals: pyarrow
                    raise pa.ArrowInvalid("a decimal column")  # rounds 2**53 + 1 silently; json.loads keeps it exact
                yield table.select(columns)
            except pa.ArrowInvalid:
                yield _jsonl_by_line(path, piece, lineno, columns)
            lineno += len(piece)


def _jsonl_by_line(path: Path, lines: list[bytes], first_line: int, columns: list[str]) -> pa.Table:
    """The slow path of `_read_jsonl`: json.loads per line; a text that is not a string is set aside as `_bad`."""
    import pyarrow as pa

    text_column = columns[0]
    rows, bad = [], []
    for offset, line in enumerate(lines):
        if not line.strip():
            continue
        row = json_line(path, first_line + offset + 1, line)
        if not isinstance(row, dict):
            raise ValueError(f"{path} line {first_line + offset + 1}: a JSON {type(row).__name__}, not an object; a "
                             ".jsonl file holds one JSON object per line.")
        text = row.get(text_column)
        reason = None if text is None or isinstance(text, str) else f"is not a string ({type(text).__name__} {text!r:.40})"
        rows.append({c: (None if c == text_column and reason else row.get(c)) for c in columns})
        bad.append(reason)
    try:
        table = pa.Table.from_pylist(rows) if rows else pa.table({c: pa.array([], pa.null()) for c in columns})
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise _mixed_column_error(path, lines, first_line, rows, error) from None
    table = table.set_column(table.schema.get_field_index(text_column), text_column,
                             table[text_column].cast(pa.string()))
    return table.append_column(BAD, pa.array(bad, pa.string()))


def _mixed_column_error(path: Path, lines: list[bytes], first_line: int, rows: list[dict], error: Exception) -> ValueError:
    """A column Arrow cannot give one type (an integer no double holds beside decimals, a number beside a text)."""
    kinds: dict[str, set] = {}
    for row in rows:
        for column, value in row.items():
            if value is not None:
                kinds.setdefault(column, set()).add(type(value).__name__)
    column = next((c for c, k in kinds.items() if len(k) > 1), next(iter(kinds), "?"))
    return ValueError(f"{path} lines {first_line + 1}-{first_line + len(lines)}: column {column!r} holds "
                      f"{' and '.join(sorted(kinds.get(column, {'?'})))} values ({' '.join(str(error).split())}); give "
                      "it one type (e.g. ids as strings).")
