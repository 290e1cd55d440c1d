"""The output folder: shards cut by row number, part files written atomically, the manifest, the run lock, and
what a resume may skip.

Shard k holds input rows [k * shard_size, (k + 1) * shard_size). Each is written to a hidden temporary file,
fsynced and renamed to `part-0000k.parquet`, so a part file exists only complete. `_manifest.json` (underscore:
Parquet readers skip it) records the model, the settings, the input files and the row counts; a resume with
anything different is refused. One run at a time holds `.lock` (fcntl.flock: the kernel drops it when the
process dies, so a kill -9 never leaves a stale lock)."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

MANIFEST = "_manifest.json"
MANIFEST_VERSION = "st_tp corpus embeddings v1"
SHARD_META_KEY = b"st_tp.shard"
LOCK = ".lock"


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

    def skip(self, file_index: int, rows: int) -> None:
        """`rows` rows of a file that were not read again (a resume inside a file): counted, never cut."""
        if file_index != self.file:
            self._close_files_until(file_index)
        self.file_rows += rows
        self.row += rows

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


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


class ShardStore:
    """The output folder: part files written atomically, the manifest, and what a resume may skip."""

    def __init__(self, folder: str | os.PathLike, header: dict):
        self.folder = Path(folder)
        self.header = header  # model, settings, input: what must match for a resume
        self.manifest: dict = {}
        self.schema: pa.Schema | None = None
        self._lock = None

    # -- opening and resuming
    def open(self) -> dict[int, dict]:
        """Take the folder's lock, create it or check that it holds a run of the same command; return the
        finished shards' metadata by shard index."""
        path = self.folder / MANIFEST
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(f"output {self.folder}: exists and is not a folder; give a new folder (ending in /).")
        if not path.exists() and self.folder.is_dir() and any(not p.name.startswith(".") for p in self.folder.iterdir()):
            raise ValueError(f"output {self.folder}: the folder holds files but no {MANIFEST}, so it is not an st_tp "
                             "corpus output; give an empty or new folder.")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(f"output {self.folder}: cannot create the folder ({error.strerror}).") from None
        self._take_lock()
        if path.exists():
            self.manifest = json.loads(path.read_text())
            self._check_same_run(self.manifest)
        else:  # a new run: the manifest first, so the folder says what it is from the start
            self.manifest = {**self.header, "files_rows": [None] * len(self.header["input"]["files"])}
            self.save_manifest({}, {}, {"complete": False})
        for stale in [*self.folder.glob(".part-*.tmp*"), *self.folder.glob(f".{MANIFEST}.tmp*")]:
            stale.unlink(missing_ok=True)  # an interrupted write (this folder is ours alone: we hold the lock)
        return self.finished()

    def _take_lock(self) -> None:
        """fcntl.flock on `.lock` for the run's lifetime; a second run is refused naming the holder. The file
        goes when the run ends; a lock taken on a file that was just removed is taken again on the new one."""
        import fcntl

        path = self.folder / LOCK
        while True:
            handle = open(path, "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                raise ValueError(f"output {self.folder}: another run ({holder}) is writing to this folder; wait for "
                                 "it to end, or give another output folder.") from None
            try:
                if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                    break
            except FileNotFoundError:
                pass
            handle.close()  # the holder removed it as we opened it: lock the file that is there now
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on host {socket.gethostname()}\n")
        handle.flush()
        self._lock = handle

    def close(self) -> None:
        """Remove the lock file and release the lock (the kernel releases it too when the process dies)."""
        if self._lock is not None:
            (self.folder / LOCK).unlink(missing_ok=True)
            self._lock.close()
            self._lock = None

    def _check_same_run(self, old: dict) -> None:
        """Refuse, in one line naming the first difference, to resume into a folder written by another run."""
        if old.get("format") != MANIFEST_VERSION:
            raise ValueError(f"output {self.folder}: {MANIFEST} is not from this st_tp version; use a new folder.")
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
                raise ValueError(f"output {self.folder} holds a run with another {what}{shown}. Resume with the same "
                                 "model, input and settings, or write to a new output folder.")

    def finished(self) -> dict[int, dict]:
        """Shard index -> its metadata, for every part file present (each exists only complete)."""
        import pyarrow.parquet as pq

        done = {}
        for part in sorted(self.folder.glob("part-*.parquet")):
            schema = pq.read_schema(part)
            meta = json.loads((schema.metadata or {}).get(SHARD_META_KEY, b"null"))
            if meta is None:
                raise ValueError(f"{part}: not an st_tp shard; remove it or use a new output folder.")
            done[meta["shard"]] = meta
            self.schema = self.schema or schema.remove_metadata()
        return done

    def resume_point(self, done: dict[int, dict], shard_size: int) -> tuple[int, int, int]:
        """(first input file to read, its first row number, rows of that file already finished): whole files
        inside the finished prefix of shards are not read again, nor the finished rows of the file it ends in.
        File row counts come from the manifest (recorded as runs read them)."""
        prefix = 0
        while prefix in done:
            prefix += 1
        finished_rows = prefix * shard_size
        first_file, start_row = 0, 0
        for rows in self.manifest.get("files_rows", []):
            if rows is None or start_row + rows > finished_rows:
                break
            first_file, start_row = first_file + 1, start_row + rows
        if done and prefix == max(done) + 1 and sum(m["rows_read"] for m in done.values()) == finished_rows:
            return first_file, start_row, finished_rows - start_row
        return first_file, start_row, 0

    # -- writing
    def conform(self, table: pa.Table, roles: dict[str, str], source: str) -> pa.Table:
        """Cast a shard to the first shard's schema, so every part file has one schema (a JSON id that is an integer
        in one piece and a float in another, an all-null column): a dataset reader takes the first file's. A
        column that cannot be cast ends in one line naming it, its two types and the first row of the shard."""
        import pyarrow as pa

        if self.schema is None or table.schema.equals(self.schema):
            return table
        try:
            return table.cast(self.schema)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, ValueError) as error:
            name = next((f.name for f in self.schema if f.name in table.column_names
                         and not table.schema.field(f.name).type.equals(f.type)), "id")
            raise ValueError(f"input {source}: column {roles.get(name, repr(name))} holds {self.schema.field(name).type} in the first "
                             f"rows written but {table.schema.field(name).type} in a later shard "
                             f"({' '.join(str(error).split())}); give it one type in every row and file (e.g. all ids "
                             "as strings).") from None

    def write(self, shard: Shard, table: pa.Table, rows_read: int, bad_rows: int) -> dict:
        """Write one shard atomically (temporary file, fsync, rename); its metadata for the manifest."""
        import pyarrow.parquet as pq

        if self.schema is None:
            self.schema = table.schema
        meta = {"shard": shard.index, "first_row": shard.first_row, "rows_read": rows_read, "rows": table.num_rows,
                "bad_rows": bad_rows}
        table = table.replace_schema_metadata({SHARD_META_KEY: json.dumps(meta).encode()})
        final = self.folder / part_name(shard.index)
        temp = self.folder / f".{final.name}.tmp{os.getpid()}"
        try:
            pq.write_table(table, temp)
            with open(temp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(temp, final)
        except OSError as error:
            temp.unlink(missing_ok=True)
            raise self._write_error(final, error) from None
        return meta

    def save_manifest(self, done: dict[int, dict], file_counts: dict[int, int], extra: dict) -> dict:
        """Rewrite the manifest (atomically) from the finished shards: counts always match the part files."""
        files_rows = list(self.manifest.get("files_rows") or [None] * len(self.header["input"]["files"]))
        for index, count in file_counts.items():
            if index < len(files_rows):
                files_rows[index] = count
        shards = [done[k] for k in sorted(done)]
        manifest = {
            **self.header, **extra, "files_rows": files_rows,
            "rows": {"read": sum(s["rows_read"] for s in shards), "written": sum(s["rows"] for s in shards),
                     "bad_skipped": sum(s["bad_rows"] for s in shards)},
            "shards": shards,
        }
        temp = self.folder / f".{MANIFEST}.tmp{os.getpid()}"
        try:
            temp.write_text(json.dumps(manifest, indent=1, default=str) + "\n")
            os.replace(temp, self.folder / MANIFEST)
        except OSError as error:
            temp.unlink(missing_ok=True)  # never a 0-byte leftover
            raise self._write_error(self.folder / MANIFEST, error) from None
        self.manifest = manifest
        return manifest

    def _write_error(self, path: Path, error: OSError) -> ValueError:
        kept = len(list(self.folder.glob("part-*.parquet")))
        return ValueError(f"output {self.folder}: cannot write {path} ({error.strerror or error}); free some space or "
                          f"make the folder writable, then run the same command again: it resumes ({kept} finished "
                          "shards kept).")
