"""The input: which files, in which order, of which one format; checked before any model loads."""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .options import CorpusOptions

FORMATS = {".txt": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet",
           ".pq": "parquet"}
TEXT_FORMATS = {"txt", "jsonl", "csv", "tsv"}


def json_line(path: str | Path, number: int, line: str | bytes):
    """Line `number` (1-based) of a .jsonl file, parsed; a line that is not JSON is one error naming file and line."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} line {number}: not JSON ({error.msg}); a .jsonl file holds one JSON object per "
                         "line.") from None


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
            raise ValueError(f"input {spec}: {where}.")
        formats = {FORMATS.get(p.suffix.lower()) for p in files}
        if None in formats:
            unknown = next(p for p in files if p.suffix.lower() not in FORMATS)
            raise ValueError(f"input {unknown}: unknown format {unknown.suffix or '(no suffix)'}; st_tp reads .txt (one "
                             "text per line), .jsonl, .csv, .tsv and .parquet. Rename the file to say what it holds.")
        if len(formats) > 1:
            raise ValueError(f"input {spec}: mixes formats ({', '.join(sorted(formats))}); give one format at a time.")
        return cls(spec, formats.pop(), tuple(files))

    def fingerprint(self) -> list[dict]:
        """Each file's path, size and modification time: a changed input is not resumed into old shards."""
        return [{"path": str(p.resolve()), "size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns} for p in self.files]

    def columns(self, options: CorpusOptions) -> list[str]:
        """The input columns to read: text, id, kept (a .txt input has only its lines)."""
        if self.format == "txt":
            if options.id_column or options.keep_columns:
                raise ValueError(f"input {self.spec}: a .txt file has one text per line and no columns; "
                                 "id_column and keep_columns need a .jsonl, .csv, .tsv or Parquet input.")
            return ["text"]
        names = [options.text_column] + ([options.id_column] if options.id_column else []) + list(options.keep_columns)
        return list(dict.fromkeys(names))

    def check(self, options: CorpusOptions) -> int | None:
        """Fail early, before any model loads: not UTF-8, a missing column, a column of two types across Parquet
        files. Returns the row count when it is cheap to know (Parquet metadata; lines of a text file, an
        estimate for progress bars)."""
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
                setting = {options.text_column: "text_column", options.id_column: "id_column"}
                named = ", ".join(f"{c!r} ({setting.get(c, 'keep_columns')})" for c in missing)
                raise ValueError(f"input {self.spec}: no column {named}; its columns are {', '.join(available)}.")
        if self.format == "parquet":
            self._check_parquet_types(wanted, options)
        return max(estimate, 0)

    def _check_parquet_types(self, wanted: list[str], options: CorpusOptions) -> None:
        """One type per column over all files (Parquet says it in each footer): ids that are int64 in one file
        and strings in another cannot share one output column, and a reader would fail deep inside Arrow."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        first: dict[str, tuple[pa.DataType, Path]] = {}
        for path in self.files:
            schema = pq.read_schema(path)
            for name in wanted:
                index = schema.get_field_index(name)
                if index < 0:
                    raise ValueError(f"input {path}: no column {name!r}; every file of an input needs the same columns.")
                kind = schema.field(index).type
                if name == options.text_column and not (pa.types.is_string(kind) or pa.types.is_large_string(kind)
                                                        or pa.types.is_null(kind)):
                    raise ValueError(f"input {path}: the text column {name!r} (text_column) holds {kind}, not strings; "
                                     "name the column that holds the texts, or cast it to string.")
                seen, where = first.setdefault(name, (kind, path))
                if not _same_type(seen, kind):
                    role = "id_column" if name == options.id_column else "keep_columns"
                    raise ValueError(f"input {self.spec}: column {name!r} ({role}) is {seen} in {where} but {kind} in "
                                     f"{path}; give it one type in every file (e.g. cast the ids to string).")

    def _schema_names(self) -> list[str]:
        """Column names from the first file (a header, the first JSON object, Parquet's schema)."""
        first = self.files[0]
        if self.format == "parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(first).names)
        with open(first, encoding="utf-8-sig") as f:
            if self.format == "jsonl":
                number, line = next(((n, line) for n, line in enumerate(f, 1) if line.strip()), (1, "{}"))
                row = json_line(first, number, line)
                return list(row) if isinstance(row, dict) else []
            if self.format == "tsv":  # unquoted, as pyarrow reads it (csv_options)
                return f.readline().rstrip("\r\n").split("\t")
            import csv

            return next(csv.reader(f), [])


def _same_type(a, b) -> bool:
    """Types one output column can hold: equal, or string/large_string (what different writers call text)."""
    import pyarrow as pa

    plain = {pa.large_string(): pa.string(), pa.large_binary(): pa.binary()}
    return a.equals(b) or plain.get(a, a).equals(plain.get(b, b)) or pa.types.is_null(a) or pa.types.is_null(b)
