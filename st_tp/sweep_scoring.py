"""How a sweep's cells are scored (`CellScorer`), apart from how `st_tp.sweep.run_sweep` computes them: the texts in
the batches model.encode forms (`encode_batches`), and the STS scorer (`STSScorer`: cosine Spearman against an STS dev
set, computed as a built model's score is); the transfer scorer lives in st_tp.evaluation.senteval.dev_split."""

from __future__ import annotations

import functools
import itertools
import warnings
from collections.abc import Callable
from typing import Protocol
from unittest import mock

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr
from sentence_transformers import SentenceTransformer


def kept_layers(layers: list[int] | None, total_layers: int, first: int) -> list[int]:
    """The exit layers a sweep scores: `layers` (negative ones count from the end: -1 is the final-normed output), or
    all from `first` on; the others' cells are NaN."""
    kept = sorted({k if k >= 0 else total_layers + 1 + k for k in (range(first, total_layers + 1) if layers is None else layers)})
    if not kept or kept[0] < first or kept[-1] > total_layers:
        raise ValueError(f"layers {list(layers or [])}: this model's exit layers are {first}..{total_layers} (-1: "
                         f"{total_layers}, the final-normed output).")
    return kept


class CellScorer(Protocol):
    """How a sweep scores its cells, apart from how it computes them (`run_sweep`): the texts to embed, batch by batch,
    then every cell's last-token states of each batch, then one score per cell; and the same score for a model built
    with a cell's settings (through model.encode), which checks the preset the sweep writes. `STSScorer` scores
    cosine similarities against gold scores; st_tp.evaluation.senteval.dev_split.TransferDevScorer a classifier on a
    transfer task's dev split.

    `text_batches` gets `encode_batches(texts)`: the batches (index arrays into `texts`) that model.encode(texts)
    forms. A scorer batches its texts that way because a row's numbers depend in their last bits on the rows batched
    with it (the padded length attention runs at, the rows of each matmul). Batched as the built model's encode
    batches them, each cell's states were the built model's embeddings bit for bit on every model and dtype tested
    (tests/test_sweep.py), although a built model skips rows it never reads that the sweep computes; the sweep's
    check of its best cell catches a machine whose kernels round by row count."""

    metric: str
    description: str  # what it scores on, for the plots and best.yaml
    note: str  # appended to the progress bar's title once `start` has run (e.g. the memory the states take)

    def text_batches(self, encode_batches: Callable[[list[str]], list[np.ndarray]]) -> list[list[str]]: ...

    def start(self, rows: list[str | int], total_layers: int, hidden_size: int, dtype: torch.dtype) -> None: ...

    def add(self, cells: dict[tuple[str | int, int], torch.Tensor]) -> None: ...

    def scores(self) -> dict[str | int, list[float]]: ...

    def score_model(self, model: SentenceTransformer, batch_size: int) -> float: ...


def encode_batches(model: SentenceTransformer, texts: list[str], batch_size: int) -> list[np.ndarray]:
    """The batches model.encode(texts, batch_size=batch_size) forms, as index arrays into `texts`: found by letting
    encode form them (its own order, whatever the sentence-transformers release) with a forward that computes nothing
    and answers each row's (batch, place) as its embedding. Tokenizes the texts once."""
    numbers = itertools.count()

    def numbered(features: dict, **kwargs) -> dict:
        batch, rows = next(numbers), features["input_ids"].shape[0]
        return {"sentence_embedding": torch.tensor([[batch, row] for row in range(rows)], dtype=torch.float32)}

    with mock.patch.object(model[0], "forward", numbered):
        places = model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
    order = np.lexsort((places[:, 1], places[:, 0]))  # by batch, then by place in it
    return np.split(order, np.flatnonzero(np.diff(places[order, 0])) + 1)


def available_memory() -> int | None:
    """Bytes the kernel can still give this process without swapping (MemAvailable: free memory plus the page cache
    it can drop); None where /proc/meminfo is not there (no check)."""
    try:
        for line in open("/proc/meminfo", encoding="ascii"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_states_fit(what: str, need: int, items: int, total_layers: int) -> str:
    """The progress bar's note for `need` bytes of held states; a ValueError naming smaller settings if they would not
    fit in 80% of the available memory (`items`: the examples each side or split holds)."""
    free = available_memory()
    if free is not None and need > 0.8 * free:
        fits = max(int(items * 0.8 * free / need), 1)
        raise ValueError(f"{what} needs {need / 2**30:.1f} GiB, more than the {free / 2**30:.1f} GiB available: take "
                         f"fewer examples (e.g. sample={fits}) or fewer exit layers (e.g. layers="
                         f"{total_layers // 2}..{total_layers}).")
    return f"; {need / 2**30:.2f} GiB of held states"


def correlation(metric: str):
    if metric not in ("spearman", "pearson"):
        raise ValueError(f"metric must be 'spearman' or 'pearson', got {metric!r}.")
    return spearmanr if metric == "spearman" else pearsonr


class STSScorer:
    """Cosine Spearman (or Pearson) on an STS-like dev set, computed as `_sts_score` computes a built model's: the
    sentence1s in model.encode's batches, then the sentence2s in theirs, each batch's states L2-normalised as encode
    normalises them, the cosine a float32 dot product. The sentence1 states of every cell are held until the
    sentence2s come (pairs x rows x exit layers x hidden size float32 values)."""

    note = ""

    def __init__(self, pairs: tuple[list[str], list[str], np.ndarray], metric: str = "spearman",
                 layers: list[int] | None = None, description: str = "") -> None:
        correlation(metric)  # a bad name fails here, before any model loads
        self.s1, self.s2, self.gold = pairs
        self.metric, self.layers_given, self.description = metric, layers, description
        self.batches: list[tuple[int, np.ndarray]] = []  # (side: 0 sentence1, 1 sentence2; rows of the pairs)

    def text_batches(self, encode_batches: Callable[[list[str]], list[np.ndarray]]) -> list[list[str]]:
        self.batches = [(side, ids) for side, texts in enumerate((self.s1, self.s2)) for ids in encode_batches(texts)]
        return [[(self.s1, self.s2)[side][i] for i in ids] for side, ids in self.batches]

    def start(self, rows: list[str | int], total_layers: int, hidden_size: int, dtype: torch.dtype) -> None:
        self.kept = set(kept_layers(self.layers_given, total_layers, first=0))
        self.total_layers, self.hidden_size, self.done = total_layers, hidden_size, 0
        need = len(self.s1) * len(rows) * len(self.kept) * hidden_size * 4
        self.note = check_states_fit(f"an STS sweep of {len(self.s1)} pairs x {len(rows)} rows x {len(self.kept)} exit "
                                     f"layers x {hidden_size} float32 values", need, len(self.s1), total_layers)
        self.first = {(e, k): np.empty((len(self.s1), hidden_size), np.float32) for e in rows for k in self.kept}
        self.cosines = {cell: np.empty(len(self.s1), np.float32) for cell in self.first}

    def add(self, cells: dict[tuple[str | int, int], torch.Tensor]) -> None:
        side, ids = self.batches[self.done]
        self.done += 1
        for cell, states in cells.items():
            if cell in self.first:
                unit = torch.nn.functional.normalize(states.float(), p=2, dim=1).cpu().numpy()
                if side == 0:
                    self.first[cell][ids] = unit
                else:
                    self.cosines[cell][ids] = (self.first[cell][ids] * unit).sum(1)

    def scores(self) -> dict[str | int, list[float]]:
        score, rows = correlation(self.metric), dict.fromkeys(e for e, _ in self.first)
        self.first = {}  # the sentence1 states are done with: freed before the best cell is rebuilt
        with warnings.catch_warnings():  # constant cosines (layer 0) give NaN, reported as such in grid.csv
            warnings.simplefilter("ignore")
            return {e: [float(score(self.gold, self.cosines[(e, k)]).statistic) if k in self.kept else float("nan")
                        for k in range(self.total_layers + 1)] for e in rows}

    def score_model(self, model: SentenceTransformer, batch_size: int) -> float:
        return _sts_score(model, (self.s1, self.s2, self.gold), self.metric, 2 * batch_size)


def _sts_score(model: SentenceTransformer, pairs: tuple, metric: str, batch_size: int) -> float:
    s1, s2, gold = pairs
    embed = functools.partial(model.encode, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
    return float(correlation(metric)(gold, (embed(s1) * embed(s2)).sum(1)).statistic)
