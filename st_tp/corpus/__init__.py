"""Embed a corpus larger than memory: stream rows in, write a Parquet dataset shard by shard, resume.

    options.py    CorpusOptions: the settings, checked once
    inputs.py     CorpusInput: which files, which format; checked before any model loads
    readers.py    Arrow tables in input order (pyarrow.dataset, pyarrow.json, a line-by-line JSONL fallback)
    rows.py       bad rows (one wording), the table written for a shard
    ids.py        duplicate ids, refused in bounded memory
    store.py      shards by row number, atomic part files, the manifest, the run lock, resume
    embedder.py   the model: its fingerprint, the embedder both engines run
    local.py      engine 'local': this process
    ray_engine.py engine 'ray': Ray Data actors (Ray imported only there, inside functions)
    run.py        embed_corpus: picks the engine, runs THE loop
    npy.py        the second writer: a small input into one .npy

Nothing here imports pyarrow, torch or Ray at module level: `import st_tp` stays light."""

from __future__ import annotations

from .inputs import CorpusInput
from .options import CorpusOptions
from .run import CorpusSummary, Interrupted, embed_corpus


def __getattr__(name: str):
    if name == "embed_dataset":  # Ray is imported only when this is called
        from .ray_engine import embed_dataset

        return embed_dataset
    raise AttributeError(f"module 'st_tp.corpus' has no attribute {name!r}")


__all__ = ["CorpusInput", "CorpusOptions", "CorpusSummary", "Interrupted", "embed_corpus", "embed_dataset"]
