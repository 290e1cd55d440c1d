"""Rows that cannot be embedded, and the table written for a shard: one wording for both engines."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .inputs import CorpusInput
from .options import CorpusOptions
from .readers import BAD

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

WRONG_TYPE = "is of type"  # a reason about the whole column (its Arrow type), not about one row's value


def bad_reasons(table: pa.Table, text_column: str, id_column: str | None = None) -> list[str | None]:
    """Why each row cannot be embedded (None: fine): a null, non-string or empty (whitespace-only) text, a null id."""
    import pyarrow as pa
    import pyarrow.compute as pc

    text = table[text_column]
    if pa.types.is_string(text.type) or pa.types.is_large_string(text.type):
        empty = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(text), ""), False).to_pylist()
        reasons = ["is null" if null else "is empty" if e else None
                   for null, e in zip(text.is_null().to_pylist(), empty, strict=True)]
    elif pa.types.is_null(text.type):
        reasons = ["is null"] * len(table)
    else:
        reasons = ["is null" if null else f"{WRONG_TYPE} {text.type}, not string" for null in text.is_null().to_pylist()]
    if BAD in table.column_names:
        reasons = [r or other for r, other in zip(table[BAD].to_pylist(), reasons, strict=True)]
    if id_column:
        reasons = [r or ("has a null id" if null else None)
                   for r, null in zip(reasons, table[id_column].is_null().to_pylist(), strict=True)]
    return reasons


def bad_row_error(source: str, row: int, row_id: Any, reason: str, options: CorpusOptions,
                  line: int | None = None) -> ValueError:
    """One line: which row (its number, 0-based over all input files, and its id), what is wrong, the two fixes."""
    fixes = ("Fix that row (then write to a new output folder: a changed input is not resumed), or rerun with "
             "on_bad_row='skip' to leave such rows out; they are counted in the manifest.")
    if reason.startswith(WRONG_TYPE):  # every value of the column: the column is wrong, not row `row`
        kind = reason.removeprefix(WRONG_TYPE).split(",")[0].strip()
        return ValueError(f"input {source}: the text column {options.text_column!r} (text_column) holds {kind} values "
                          f"from row {row} on, not strings; name the column that holds the texts, or give them as "
                          "strings.")
    if reason == "has a null id":
        return ValueError(f"input {source}: row {row} (0-based, over all input files) has a null id (column "
                          f"{options.id_column!r}, id_column). {fixes}")
    what = f"has a text (column {options.text_column!r}) that {reason}"
    if line is not None:  # a .txt: its line
        what = f"is {'an empty line' if reason == 'is empty' else reason}"
        ident = f"line {line} (row id {row})"
    elif row_id is not None:
        ident = f"row {row} (id {row_id!r})"
    else:
        ident = f"row {row} (0-based, over all input files; also its id in the output)"
    return ValueError(f"input {source}: {ident} {what}. {fixes}")


def rows_to_keep(table: pa.Table, first_row: int, reasons: list[str | None], options: CorpusOptions,
                 source: CorpusInput) -> list[bool] | None:
    """None when every row is fine; else the rows to keep (skip), or the error for the first bad row (error)."""
    if not any(reasons):
        return None
    if options.on_bad_row == "error":
        i = next(i for i, r in enumerate(reasons) if r)
        row_id = table[options.id_column][i].as_py() if options.id_column in table.column_names else None
        line = first_row + i + 1 if source.format == "txt" and len(source.files) == 1 else None
        raise bad_row_error(source.spec, first_row + i, row_id, reasons[i], options, line)
    return [r is None for r in reasons]


def embedding_array(embeddings: np.ndarray) -> pa.Array:
    """An (n, d) matrix as Arrow fixed_size_list<float, d>: one column, read back with np.stack or .to_numpy."""
    import pyarrow as pa

    return pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1)), embeddings.shape[1])


def output_table(shard_table: pa.Table, keep: list[bool] | None, options: CorpusOptions) -> pa.Table:
    """The columns written for a shard: id, embedding, then the kept columns; rows where `keep` is False left out."""
    import pyarrow as pa

    table = shard_table if keep is None else shard_table.filter(pa.array(keep, pa.bool_()))
    ids = table[options.id_column] if options.id_column else table["_row"]
    embedding = table["embedding"].combine_chunks()
    embedding = embedding.cast(pa.list_(embedding.type.value_type, embedding.type.list_size))  # field name "item"
    columns = {"id": _plain(ids), "embedding": embedding}
    columns.update({name: _plain(table[name]) for name in options.keep_columns})
    return pa.table(columns)


def _plain(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """large_string/large_binary (what Ray's readers give) as string/binary (what pyarrow's give): both engines
    write the same schema."""
    import pyarrow as pa

    if pa.types.is_large_string(column.type):
        return column.cast(pa.string())
    if pa.types.is_large_binary(column.type):
        return column.cast(pa.binary())
    return column
