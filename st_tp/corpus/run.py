"""`embed_corpus`: pick an engine and run THE corpus loop.

An engine (this process, or Ray Data actors) is only a source of embedded shards in input order. The loop here
owns everything else, once for both: the bad-row policy, duplicate ids, the output table, atomic shard writes,
the manifest, resume, progress, and an interrupt that keeps what is written."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .embedder import model_fingerprint
from .ids import DuplicateIds
from .inputs import CorpusInput
from .options import CorpusOptions
from .readers import BAD
from .rows import output_table, rows_to_keep
from .store import MANIFEST, MANIFEST_VERSION, ShardAssembler, ShardStore


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a corpus run: the finished shards are kept, and the same command resumes."""

    def __init__(self, shards_kept: int, output: str):
        super().__init__(f"interrupted: {shards_kept} shards kept in {output}; run the same command again to resume")
        self.shards_kept, self.output = shards_kept, output


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
    rows_embedded: int = 0  # rows the engine handled in this run (a resume handles only the unfinished ones)

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
                 options: CorpusOptions | None = None, **settings):
    """Embed every row of `input` with the saved model folder `model` into the Parquet dataset folder `output`
    (columns id, embedding and the kept ones; `_manifest.json`), or, when `output` ends in .npy, into one
    in-memory matrix saved there. `settings` are `CorpusOptions` fields (text_column, id_column, keep_columns,
    batch_size, shard_size, device, normalize, output_dtype, on_bad_row, keep_duplicate_ids, engine="ray" with
    actors, cpus_per_actor, gpus_per_actor, address). Re-running resumes; Ctrl-C raises `Interrupted` (a
    KeyboardInterrupt) that says how many shards are kept."""
    options = options or CorpusOptions(**settings)
    source = CorpusInput.resolve(input)
    if str(output).endswith(".npy"):
        from .npy import embed_to_npy

        return embed_to_npy(source, Path(output), str(model), options)
    estimate = source.check(options)
    if estimate == 0:
        raise ValueError(f"input {source.spec}: no rows to embed (the input is empty).")
    if not Path(model).is_dir():
        raise ValueError(f"model {model}: no such folder; give a folder saved by `st-tp build` (model.save(...)).")
    store = ShardStore(output, run_header(source, str(model), options))
    engine = None
    try:
        done = store.open()
        if options.engine == "ray":
            from .ray_engine import RayEngine

            engine = RayEngine(str(model), options)
        else:
            from .local import LocalEngine

            engine = LocalEngine(str(model), options)
        return write_shards(source, store, done, engine, options, estimate)
    except KeyboardInterrupt:
        raise Interrupted(len(list(store.folder.glob("part-*.parquet"))), str(store.folder)) from None
    finally:
        if engine is not None:
            engine.close()
        store.close()


def write_shards(source: CorpusInput, store: ShardStore, done: dict[int, dict], engine, options: CorpusOptions,
                 estimate: int | None) -> CorpusSummary:
    """The loop: the engine's embedded shards, in order, through the bad-row policy and the duplicate-id check
    into part files and the manifest."""
    from tqdm.auto import tqdm

    first_file, start_row, skip_rows = store.resume_point(done, options.shard_size)
    assembler = ShardAssembler(options.shard_size, start_row, done, first_file)
    if skip_rows:
        assembler.skip(first_file, skip_rows)
    skipped = len(done)
    duplicates = None
    if options.id_column and not options.keep_duplicate_ids:
        duplicates = DuplicateIds(options.id_column, store.folder, source.spec)
        duplicates.load(sorted(store.folder.glob("part-*.parquet")))
    roles = {"id": f"{options.id_column!r} (id_column)", **{k: f"{k!r} (keep_columns)" for k in options.keep_columns}}
    columns = source.columns(options)
    finished = sum(m["rows_read"] for m in done.values())
    handled = [0]  # rows the engine embedded (or set aside as bad) in this run: a resume's real work

    def progress(rows: int) -> None:
        handled[0] += rows
        bar.update(rows)

    with tqdm(total=estimate, initial=finished, unit="row", unit_scale=True, smoothing=0.05, desc="embedding",
              disable=not options.progress) as bar:  # closed before an error prints, so the error has its own line
        for shard in engine.shards(source, columns, assembler, first_file, skip_rows, progress):
            reasons = shard.table[BAD].to_pylist()
            keep = rows_to_keep(shard.table, shard.first_row, reasons, options, source)
            table = store.conform(output_table(shard.table, keep, options), roles, source.spec)
            if duplicates is not None:
                rows = shard.table["_row"] if keep is None else shard.table["_row"].filter(keep)
                duplicates.check(table["id"], rows.to_pylist())
            rows_read = shard.table.num_rows
            done[shard.index] = store.write(shard, table, rows_read, 0 if keep is None else keep.count(False))
            store.save_manifest(done, assembler.file_counts, {"engine": engine.name, "complete": False})
            if options.on_shard:
                options.on_shard(done[shard.index])
    summary = finish(store, done, assembler.file_counts, engine.name, skipped)
    summary.rows_embedded = handled[0]
    return summary


def finish(store: ShardStore, done: dict[int, dict], file_counts: dict[int, int], engine: str,
           skipped: int) -> CorpusSummary:
    """The final manifest (complete) and the summary a caller prints; `skipped`: shards kept from an earlier run."""
    dim = store.schema.field("embedding").type.list_size if store.schema is not None else 0
    manifest = store.save_manifest(done, file_counts, {"engine": engine, "complete": True, "dim": dim})
    rows = manifest["rows"]
    return CorpusSummary(str(store.folder), rows["read"], rows["written"], rows["bad_skipped"], dim, len(done),
                         skipped, manifest)
