"""The second writer behind `embed_corpus`: a small input into one .npy matrix, in memory (row i is input row i,
blank lines of a .txt kept as the empty text unless on_bad_row='skip')."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .inputs import CorpusInput
from .options import CorpusOptions
from .readers import iter_input
from .rows import bad_reasons, rows_to_keep


@dataclass
class NpySummary:
    """What a .npy run did; `texts`, `embeddings` and `model` stay for a caller that looks further (similarity)."""

    output: str
    rows_read: int
    rows_written: int
    bad_skipped: int
    dim: int
    device: str
    kind: str  # "lines" (a .txt) or "rows"
    texts: list[str] = field(repr=False, default_factory=list)
    embeddings: Any = field(repr=False, default=None)
    model: Any = field(repr=False, default=None)


def read_all_texts(source: CorpusInput, options: CorpusOptions, keep_empty: bool) -> tuple[list[str], int, int]:
    """(texts, rows read, bad rows skipped) of a small input. `keep_empty` keeps blank lines of a .txt as the
    empty text (row i of the .npy is line i, as `st-tp encode` always did)."""
    source.check(options)
    columns = source.columns(options)
    texts, read, skipped = [], 0, 0
    for _, table in iter_input(source, columns):
        reasons = bad_reasons(table, columns[0], options.id_column)
        if keep_empty:
            reasons = [None if r == "is empty" else r for r in reasons]
        keep = rows_to_keep(table, read, reasons, options, source)
        column = table[columns[0]] if keep is None else table[columns[0]].filter(keep)
        texts.extend(column.to_pylist())
        read += table.num_rows
        skipped += 0 if keep is None else keep.count(False)
    return texts, read, skipped


def embed_to_npy(source: CorpusInput, output: Path, model: str, options: CorpusOptions) -> NpySummary:
    """Every text of `source` embedded by `model` (a saved folder or any SentenceTransformer name) into `output`."""
    if options.engine == "ray":
        raise ValueError(f"engine='ray' writes a Parquet dataset: give output a folder ending in / (e.g. "
                         f"{str(output).removesuffix('.npy')}/).")
    folder = output.parent
    if not folder.is_dir():
        raise ValueError(f"output {output}: the folder {folder} does not exist; create it first (mkdir -p {folder}).")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"output {output}: the folder {folder} is not writable.")
    txt = source.format == "txt"
    texts, read, skipped = read_all_texts(source, options, keep_empty=txt and options.on_bad_row == "error")
    if not texts:
        raise ValueError(f"input {source.spec}: no sentences to embed.")
    import numpy as np
    from sentence_transformers import SentenceTransformer

    st_model = SentenceTransformer(model, trust_remote_code=True, device=options.device)
    embeddings = st_model.encode(texts, batch_size=options.batch_size, show_progress_bar=options.progress,
                                 normalize_embeddings=options.normalize)
    np.save(output, embeddings.astype(options.output_dtype, copy=False))
    return NpySummary(str(output), read, len(texts), skipped, int(embeddings.shape[1]),
                      str(st_model.device), "lines" if txt else "rows", texts, embeddings, st_model)
