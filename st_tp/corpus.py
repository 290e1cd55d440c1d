"""Embed a corpus larger than memory in one process: stream rows in, write a Parquet dataset shard by shard, resume.

The input (.txt, .jsonl, .csv/.tsv, Parquet file/folder/glob) is read in Arrow record batches and cut into shards
of `shard_size` input rows by row number: shard k holds rows [k * shard_size, (k + 1) * shard_size). Each shard is
embedded, written to a hidden temporary file and renamed to `part-0000k.parquet`, so a part file exists only
complete. A re-run with the same command skips the shards whose part file exists and ends with exactly the dataset
an uninterrupted run writes. `_manifest.json` (underscore: Parquet readers skip it) records the model, the
settings, the input files and the row counts, and a resume with anything different is refused.

The Ray engine (st_tp/ray_engine.py) writes the same layout through `ShardStore` and `ShardAssembler`.
Nothing here imports pyarrow, torch or Ray at module level: `import st_tp` stays light.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

FORMATS = {".txt": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet",
           ".pq": "parquet"}
TEXT_FORMATS = {"txt", "jsonl", "csv", "tsv"}
OUTPUT_DTYPES = ("float32", "float16")
BAD_ROW_POLICIES = ("error", "skip")
MANIFEST = "_manifest.json"
MANIFEST_VERSION = "st_tp corpus embeddings v1"
SHARD_META_KEY = b"st_tp.shard"
BAD = "_bad"  # reader- or actor-side reason a row cannot be embedded (null when fine)
RESERVED = ("id", "embedding")
MODEL_FILES = ("st_tp_config.json", "modules.json", "config_sentence_transformers.json", "sentence_bert_config.json")


# ---- options ----------------------------------------------------------------------------------------------------
@dataclass
class CorpusOptions:
    """What `embed_corpus` does with a corpus; every field is also an `st-tp encode` option of the same name."""

    text_column: str = "text"
    id_column: str | None = None  # None: the row number (0-based, over all input files in order)
    keep_columns: tuple[str, ...] = ()
    batch_size: int = 32
    shard_size: int = 10_000
    device: str | None = None
    normalize: bool = False
    output_dtype: str = "float32"
    on_bad_row: str = "error"
    progress: bool = True
    engine: str = "local"  # "local" (this process) or "ray"
    actors: int = 2
    cpus_per_actor: float = 1
    gpus_per_actor: float = 0
    address: str | None = None  # Ray cluster to join; None: $RAY_ADDRESS, else a local cluster
    on_shard: Callable[[dict], None] | None = field(default=None, repr=False, compare=False)  # called per written shard

    def __post_init__(self) -> None:
        self.keep_columns = tuple(self.keep_columns)
        if self.output_dtype not in OUTPUT_DTYPES:
            raise ValueError(f"output_dtype {self.output_dtype!r}: choose one of {', '.join(OUTPUT_DTYPES)}.")
        if self.on_bad_row not in BAD_ROW_POLICIES:
            raise ValueError(f"on_bad_row {self.on_bad_row!r}: choose 'error' (stop at the first bad row) or 'skip'.")
        if self.engine not in ("local", "ray"):
            raise ValueError(f"engine {self.engine!r}: choose 'local' (one process) or 'ray'.")
        for name in ("batch_size", "shard_size", "actors"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        actor_device = "cuda" if self.gpus_per_actor > 0 else "cpu"
        if self.engine == "ray" and self.device and self.device.split(":")[0] != actor_device:
            raise ValueError(f"--device {self.device} with --engine ray: each actor's device follows --gpus-per-actor "
                             "(cuda when above 0, else cpu); leave --device out or set --gpus-per-actor.")
        clash = set(self.keep_columns) & set(RESERVED)
        if clash:
            raise ValueError(f"keep_columns {sorted(clash)}: the output already has columns id and embedding; "
                             "rename the input column or leave it out.")

    def fingerprint(self) -> dict:
        """The settings that change what the output holds: a resume must use the same ones."""
        return {"text_column": self.text_column, "id_column": self.id_column, "keep_columns": list(self.keep_columns),
                "shard_size": self.shard_size, "normalize": self.normalize, "output_dtype": self.output_dtype}


# ---- input ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CorpusInput:
    """The input files in reading order, and their one format."""

    spec: str
    format: str
    files: tuple[Path, ...]

    @classmethod
    def resolve(cls, spec: str | os.PathLike) -> CorpusInput:
        """A file, a folder (its files of one known format, sorted) or a glob (sorted)."""
        spec = str(spec)
        path = Path(spec)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in FORMATS
                           and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts))
            where = f"the folder {spec} holds no .parquet, .jsonl, .csv, .tsv or .txt files"
        elif path.is_file():
            files = [path]
            where = ""
        else:
            files = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
            where = "the glob matches no file" if glob.has_magic(spec) else "no such file"
        if not files:
            raise ValueError(f"--input {spec}: {where}.")
        formats = {FORMATS.get(p.suffix.lower()) for p in files}
        if None in formats:
            unknown = next(p for p in files if p.suffix.lower() not in FORMATS)
            raise ValueError(f"--input {unknown}: unknown format {unknown.suffix or '(no suffix)'}; st_tp reads .txt (one "
                             "text per line), .jsonl, .csv, .tsv and .parquet. Rename the file to say what it holds.")
        if len(formats) > 1:
            raise ValueError(f"--input {spec}: mixes formats ({', '.join(sorted(formats))}); give one format at a time.")
        return cls(spec, formats.pop(), tuple(files))

    def fingerprint(self) -> list[dict]:
        """Each file's path, size and modification time: a changed input is not resumed into old shards."""
        return [{"path": str(p.resolve()), "size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns} for p in self.files]

    def columns(self, options: CorpusOptions) -> list[str]:
        """The input columns to read: text, id, kept (a .txt input has only its lines)."""
        if self.format == "txt":
            if options.id_column or options.keep_columns:
                raise ValueError(f"--input {self.spec}: a .txt file has one text per line and no columns; "
                                 "--id-column and --keep-columns need a .jsonl, .csv, .tsv or Parquet input.")
            return ["text"]
        names = [options.text_column] + ([options.id_column] if options.id_column else []) + list(options.keep_columns)
        return list(dict.fromkeys(names))

    def check(self, options: CorpusOptions) -> int | None:
        """Fail early, before any model loads: not UTF-8, a missing column. Returns the row count when it is
        cheap to know (Parquet metadata; lines of a text file, an estimate for progress bars)."""
        from st_tp.data import check_utf8

        wanted = self.columns(options)
        if self.format in TEXT_FORMATS:
            lines = sum(check_utf8(p) for p in self.files)
            estimate = lines - (len(self.files) if self.format in ("csv", "tsv") else 0)
        else:
            import pyarrow.parquet as pq

            estimate = sum(pq.ParquetFile(p).metadata.num_rows for p in self.files)
        if self.format != "txt":
            available = self._schema_names()
            missing = [c for c in wanted if c not in available]
            if missing:
                option = {options.text_column: "--text-column", options.id_column: "--id-column"}
                named = ", ".join(f"{c!r} ({option.get(c, '--keep-columns')})" for c in missing)
                raise ValueError(f"--input {self.spec}: no column {named}; its columns are {', '.join(available)}.")
        return max(estimate, 0)

    def _schema_names(self) -> list[str]:
        """Column names from the first file (a header, the first JSON object, Parquet's schema)."""
        first = self.files[0]
        if self.format == "parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(first).names)
        with open(first, encoding="utf-8-sig") as f:
            if self.format == "jsonl":
                line = next((line for line in f if line.strip()), "{}")
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{first}: the first line is not JSON ({error.msg}); a .jsonl file holds one "
                                     "JSON object per line.") from None
                return list(row) if isinstance(row, dict) else []
            if self.format == "tsv":  # unquoted, as pyarrow reads it (csv_options)
                return f.readline().rstrip("\r\n").split("\t")
            import csv

            return next(csv.reader(f), [])


# ---- reading ----------------------------------------------------------------------------------------------------
READ_ROWS = 8192  # rows per Arrow batch read from the input: memory is bounded by this and the shard size


def iter_input(source: CorpusInput, columns: list[str], first_file: int = 0) -> Iterator[tuple[int, pa.Table]]:
    """(file index, table) in input order, `READ_ROWS` rows at most per table, only `columns` (+ `_bad`)."""
    reader = {"txt": _read_txt, "jsonl": _read_jsonl, "csv": _read_csv, "tsv": _read_csv, "parquet": _read_parquet}
    for index in range(first_file, len(source.files)):
        for table in reader[source.format](source.files[index], columns, source.format):
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
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=READ_ROWS, columns=columns):
        yield pa.Table.from_batches([batch])


def csv_options(fmt: str, columns: list[str], text_column: str) -> dict:
    """pyarrow.csv options both engines use: TSV is unquoted (STS sentences hold unbalanced quotes), the text is
    always a string (never inferred as a number), an empty field is the empty text (not null)."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    parse = pcsv.ParseOptions(delimiter="\t", quote_char=False) if fmt == "tsv" else pcsv.ParseOptions()
    convert = pcsv.ConvertOptions(column_types={text_column: pa.string()}, include_columns=columns)
    return {"parse_options": parse, "convert_options": convert}


def _read_csv(path: Path, columns: list[str], fmt: str) -> Iterator[pa.Table]:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    options = csv_options(fmt, columns, columns[0])
    try:
        with pcsv.open_csv(path, read_options=pcsv.ReadOptions(block_size=1 << 22), **options) as reader:
            for batch in reader:
                for start in range(0, batch.num_rows, READ_ROWS):
                    yield pa.Table.from_batches([batch.slice(start, READ_ROWS)])
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
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} line {first_line + offset + 1}: not JSON ({error.msg}); a .jsonl file holds one "
                             "JSON object per line.") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path} line {first_line + offset + 1}: a JSON {type(row).__name__}, not an object; a "
                             ".jsonl file holds one JSON object per line.")
        text = row.get(text_column)
        reason = None if text is None or isinstance(text, str) else f"is not a string ({type(text).__name__} {text!r:.40})"
        rows.append({c: (None if c == text_column and reason else row.get(c)) for c in columns})
        bad.append(reason)
    table = pa.Table.from_pylist(rows) if rows else pa.table({c: pa.array([], pa.null()) for c in columns})
    table = table.set_column(table.schema.get_field_index(text_column), text_column,
                             table[text_column].cast(pa.string()))
    return table.append_column(BAD, pa.array(bad, pa.string()))


# ---- bad rows -----------------------------------------------------------------------------------------------------
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
        reasons = ["is null" if null else f"is not a string ({text.type})" for null in text.is_null().to_pylist()]
    if BAD in table.column_names:
        reasons = [r or other for r, other in zip(table[BAD].to_pylist(), reasons, strict=True)]
    if id_column:
        reasons = [r or ("has a null id" if null else None)
                   for r, null in zip(reasons, table[id_column].is_null().to_pylist(), strict=True)]
    return reasons


def bad_row_error(source: str, row: int, row_id: Any, reason: str, text_column: str,
                  line: int | None = None) -> ValueError:
    """One line: which row (its number, 0-based over all input files, and its id), what is wrong, the two fixes."""
    what = reason if reason == "has a null id" else f"has a text (column {text_column!r}) that {reason}"
    if line is not None:  # a .txt: its line
        what = f"is {'an empty line' if reason == 'is empty' else reason}"
        ident = f"line {line} (row id {row})"
    elif row_id is not None:
        ident = f"row {row} (id {row_id!r})"
    else:
        ident = f"row {row} (0-based; its id in the output)"
    return ValueError(f"--input {source}: {ident} {what}. Fix that row (then write to a new --output: a changed input "
                      "is not resumed), or rerun with --on-bad-row skip (on_bad_row='skip' in Python) to leave such "
                      "rows out; they are counted in the manifest.")


# ---- shards -----------------------------------------------------------------------------------------------------
@dataclass
class Shard:
    """Input rows [first_row, first_row + len(table)) with a `_row` column (the row number)."""

    index: int
    first_row: int
    table: pa.Table


class ShardAssembler:
    """Cut an ordered stream of (file index, table) into shards of `shard_size` rows by row number, and learn how
    many rows each input file has. Rows of `done` shards are dropped as they pass (never embedded again)."""

    def __init__(self, shard_size: int, start_row: int = 0, done: Iterable[int] = (), start_file: int = 0):
        self.shard_size, self.row, self.done = shard_size, start_row, set(done)
        self.file, self.file_rows, self.file_counts = start_file, 0, {}
        self._parts: list[pa.Table] = []
        self._buffered = 0

    def add(self, file_index: int, table: pa.Table) -> Iterator[Shard]:
        import pyarrow as pa

        if file_index != self.file:
            self._close_files_until(file_index)
        self.file_rows += table.num_rows
        while table.num_rows:
            shard = self.row // self.shard_size
            take = min(table.num_rows, (shard + 1) * self.shard_size - self.row)
            piece, table = table.slice(0, take), table.slice(take)
            if shard not in self.done:
                self._parts.append(piece.append_column("_row", pa.array(range(self.row, self.row + take), pa.int64())))
                self._buffered += take
            self.row += take
            if self.row % self.shard_size == 0:
                yield from self._flush(shard)

    def finish(self, total_files: int) -> Iterator[Shard]:
        """The last (partial) shard; every file's row count is known from here on."""
        self._close_files_until(total_files)
        if self.row % self.shard_size:
            yield from self._flush(self.row // self.shard_size)

    def _close_files_until(self, file_index: int) -> None:
        self.file_counts[self.file] = self.file_rows
        for skipped in range(self.file + 1, file_index):  # files that yielded no rows at all
            self.file_counts[skipped] = 0
        self.file, self.file_rows = file_index, 0

    def _flush(self, shard: int) -> Iterator[Shard]:
        import pyarrow as pa

        if self._buffered:
            table = pa.concat_tables(self._parts, promote_options="permissive")
            yield Shard(shard, int(table["_row"][0].as_py()), table)
        self._parts, self._buffered = [], 0


def _part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


class ShardStore:
    """The output folder: part files written atomically, the manifest, and what a resume may skip."""

    def __init__(self, folder: str | os.PathLike, header: dict):
        self.folder = Path(folder)
        self.header = header  # model, settings, input: what must match for a resume
        self.manifest: dict = {}
        self.schema: pa.Schema | None = None

    # -- opening and resuming
    def open(self) -> dict[int, dict]:
        """Create the folder or check that it holds a run of the same command; return the finished shards'
        metadata by shard index."""
        path = self.folder / MANIFEST
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(f"--output {self.folder}: exists and is not a folder; give a new folder (ending in /).")
        if path.exists():
            self.manifest = json.loads(path.read_text())
            self._check_same_run(self.manifest)
        elif self.folder.is_dir() and any(not p.name.startswith(".") for p in self.folder.iterdir()):
            raise ValueError(f"--output {self.folder}: the folder holds files but no {MANIFEST}, so it is not an st_tp "
                             "corpus output; give an empty or new folder.")
        else:  # a new run: the manifest first, so the folder says what it is from the start
            self.folder.mkdir(parents=True, exist_ok=True)
            self.manifest = {**self.header, "files_rows": [None] * len(self.header["input"]["files"])}
            self.save_manifest({}, {}, {"complete": False})
        for stale in self.folder.glob(".part-*.tmp*"):  # an interrupted write of a shard that is not finished
            stale.unlink(missing_ok=True)
        return self.finished()

    def _check_same_run(self, old: dict) -> None:
        """Refuse, in one line naming the first difference, to resume into a folder written by another run."""
        if old.get("format") != MANIFEST_VERSION:
            raise ValueError(f"--output {self.folder}: {MANIFEST} is not from this st_tp version; use a new folder.")
        checks = [("model folder", old["model"]["path"], self.header["model"]["path"]),
                  ("model settings", old["model"]["fingerprint"], self.header["model"]["fingerprint"])]
        checks += [(f"setting {key}", old["settings"].get(key), value) for key, value in self.header["settings"].items()]
        old_files, new_files = old["input"]["files"], self.header["input"]["files"]
        checks.append(("input files", [f["path"] for f in old_files], [f["path"] for f in new_files]))
        for before, now in zip(old_files, new_files, strict=False):
            checks.append((f"input file {now['path']} (size or modification time)", before, now))
        for what, before, now in checks:
            if before != now:
                shown = (f": was {before!r}, now {now!r}" if what.startswith(("model folder", "setting"))
                         else " changed")
                raise ValueError(f"--output {self.folder} holds a run with another {what}{shown}. Resume with the same "
                                 "model, input and settings, or write to a new --output folder.")

    def finished(self) -> dict[int, dict]:
        """Shard index -> its metadata, for every part file present (each exists only complete)."""
        import pyarrow.parquet as pq

        done = {}
        for part in sorted(self.folder.glob("part-*.parquet")):
            schema = pq.read_schema(part)
            meta = json.loads((schema.metadata or {}).get(SHARD_META_KEY, b"null"))
            if meta is None:
                raise ValueError(f"{part}: not an st_tp shard; remove it or use a new --output folder.")
            done[meta["shard"]] = meta
            self.schema = self.schema or schema.remove_metadata()
        return done

    def resume_point(self, done: dict[int, dict], shard_size: int) -> tuple[int, int]:
        """(first input file to read, its first row number): whole files inside the finished prefix of shards are
        not read again. Their row counts come from the manifest (recorded as runs read them)."""
        prefix = 0
        while prefix in done:
            prefix += 1
        finished_rows = prefix * shard_size
        first_file, start_row = 0, 0
        for rows in self.manifest.get("files_rows", []):
            if rows is None or start_row + rows > finished_rows:
                break
            first_file, start_row = first_file + 1, start_row + rows
        return first_file, start_row

    # -- writing
    def write(self, shard: Shard, table: pa.Table, rows_read: int, bad_rows: int) -> dict:
        """Write one shard atomically (temporary file, fsync, rename) and record it in the manifest."""
        import pyarrow.parquet as pq

        if self.schema is None:
            self.schema = table.schema
        else:
            table = _conform(table, self.schema, self.folder)
        meta = {"shard": shard.index, "first_row": shard.first_row, "rows_read": rows_read, "rows": table.num_rows,
                "bad_rows": bad_rows}
        table = table.replace_schema_metadata({SHARD_META_KEY: json.dumps(meta).encode()})
        final = self.folder / _part_name(shard.index)
        temp = self.folder / f".{final.name}.tmp{os.getpid()}"
        pq.write_table(table, temp)
        with open(temp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(temp, final)
        return meta

    def save_manifest(self, done: dict[int, dict], file_counts: dict[int, int], extra: dict) -> dict:
        """Rewrite the manifest (atomically) from the finished shards: counts always match the part files."""
        files_rows = list(self.manifest.get("files_rows") or [None] * len(self.header["input"]["files"]))
        for index, count in file_counts.items():
            if index < len(files_rows):
                files_rows[index] = count
        shards = [done[k] for k in sorted(done)]
        self.manifest = {
            **self.header, **extra, "files_rows": files_rows,
            "rows": {"read": sum(s["rows_read"] for s in shards), "written": sum(s["rows"] for s in shards),
                     "bad_skipped": sum(s["bad_rows"] for s in shards)},
            "shards": shards,
        }
        temp = self.folder / f".{MANIFEST}.tmp{os.getpid()}"
        temp.write_text(json.dumps(self.manifest, indent=1, default=str) + "\n")
        os.replace(temp, self.folder / MANIFEST)
        return self.manifest


def _conform(table: pa.Table, schema: pa.Schema, folder: Path) -> pa.Table:
    """Cast a shard to the first shard's schema, so every part file has one schema (a JSON id that is an integer
    in one piece and a float in another, an all-null column): a dataset reader takes the first file's."""
    import pyarrow as pa

    if table.schema.equals(schema):
        return table
    try:
        return table.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as error:
        raise ValueError(f"--output {folder}: a column changed type between shards ({error}); give the input one "
                         "type per column (e.g. all ids as strings).") from None


# ---- the model --------------------------------------------------------------------------------------------------
def model_fingerprint(model_path: str | os.PathLike) -> dict:
    """The saved folder's path and a hash of its settings files and weight sizes: a resume must use this model."""
    folder = Path(model_path).resolve()
    digest = hashlib.sha256()
    for name in MODEL_FILES:
        for path in sorted(folder.rglob(name)):
            digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    for path in sorted(folder.rglob("*.safetensors")):
        digest.update(f"{path.relative_to(folder)}:{path.stat().st_size}".encode())
    settings = {}
    if (folder / "st_tp_config.json").is_file():
        settings = json.loads((folder / "st_tp_config.json").read_text())
    return {"path": str(folder), "fingerprint": digest.hexdigest()[:16], "st_tp_config": settings}


def default_device(device: str | None) -> str:
    """The device to load on, named explicitly (never left to a library's guess inside a worker)."""
    if device:
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    return "mps" if torch.backends.mps.is_available() else "cpu"


class Embedder:
    """A loaded st_tp (or any SentenceTransformer) model that turns texts into float32/float16 rows."""

    def __init__(self, model_path: str, device: str, batch_size: int, normalize: bool, output_dtype: str):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(model_path), device=device, trust_remote_code=True)
        self.batch_size, self.normalize, self.output_dtype = batch_size, normalize, output_dtype

    def __call__(self, texts: list[str], progress: Callable[[int], None] = lambda n: None) -> np.ndarray:
        """Embed in pieces of 64 batches to report progress often. The texts are sorted by length over the whole
        call first (as `model.encode` sorts a whole list), so pieces cut no batch into worse padding; rows come back
        in input order."""
        import numpy as np

        order = np.argsort([-len(text) for text in texts], kind="stable")
        step = self.batch_size * 64
        pieces = []
        for start in range(0, len(texts), step):
            chunk = [texts[i] for i in order[start:start + step]]
            pieces.append(self.model.encode(chunk, batch_size=self.batch_size, normalize_embeddings=self.normalize,
                                            convert_to_numpy=True, show_progress_bar=False).astype(np.float32))
            progress(len(chunk))
        if not pieces:
            return np.zeros((0, self.dimension()), self.output_dtype)
        embedded = np.concatenate(pieces)
        out = np.empty_like(embedded)
        out[order] = embedded  # back to input order
        return out.astype(self.output_dtype, copy=False)

    def dimension(self) -> int:
        get = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(get() or len(self.model.encode(["x"])[0]))


def embedding_array(embeddings: np.ndarray) -> pa.Array:
    """An (n, d) matrix as Arrow fixed_size_list<float, d>: one column, read back with np.stack or .to_numpy."""
    import pyarrow as pa

    return pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1)), embeddings.shape[1])


def output_table(shard_table: pa.Table, keep: list[bool] | None, embedding: pa.Array, options: CorpusOptions) -> pa.Table:
    """The columns written for a shard: id, embedding, then the kept columns; rows where `keep` is False left out."""
    import pyarrow as pa

    table = shard_table if keep is None else shard_table.filter(pa.array(keep, pa.bool_()))
    ids = table[options.id_column] if options.id_column else table["_row"]
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


def apply_bad_row_policy(shard: Shard, reasons: list[str | None], options: CorpusOptions,
                         source: CorpusInput) -> list[bool] | None:
    """None when every row is fine; else the rows to keep (skip), or the error for the first bad row (error)."""
    if not any(reasons):
        return None
    if options.on_bad_row == "error":
        i = next(i for i, r in enumerate(reasons) if r)
        row_id = shard.table[options.id_column][i].as_py() if options.id_column else None
        line = shard.first_row + i + 1 if source.format == "txt" and len(source.files) == 1 else None
        raise bad_row_error(source.spec, shard.first_row + i, row_id, reasons[i], options.text_column, line)
    return [r is None for r in reasons]


# ---- the one-process engine ---------------------------------------------------------------------------------------
@dataclass
class CorpusSummary:
    """What a run did, as the CLI prints it and the manifest records it."""

    output: str
    rows_read: int
    rows_written: int
    bad_skipped: int
    dim: int
    shards: int
    shards_skipped: int = 0
    manifest: dict = field(default_factory=dict, repr=False)

    def line(self, source: str) -> str:
        skipped = f" ({self.bad_skipped} bad rows skipped, counted in {MANIFEST})" if self.bad_skipped else ""
        resumed = f"; {self.shards_skipped} finished shards kept from an earlier run" if self.shards_skipped else ""
        return (f"Read {self.rows_read} rows from {source}{skipped}; wrote {self.rows_written} embeddings of dimension "
                f"{self.dim} to {self.output} ({self.shards} shards{resumed})")


def run_header(source: CorpusInput, model_path: str, options: CorpusOptions) -> dict:
    """The manifest's fixed part: what must be the same for a resume."""
    return {"format": MANIFEST_VERSION, "model": model_fingerprint(model_path), "settings": options.fingerprint(),
            "input": {"spec": source.spec, "format": source.format, "files": source.fingerprint()}}


def embed_corpus(input: str | os.PathLike, output: str | os.PathLike, model: str | os.PathLike,
                 options: CorpusOptions | None = None, **settings) -> CorpusSummary:
    """Embed every row of `input` with the saved model folder `model` into the Parquet dataset folder `output`
    (columns id, embedding and the kept ones; `_manifest.json`). `settings` are `CorpusOptions` fields
    (text_column, id_column, keep_columns, batch_size, shard_size, device, normalize, output_dtype, on_bad_row,
    engine="ray" with actors, cpus_per_actor, gpus_per_actor, address). Re-running resumes."""
    options = options or CorpusOptions(**settings)
    source = CorpusInput.resolve(input)
    estimate = source.check(options)
    if estimate == 0:
        raise ValueError(f"--input {source.spec}: no rows to embed (the input is empty).")
    if not Path(model).is_dir():
        raise ValueError(f"model {model}: no such folder; give a folder saved by `st-tp build` (model.save(...)).")
    store = ShardStore(output, run_header(source, str(model), options))
    done = store.open()
    if options.engine == "ray":
        from st_tp.ray_engine import run_ray

        return run_ray(source, store, done, str(model), options, estimate)
    return _run_local(source, store, done, str(model), options, estimate)


def _run_local(source: CorpusInput, store: ShardStore, done: dict[int, dict], model: str, options: CorpusOptions,
               estimate: int | None) -> CorpusSummary:
    from tqdm.auto import tqdm

    first_file, start_row = store.resume_point(done, options.shard_size)
    assembler = ShardAssembler(options.shard_size, start_row, done, first_file)
    embedder, skipped = None, len(done)
    written_rows = sum(m["rows_read"] for m in done.values())
    columns = source.columns(options)
    with tqdm(total=estimate, initial=written_rows, unit="row", unit_scale=True, smoothing=0.05, desc="embedding",
              disable=not options.progress) as bar:  # closed before an error prints, so the error has its own line
        for shard in iter_shards(assembler, iter_input(source, columns, first_file), len(source.files)):
            reasons = bad_reasons(shard.table, columns[0], options.id_column)
            keep = apply_bad_row_policy(shard, reasons, options, source)
            texts = shard.table[columns[0]]
            texts = (texts if keep is None else texts.filter(keep)).to_pylist()
            if embedder is None:  # loaded only when there is work: a finished run re-run does nothing
                embedder = Embedder(model, default_device(options.device), options.batch_size, options.normalize,
                                    options.output_dtype)
            embeddings = embedder(texts, bar.update)
            bar.update(shard.table.num_rows - len(texts))
            table = output_table(shard.table, keep, embedding_array(embeddings), options)
            done[shard.index] = store.write(shard, table, shard.table.num_rows, len(reasons) - len(texts))
            store.save_manifest(done, assembler.file_counts, {"engine": "local", "complete": False})
            if options.on_shard:
                options.on_shard(done[shard.index])
    return finish(store, done, assembler.file_counts, "local", skipped)


def iter_shards(assembler: ShardAssembler, tables: Iterator[tuple[int, pa.Table]], total_files: int) -> Iterator[Shard]:
    for file_index, table in tables:
        yield from assembler.add(file_index, table)
    yield from assembler.finish(total_files)


def finish(store: ShardStore, done: dict[int, dict], file_counts: dict[int, int], engine: str,
           skipped: int) -> CorpusSummary:
    """The final manifest (complete) and the summary a caller prints; `skipped`: shards kept from an earlier run."""
    dim = store.schema.field("embedding").type.list_size if store.schema is not None else 0
    manifest = store.save_manifest(done, file_counts, {"engine": engine, "complete": True, "dim": dim})
    rows = manifest["rows"]
    return CorpusSummary(str(store.folder), rows["read"], rows["written"], rows["bad_skipped"], dim, len(done),
                         skipped, manifest)


# ---- small inputs into one .npy ----------------------------------------------------------------------------------
def read_all_texts(input: str | os.PathLike, options: CorpusOptions, allow_empty: bool = False) -> tuple[list[str], int, int]:
    """(texts, rows read, bad rows skipped) of a small input, for the .npy output. `allow_empty` keeps blank
    lines of a .txt as the empty text (row i of the .npy is line i, as `st-tp encode` always did)."""
    source = CorpusInput.resolve(input)
    source.check(options)
    columns = source.columns(options)
    texts, read, skipped = [], 0, 0
    for _, table in iter_input(source, columns):
        reasons = bad_reasons(table, columns[0], options.id_column)
        if allow_empty:
            reasons = [None if r == "is empty" else r for r in reasons]
        shard = Shard(0, read, table)
        keep = apply_bad_row_policy(shard, reasons, options, source)
        column = table[columns[0]] if keep is None else table[columns[0]].filter(keep)
        texts.extend(column.to_pylist())
        read += table.num_rows
        skipped += 0 if keep is None else keep.count(False)
    return texts, read, skipped


__all__ = ["CorpusInput", "CorpusOptions", "CorpusSummary", "embed_corpus"]
