"""`engine='ray'`: the same corpus embedding on Ray Data, from one machine to a cluster.

Ray reads the input (`read_parquet`, `read_json`, `read_csv`, `read_text`), an actor pool (`map_batches` with
`ActorPoolStrategy`) runs the model, each actor loading the saved st_tp folder once by path (the model is never
pickled), and Ray's own actor restarts and task retries bring back a killed actor. With `preserve_order` the rows
come back to the driver in input order, as shards for the one corpus loop (run.py). The driver only receives
ids, embeddings and kept columns, never the texts. A resume inside a file reads that file's unfinished rows here
and hands only those to Ray, so finished rows are never embedded again.

Ray is an optional extra (`pip install -e ".[ray]"`) and is imported only inside functions.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .inputs import CorpusInput
from .options import CorpusOptions
from .readers import BAD, csv_options, iter_input
from .rows import bad_reasons, embedding_array
from .store import Shard, ShardAssembler

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
        raise ValueError(f"engine='ray' needs Ray Data, which is not installed: {PIP}") from None
    return ray


class EmbedBatch:
    """The actor: loads the saved model once (by path), then embeds every batch it is given.

    `on_bad_row`: "flag" keeps every row and says why a row could not be embedded in `_bad` (the corpus loop
    decides, knowing the row numbers); "error" raises naming the row's id; "skip" drops such rows."""

    def __init__(self, model_path: str, device: str, text_column: str = "text", batch_size: int = 32,
                 normalize: bool = False, output_dtype: str = "float32", threads: int = 1, on_bad_row: str = "error",
                 id_column: str | None = None, drop_text: bool = False):
        if device == "cpu":  # before torch is imported: a CPU actor never initialises CUDA, even on a GPU node
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        os.environ.update(WORKER_ENV)
        import torch

        from .embedder import Embedder

        torch.set_num_threads(max(1, threads))
        self.embed = Embedder(model_path, device, batch_size, normalize, output_dtype)
        self.text_column, self.on_bad_row, self.id_column, self.drop_text = text_column, on_bad_row, id_column, drop_text

    def __call__(self, batch: pa.Table) -> pa.Table:
        import numpy as np
        import pyarrow as pa

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
        else:  # every row back; a bad row gets zeros and its reason (the corpus loop leaves it out or stops)
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


def _unfinished_rows(source: CorpusInput, columns: list[str], file_index: int, skip_rows: int) -> ray.data.Dataset:
    """The rows of one input file after its first `skip_rows` (a resume inside a file), read here with st_tp's
    readers and handed to Ray as blocks in the object store (which spills to disk): Ray's readers cannot start in
    the middle of a file, and reading it all again would embed finished rows again."""
    import pyarrow as pa

    ray = import_ray()
    single = CorpusInput(source.spec, source.format, (source.files[file_index],))
    path = str(source.files[file_index].resolve())
    refs = []
    for _, table in iter_input(single, columns, 0, skip_rows):
        if BAD not in table.column_names:
            table = table.append_column(BAD, pa.nulls(table.num_rows, pa.string()))
        refs.append(ray.put(table.append_column(PATH, pa.array([path] * table.num_rows, pa.string()))))
    return ray.data.from_arrow_refs(refs)


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


def init_ray(options: CorpusOptions) -> tuple[Any, bool]:
    """(ray, whether this call started it): join `options.address` (or $RAY_ADDRESS), else start a local cluster
    with a CPU to spare for reading beside the actors; a cluster already started in this process (ray.init by the
    caller) is used as it is. Ray's own logs stay at warnings and worker output stays in Ray's log files unless
    `options.verbose`."""
    ray = import_ray()
    quiet = not options.verbose
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.WARNING if quiet else logging.INFO)
        for handler in logging.getLogger(name).handlers if quiet else ():  # handlers: records of child loggers too
            if not any(isinstance(f, _Chatter) for f in handler.filters):
                handler.addFilter(_Chatter())
    if quiet:  # Ray Data warns once that its own bars are off: st_tp shows one bar of its own
        from ray.util.debug import log_once

        log_once("ray_data_progress_manager_disabled")
    if ray.is_initialized():
        return ray, False
    address = options.address or os.environ.get("RAY_ADDRESS")
    common = {"runtime_env": {"env_vars": dict(WORKER_ENV)}, "log_to_driver": not quiet,
              "logging_level": logging.WARNING if quiet else logging.INFO}
    if address:
        ray.init(address=address, **common)
    else:
        needed = int(options.actors * options.cpus_per_actor) + 1
        ray.init(num_cpus=max(os.cpu_count() or 1, needed), include_dashboard=False, **common)
    return ray, True


class _Chatter(logging.Filter):
    """Ray's warning that token authentication is on (Ray's default, not a problem); shown with `verbose`.

    Ray's C++ core worker in the driver prints one more line on every run, `E ... core_worker.cc ... constructor
    arguments in the object store and max_restarts > 0`. It is not an error of this run: Ray Data starts every
    actor of a pool restartable, with its arguments in the object store, which stay referenced for the whole job.
    It is left as Ray prints it (silencing it takes RAY_BACKEND_LOG_LEVEL, which prints a line of its own)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.pathname.endswith("authentication_token_setup.py")


class RayEngine:
    """A source of embedded shards from Ray Data actors; shuts down a cluster it started, also after an error."""

    name = "ray"

    def __init__(self, model: str, options: CorpusOptions):
        self.model, self.options = model, options
        self.ray, self.started = None, False

    def shards(self, source: CorpusInput, columns: list[str], assembler: ShardAssembler, first_file: int,
               skip_rows: int, progress: Callable[[int], None]) -> Iterator[Shard]:
        import pyarrow as pa
        import pyarrow.compute as pc

        options = self.options
        if first_file < len(source.files):
            self.ray, self.started = init_ray(options)
            ray = self.ray
            context = ray.data.DataContext.get_current()
            context.execution_options.preserve_order = True  # rows return in input order: the loop numbers them
            context.enable_progress_bars = options.progress and options.verbose
            pieces = []
            if skip_rows:
                pieces.append(_unfinished_rows(source, columns, first_file, skip_rows))
                first_file += 1
            if first_file < len(source.files):
                pieces.append(read_dataset(source, columns, first_file))
            index = {str(p.resolve()): i for i, p in enumerate(source.files)}
            for piece in pieces:
                ds = embed_dataset(piece, self.model, text_column=columns[0], id_column=options.id_column,
                                   batch_size=options.batch_size, actors=options.actors,
                                   cpus_per_actor=options.cpus_per_actor, gpus_per_actor=options.gpus_per_actor,
                                   normalize=options.normalize, output_dtype=options.output_dtype, on_bad_row="flag")
                try:
                    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                        progress(batch.num_rows)
                        for file_index, rows in _split_by_file(batch, index, pc):
                            yield from assembler.add(file_index, rows)
                except (ray.exceptions.RayError, pa.ArrowException) as error:  # a reader's or an actor's failure
                    raise _ray_error(error, source, columns) from None
        yield from assembler.finish(len(source.files))

    def close(self) -> None:
        if self.started and self.ray is not None and self.ray.is_initialized():
            self.ray.shutdown()
        self.started = False


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


def _ray_error(error: Exception, source: CorpusInput, columns: list[str]) -> ValueError:
    """A failed Ray job as the one line the local engine prints. Ray's readers name no line, so the input is read
    again here with st_tp's readers, which name the file and line of what they reject; if they accept it all,
    the line is the cause's own message (a worker's exception), not Ray's retry advice."""
    try:
        for _ in iter_input(source, columns):
            pass
    except ValueError as local:
        return local
    cause = error
    while getattr(cause, "cause", None) is not None and cause.cause is not cause:
        cause = cause.cause
    lines = [line.strip() for line in str(cause).strip().splitlines() if line.strip()]
    own = [line for line in lines if "DataContext" not in line and not line.startswith(("To change", "Traceback"))]
    message = (own or lines or [type(cause).__name__])[-1]
    return ValueError(f"input {source.spec}: the Ray job failed: {message}")


__all__ = ["EmbedBatch", "embed_dataset", "import_ray"]
