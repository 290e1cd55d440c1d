"""One task scored on its embeddings, as SentEval's task classes do it (`senteval/{binary,sst,trec,mrpc}.py`, `run`):
the features (MRPC: `np.c_[|u - v|, u * v]` of the two sentences' embeddings), then the task's protocol."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .classifiers import ClassifierSettings
from .protocol import inner_kfold, kfold_then_test, split_validation
from .tasks import INNER_KFOLD, SPLIT, Split, TransferTask


@dataclass
class TaskResult:
    """SentEval's result dict for a task (devacc, acc, MRPC's f1, ndev, ntest) and the predictions behind acc."""

    task: str
    acc: float
    devacc: float
    ndev: int
    ntest: int
    f1: float | None = None
    scored: str = "test"  # "out-of-fold" (the cross-validated tasks) or "test"
    gold: list[int] = field(default_factory=list)
    predictions: list[int] = field(default_factory=list)
    source_rows: list[int] = field(default_factory=list)  # each scored row's line in its file (0-based, after the header)
    chosen: list[float] = field(default_factory=list)  # the regularisation chosen (per outer fold when cross-validated)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> TaskResult:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def parts(task: TransferTask, splits: dict[str, Split]) -> dict[str, list[str]]:
    """The texts to embed, by part name: one per split, two (A, B) per split of a pair task."""
    if task.pairs:
        return {f"{name}.{side}": split.sides[i] for name, split in splits.items() for i, side in enumerate("AB")}
    return {name: split.sides[0] for name, split in splits.items()}


def features(task: TransferTask, splits: dict[str, Split], embeddings: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if not task.pairs:
        return {name: embeddings[name] for name in splits}
    out = {}
    for name in splits:
        a, b = embeddings[f"{name}.A"], embeddings[f"{name}.B"]
        out[name] = np.c_[np.abs(a - b), a * b]
    return out


def score_task(task: TransferTask, splits: dict[str, Split], embeddings: dict[str, np.ndarray],
               settings: ClassifierSettings) -> TaskResult:
    X = features(task, splits, embeddings)
    y = {name: split.labels for name, split in splits.items()}
    if task.protocol == INNER_KFOLD:
        scored = inner_kfold(X["all"], y["all"], settings, task.nclasses)
        sizes, rows, kind = (len(y["all"]), len(y["all"])), splits["all"].source_rows, "out-of-fold"
    elif task.protocol == SPLIT:
        scored = split_validation((X["train"], y["train"]), (X["dev"], y["dev"]), (X["test"], y["test"]), settings,
                                  task.nclasses)
        sizes, rows, kind = (len(y["dev"]), len(y["test"])), splits["test"].source_rows, "test"
    else:
        scored = kfold_then_test((X["train"], y["train"]), (X["test"], y["test"]), settings, task.nclasses)
        sizes, rows, kind = (len(y["train"]), len(y["test"])), splits["test"].source_rows, "test"
    f1 = None
    if task.name == "MRPC":
        from sklearn.metrics import f1_score

        f1 = float(round(100 * f1_score(scored.gold, scored.predictions), 2))  # SentEval's rounding
    return TaskResult(task.name, scored.acc, scored.devacc, *sizes, f1=f1, scored=kind,
                      gold=[int(v) for v in scored.gold], predictions=[int(v) for v in scored.predictions],
                      source_rows=[int(r) for r in rows], chosen=[float(c) for c in scored.chosen])
