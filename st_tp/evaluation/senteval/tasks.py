"""The seven transfer tasks of the paper's Table 5: where their files are, how SentEval scores each, and each split's
sentences in the order SentEval embeds and classifies them.

SentEval sorts every split by length before batching (`sorted(zip(samples, labels), key=lambda z: (len(z[0]), z[1]))`,
MRPC by both lengths then the label) and hands the classifier the *sorted* rows, so the sort decides which rows
fall in which cross-validation fold: it is kept exactly, stable sort and all. A `sample` is drawn before it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from st_tp.data import kept_rows

from .readers import RawSplit, read_labelled_lines, read_mrpc, read_sst, read_trec

INNER_KFOLD, SPLIT, KFOLD = "inner-kfold", "split", "kfold"  # SentEval's InnerKFold/Split/KFoldClassifier
SAMPLE_SEED = 0


@dataclass(frozen=True)
class TransferTask:
    """One SentEval transfer task: its folder under data/downstream, its splits' readers, how it is scored."""

    name: str
    folder: str
    protocol: str  # INNER_KFOLD: k-fold CV on all data; SPLIT: train/dev/test; KFOLD: k-fold on train, then test
    nclasses: int
    splits: dict[str, Callable[[str, Path], RawSplit]]  # split -> reader(task, folder)
    pairs: bool = False  # MRPC: two sentences an example, features [|u-v|, u*v]

    def read(self, data: str | Path, splits: tuple[str, ...] | None = None) -> dict[str, RawSplit]:
        """The raw splits (all, or the named ones) from `data`, SentEval's data/downstream folder."""
        folder = Path(data) / self.folder
        return {name: read(self.name, folder) for name, read in self.splits.items() if splits is None or name in splits}


def _binary(*files: tuple[str, int]) -> dict[str, Callable]:
    return {"all": lambda task, folder: read_labelled_lines(task, folder, files)}


def _file(reader: Callable, name: str) -> Callable:
    return lambda task, folder: reader(task, folder / name)


TASKS: dict[str, TransferTask] = {task.name: task for task in [
    # label 1 for the first file (SentEval: pos + neg; SUBJ passes the objective sentences first)
    TransferTask("MR", "MR", INNER_KFOLD, 2, _binary(("rt-polarity.pos", 1), ("rt-polarity.neg", 0))),
    TransferTask("CR", "CR", INNER_KFOLD, 2, _binary(("custrev.pos", 1), ("custrev.neg", 0))),
    TransferTask("SUBJ", "SUBJ", INNER_KFOLD, 2, _binary(("subj.objective", 1), ("subj.subjective", 0))),
    TransferTask("MPQA", "MPQA", INNER_KFOLD, 2, _binary(("mpqa.pos", 1), ("mpqa.neg", 0))),
    TransferTask("SST2", "SST/binary", SPLIT, 2, {split: _file(read_sst, f"sentiment-{split}")
                                                  for split in ("train", "dev", "test")}),
    TransferTask("TREC", "TREC", KFOLD, 6, {"train": _file(read_trec, "train_5500.label"),
                                            "test": _file(read_trec, "TREC_10.label")}),
    TransferTask("MRPC", "MRPC", KFOLD, 2, {"train": _file(read_mrpc, "msr_paraphrase_train.txt"),
                                            "test": _file(read_mrpc, "msr_paraphrase_test.txt")}, pairs=True),
]}
TRANSFER = tuple(TASKS)  # the paper's Table 5 order: MR, CR, SUBJ, MPQA, SST2, TREC, MRPC


def resolve_tasks(tasks: str | list[str]) -> list[TransferTask]:
    """'transfer' (all seven), or task names (a comma-separated string or a list), case-insensitive."""
    names = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    by_lower = {name.lower(): name for name in TASKS} | {"sst-2": "SST2", "sst": "SST2"}
    found = []
    for name in (n.strip() for n in names if n.strip()):
        if name.lower() == "transfer":
            found += TASKS.values()
            continue
        if name.lower() not in by_lower:
            close = difflib.get_close_matches(name.upper(), [*TASKS, "transfer"], n=1)
            hint = f" Did you mean {close[0]}?" if close else ""
            raise ValueError(f"unknown SentEval transfer task {name!r}.{hint} Known: transfer, {', '.join(TASKS)}.")
        found.append(TASKS[by_lower[name.lower()]])
    if not found:
        raise ValueError(f"tasks is empty: name at least one of transfer, {', '.join(TASKS)}.")
    return list({task.name: task for task in found}.values())  # in the order given, once each


@dataclass
class Split:
    """One split as SentEval embeds it: rows sorted as SentEval sorts them; `sides` holds one list of texts (two for
    MRPC: the first and second sentences), each token list joined with ' ' as the official batcher joins it."""

    sides: tuple[list[str], ...]
    labels: np.ndarray
    source_rows: np.ndarray  # each sorted row's index in its file (0-based; MRPC: after the header)

    def __len__(self) -> int:
        return len(self.labels)


def sampled(split: RawSplit, sample: int | None, limit: int | None = None, seed: int = SAMPLE_SEED) -> np.ndarray:
    """Indices of the rows kept, in file order: at most `sample` drawn at random, then the first `limit` of those
    (st_tp.data.kept_rows, the draw every st_tp reader makes)."""
    return kept_rows(len(split), limit, sample, seed)


def senteval_order(split: RawSplit, rows: np.ndarray) -> list[int]:
    """`rows` sorted as SentEval sorts a split before batching: by token count then label (MRPC: both token counts,
    then the label); Python's sort is stable, as SentEval relies on."""
    def key(row: int) -> tuple:
        return (*(len(tokens) for tokens in split.examples[row]), split.labels[row])

    return sorted(rows.tolist(), key=key)


def prepare(split: RawSplit, sample: int | None = None, limit: int | None = None) -> Split:
    """A raw split, sampled, in SentEval's order, its token lists joined."""
    order = senteval_order(split, sampled(split, sample, limit))
    sides = tuple([" ".join(split.examples[row][side]) for row in order] for side in range(len(split.examples[0])))
    return Split(sides, np.array([split.labels[row] for row in order]), np.array(order))
