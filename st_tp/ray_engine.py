"""`--engine ray`: the same corpus embedding on Ray Data, from one machine to a cluster.

Ray reads the input (`read_parquet`, `read_json`, `read_csv`, `read_text`), an actor pool (`map_batches` with
`ActorPoolStrategy`) runs the model, each actor loading the saved st_tp folder once by path (the model is never
pickled), and Ray's own actor restarts and task retries bring back a killed actor. With `preserve_order` the rows
come back to the driver in input order, so the driver numbers them and writes the very shards and manifest the
one-process engine writes (st_tp/corpus.py), resumable the same way. The driver only receives ids, embeddings and
kept columns, never the texts.

Ray is an optional extra (`pip install -e ".[ray]"`) and is imported only here, inside functions.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from st_tp.corpus import (
    BAD,
    CorpusInput,
    CorpusOptions,
    CorpusSummary,
    ShardAssembler,
    ShardStore,
    apply_bad_row_policy,
    bad_reasons,
    csv_options,
    finish,
    output_table,
)

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

PIP = 'pip install -e ".[ray]" (or: pip install "ray[data]>=2.40,<3")'
PATH = "path"  # the column Ray's readers add with include_paths=True
WORKER_ENV = {"TOKENIZERS_PARALLELISM": "false"}  # tokenizers' own thread pool would fight the actors for CPUs


def import_ray():
    """Ray and Ray Data, or one line naming the pip command."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise ValueError(f"--engine ray needs Ray Data, which is not installed: {PIP}") from None
    return ray


class EmbedBatch:
    """The actor: loads the saved model once (by path), then embeds every batch it is given.

    `on_bad_row`: "flag" keeps every row and says why a row could not be embedded in `_bad` (the corpus driver
    decides, knowing the row numbers); "error" raises naming the row's id; "skip" drops such rows."""

    def __init__(self, model_path: str, device: str, text_column: str = "text", batch_size: int = 32,
                 normalize: bool = False, output_dtype: str = "float32", threads: int = 1, on_bad_row: str = "error",
                 id_column: str | None = None, drop_text: bool = False):
        if device == "cpu":  # before torch is imported: a CPU actor never initialises CUDA, even on a GPU node
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        os.environ.update(WORKER_ENV)
        import torch

        from st_tp.corpus import Embedder

        torch.set_num_threads(max(1, threads))
        self.embed = Embedder(model_path, device, batch_size, normalize, output_dtype)
        self.text_column, self.on_bad_row, self.id_column, self.drop_text = text_column, on_bad_row, id_column, drop_text

    def __call__(self, batch: pa.Table) -> pa.Table:
        import numpy as np
        import pyarrow as pa

        from st_tp.corpus import embedding_array

        reasons = bad_reasons(batch, self.text_column, self.id_column)
        good = np.array([r is None for r in reasons], dtype=bool)
        if not good.all() and self.on_bad_row == "error":
            i = int(np.argmin(good))
            row_id = batch[self.id_column][i].as_py() if self.id_column else None
            raise ValueError(f"a row{f' (id {row_id!r})' if row_id is not None else ''} has a text (column "
                             f"{self.text_column!r}) that {reasons[i]}; fix it or pass on_bad_row='skip'.")
        texts = batch[self.text_column].filter(pa.array(good)).to_pylist()
        embedded = self.embed(texts)
        if self.on_bad_row == "skip":
            batch, vectors = batch.filter(pa.array(good)), embedded
        else:  # every row back; a bad row gets zeros and its reason (the driver leaves it out or stops)
            vectors = np.zeros((len(good), embedded.shape[1]), embedded.dtype)
            vectors[good] = embedded
        if BAD in batch.column_names:
            batch = batch.drop_columns([BAD])
        if self.drop_text:
            batch = batch.drop_columns([self.text_column])
        batch = batch.append_column("embedding", embedding_array(vectors))
        if self.on_bad_row == "flag":
            batch = batch.append_column(BAD, pa.array(reasons, pa.string()))
        return batch


def _settle_fsspec_http() -> None:
    """Work around a race in Ray Data's path resolution (seen with ray 2.60): it imports fsspec's HTTP filesystem
    from several threads at once, and without aiohttp that import fails; a thread that meets another's half-done
    import gets ImportError instead of the ModuleNotFoundError Ray catches, and the read fails. Importing it once
    here, and recording a failure as None in sys.modules, makes every later attempt fail at once, the Ray way."""
    try:
        import fsspec.implementations.http  # noqa: F401
    except ModuleNotFoundError:
        sys.modules.setdefault("fsspec.implementations.http", None)
    except ImportError:
        pass


def read_dataset(source: CorpusInput, columns: list[str] | None, first_file: int = 0) -> ray.data.Dataset:
    """The input through Ray's own readers, `path` column included (the driver counts rows per file with it);
    `columns` None: all of them."""
    ray = import_ray()
    _settle_fsspec_http()
    paths = [str(p.resolve()) for p in source.files[first_file:]]
    common = {"include_paths": True, "file_extensions": None}
    if source.format == "parquet":
        ds = ray.data.read_parquet(paths, columns=columns, **common)
    elif source.format == "jsonl":
        ds = ray.data.read_json(paths, lines=True, **common)
    elif source.format in ("csv", "tsv"):
        ds = ray.data.read_csv(paths, **common, **csv_options(source.format, columns, columns[0]))
    else:
        ds = ray.data.read_text(paths, encoding="utf-8-sig", drop_empty_lines=False, **common)
    return ds if columns is None else ds.select_columns(columns + [PATH])


def embed_dataset(ds_or_path: Any, model_path: str | os.PathLike, *, text_column: str = "text",
                  id_column: str | None = None, batch_size: int = 32, actors: int = 2, cpus_per_actor: float = 1,
                  gpus_per_actor: float = 0, normalize: bool = False, output_dtype: str = "float32",
                  on_bad_row: str = "error", rows_per_block: int | None = None) -> ray.data.Dataset:
    """A Ray Dataset with an `embedding` column added (fixed-size list of float32/float16), every other column
    passed through: for composing your own Ray pipeline (`.write_parquet(...)`, a join, a vector store sink).

    `ds_or_path` is a `ray.data.Dataset` or an input st_tp reads (.txt, .jsonl, .csv, .tsv, Parquet file, folder
    or glob). Each of `actors` actors loads `model_path` once, on "cuda" when `gpus_per_actor` > 0, else on "cpu"
    with CUDA hidden. A killed actor is restarted and its batches retried by Ray Data's defaults for actor pools
    (max_restarts=-1, max_task_retries=-1). Nothing runs until the dataset is consumed."""
    ray = import_ray()
    model_path = str(Path(model_path).resolve())
    if not Path(model_path, "modules.json").is_file():
        raise ValueError(f"model {model_path}: not a saved SentenceTransformer folder (no modules.json); give a "
                         "folder saved by `st-tp build` or model.save(...).")
    if on_bad_row not in ("error", "skip", "flag"):
        raise ValueError(f"on_bad_row {on_bad_row!r}: choose 'error' or 'skip'.")
    if not isinstance(ds_or_path, ray.data.Dataset):
        source = CorpusInput.resolve(ds_or_path)
        options = CorpusOptions(text_column=text_column, id_column=id_column, batch_size=batch_size)
        source.check(options)
        text_column = source.columns(options)[0]
        ds_or_path = read_dataset(source, None).drop_columns([PATH])  # every input column passed through
    device = "cuda" if gpus_per_actor > 0 else "cpu"
    env = {"env_vars": {"CUDA_VISIBLE_DEVICES": "", **WORKER_ENV}} if device == "cpu" else None
    return _small_blocks(ds_or_path, rows_per_block or max(batch_size * 8, 64)).map_batches(
        EmbedBatch,
        fn_constructor_kwargs={"model_path": model_path, "device": device, "text_column": text_column,
                               "batch_size": batch_size, "normalize": normalize, "output_dtype": output_dtype,
                               "threads": max(1, int(cpus_per_actor)), "on_bad_row": on_bad_row,
                               "id_column": id_column, "drop_text": on_bad_row == "flag"},
        compute=ray.data.ActorPoolStrategy(size=actors),
        batch_size=batch_size,
        batch_format="pyarrow",
        num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor or None,
        runtime_env=env,
    )


def _small_blocks(ds: ray.data.Dataset, rows: int) -> ray.data.Dataset:
    """Blocks of a few batches, streamed (no shuffle): a one-file input is one block otherwise, all of it on one
    actor, and a killed actor would redo all of it. Ray before the streaming repartition keeps its own blocks."""
    try:
        return ds.repartition(target_num_rows_per_block=rows)
    except TypeError:
        return ds


def init_ray(options: CorpusOptions):
    """Join `options.address` (or $RAY_ADDRESS), else start a local cluster with a CPU to spare for reading
    beside the actors; a cluster already started in this process (ray.init by the caller) is used as it is."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    address = options.address or os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": dict(WORKER_ENV)}
    if address:
        ray.init(address=address, runtime_env=runtime_env)
    else:
        needed = int(options.actors * options.cpus_per_actor) + 1
        ray.init(num_cpus=max(os.cpu_count() or 1, needed), runtime_env=runtime_env, include_dashboard=False)
    return ray


def run_ray(source: CorpusInput, store: ShardStore, done: dict[int, dict], model: str, options: CorpusOptions,
            estimate: int | None) -> CorpusSummary:
    """The corpus run of `embed_corpus(..., engine="ray")`: Ray reads and embeds, this process writes the shards."""
    import pyarrow.compute as pc

    ray = init_ray(options)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # rows return in input order: the driver numbers them
    context.enable_progress_bars = options.progress
    first_file, start_row = store.resume_point(done, options.shard_size)
    assembler = ShardAssembler(options.shard_size, start_row, done, first_file)
    skipped = len(done)
    if first_file < len(source.files):
        columns = source.columns(options)
        ds = embed_dataset(read_dataset(source, columns, first_file), model, text_column=columns[0],
                           id_column=options.id_column, batch_size=options.batch_size, actors=options.actors,
                           cpus_per_actor=options.cpus_per_actor, gpus_per_actor=options.gpus_per_actor,
                           normalize=options.normalize, output_dtype=options.output_dtype, on_bad_row="flag")
        index = {str(p.resolve()): i for i, p in enumerate(source.files)}
        try:
            for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                for file_index, rows in _split_by_file(batch, index, pc):
                    for shard in assembler.add(file_index, rows):
                        _write(shard, store, done, assembler, options, source)
        except ray.exceptions.RayError as error:
            raise _ray_error(error, source) from None
    for shard in assembler.finish(len(source.files)):
        _write(shard, store, done, assembler, options, source)
    return finish(store, done, assembler.file_counts, "ray", skipped)


def _split_by_file(batch: pa.Table, index: dict[str, int], pc) -> list[tuple[int, pa.Table]]:
    """A batch's rows grouped into runs of one input file each (in order), without the `path` column."""
    paths = batch[PATH]
    runs, start = [], 0
    for run_path, length in zip(*_run_lengths(paths, pc), strict=True):
        runs.append((index[str(Path(run_path).resolve())], batch.slice(start, length).drop_columns([PATH])))
        start += length
    return runs


def _run_lengths(paths, pc) -> tuple[list[str], list[int]]:
    values = pc.run_end_encode(paths.combine_chunks() if hasattr(paths, "combine_chunks") else paths)
    ends = values.run_ends.to_pylist()
    return values.values.to_pylist(), [b - a for a, b in zip([0] + ends[:-1], ends, strict=True)]


def _write(shard, store: ShardStore, done: dict[int, dict], assembler: ShardAssembler, options: CorpusOptions,
           source: CorpusInput) -> None:
    import pyarrow as pa

    keep = apply_bad_row_policy(shard, shard.table[BAD].to_pylist(), options, source)
    embedding = shard.table["embedding"] if keep is None else shard.table["embedding"].filter(pa.array(keep))
    table = output_table(shard.table, keep, embedding.combine_chunks(), options)
    done[shard.index] = store.write(shard, table, shard.table.num_rows, 0 if keep is None else keep.count(False))
    store.save_manifest(done, assembler.file_counts, {"engine": "ray", "complete": False})
    if options.on_shard:
        options.on_shard(done[shard.index])


def _ray_error(error: Exception, source: CorpusInput) -> ValueError:
    """A failed Ray job as one line: the cause's own message (a reader's parse error, a worker's exception)."""
    cause = error
    while getattr(cause, "cause", None) is not None and cause.cause is not cause:
        cause = cause.cause
    message = str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__
    return ValueError(f"--input {source.spec}: the Ray job failed: {message}")


__all__ = ["EmbedBatch", "embed_dataset", "import_ray"]
