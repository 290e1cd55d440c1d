"""How sure a difference between two models is: a paired bootstrap over test items, from the predictions mteb saves.

mteb writes each task's raw predictions (`mteb.evaluate(..., prediction_folder=...)`: similarity scores per pair,
predicted labels per classifier experiment, cluster assignments, per-document summary scores). Resampling the test
items and re-scoring both models' predictions on the *same* resample gives the spread of the difference that comes
from which items happen to be in the test set. Each resample is scored by the task's own metric code (mteb's
`_calculate_scores` / `_compute_metrics` / the evaluator's `_calculate_metrics`), and the full sample must give back
the score mteb reported, so the interval is about the number in the tables and not about a re-implementation of it.

What is resampled: STS and pair-classification pairs, classification test texts (the classifiers stay as trained),
clustering texts within each set (the clustering stays as computed), summarization documents. Not covered: mteb's
fast clustering (it subsamples internally and saves no item indices) and reranking/retrieval.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mteb.abstasks.classification import AbsTaskClassification
from mteb.abstasks.clustering_legacy import AbsTaskClusteringLegacy
from mteb.abstasks.pair_classification import AbsTaskPairClassification
from mteb.abstasks.sts import AbsTaskSTS
from mteb.abstasks.text.summarization import AbsTaskSummarization
from sklearn.metrics import accuracy_score

Indices = list[np.ndarray]  # one index array per stratum (a clustering set; one stratum for every other task)


@dataclass
class TaskScorer:
    """A task's main score as a function of which test items count: `sizes` items per stratum, `score(indices)`."""

    sizes: list[int]
    score: Callable[[Indices], float]
    unit: str  # what one item is, for the table: "pairs", "texts", "documents"

    def full(self) -> float:
        return self.score([np.arange(n) for n in self.sizes])


@dataclass
class PairedDelta:
    """Model B minus model A on one task (or a category average): the full-sample delta, a percentile interval of the
    bootstrap deltas, and the two-sided bootstrap p-value of "no difference"."""

    name: str
    items: str
    score_a: float
    score_b: float
    delta: float
    low: float
    high: float
    p_value: float


def read_predictions(folder: str | Path, task) -> Any:
    """The predictions mteb saved for `task` in `folder` (one subset, the test split)."""
    path = Path(folder) / task.prediction_file_name  # mteb's own name: <task>_predictions.json
    if not path.is_file():
        raise ValueError(f"no predictions for {task.metadata.name} in {folder} (expected {path.name}, written by "
                         "mteb.evaluate with prediction_folder=...; a task served from the results cache writes none).")
    saved = json.loads(path.read_text(encoding="utf-8"))
    subsets = [key for key in saved if key != "mteb_model_meta"]
    if len(subsets) != 1 or "test" not in saved[subsets[0]]:
        raise ValueError(f"{path}: expected predictions for one subset's test split, found subsets {subsets}.")
    return saved[subsets[0]]["test"]


def _test_split(task):
    """The task's test split (loading the data if needed), for single-subset tasks as st_tp's local tasks are."""
    if not task.data_loaded:
        task.load_data()
    dataset = task.dataset
    if "default" in dataset and "test" not in dataset:
        dataset = dataset["default"]
    return dataset["test"]


def _subset(values: dict[str, Sequence], index: np.ndarray) -> dict[str, list]:
    return {key: None if v is None else [v[i] for i in index] for key, v in values.items()}


def task_scorer(task, predictions: Any) -> TaskScorer:
    """The main score of `task` on any subset of its test items, from one model's saved `predictions`."""
    main = task.metadata.main_score
    if isinstance(task, AbsTaskSTS):
        gold = [task._normalize(x) for x in _test_split(task)["score"]]
        return TaskScorer([len(gold)], lambda idx: task._calculate_scores(_subset(predictions, idx[0]),
                                                                          [gold[i] for i in idx[0]])[main], "pairs")
    if isinstance(task, AbsTaskPairClassification):
        split = _test_split(task)
        labels = split[0][task.label_column_name] if len(split) == 1 else split[task.label_column_name]
        labels = np.asarray(labels)
        arrays = {key: np.asarray(v) for key, v in predictions.items()}
        return TaskScorer([len(labels)], lambda idx: task._compute_metrics(
            {key: v[idx[0]] for key, v in arrays.items()}, labels[idx[0]].tolist())[main], "pairs")
    if isinstance(task, AbsTaskClassification):
        gold = np.asarray(_test_split(task)[task.label_column_name])
        experiments = [np.asarray(p) for p in predictions]
        if main == "accuracy":  # mteb's own score: sklearn's accuracy_score per experiment, averaged (the other
            # metrics of _calculate_scores cost 10x more per resample and are not reported)
            def score(idx):
                return float(np.mean([accuracy_score(gold[idx[0]], p[idx[0]]) for p in experiments]))
        else:
            def score(idx):
                return task._calculate_avg_scores([task._calculate_scores(gold[idx[0]], p[idx[0]]) for p in experiments])[main]
        return TaskScorer([len(gold)], score, "texts")
    if isinstance(task, AbsTaskClusteringLegacy):
        sets = [np.asarray(s[task.label_column_name]) for s in _test_split(task)]
        clusters = [np.asarray(c) for c in predictions]
        if len(sets) != len(clusters):
            raise ValueError(f"{task.metadata.name}: {len(clusters)} saved clusterings for {len(sets)} sets (a set with "
                             "one label is not clustered by mteb); the bootstrap needs one per set.")
        return TaskScorer([len(s) for s in sets], lambda idx: float(np.mean(
            [task._compute_metrics(s[i].tolist(), c[i].tolist(), v_measure_only=True)[main]
             for s, c, i in zip(sets, clusters, idx, strict=True)])), "texts")
    if isinstance(task, AbsTaskSummarization):
        evaluator = object.__new__(task.evaluator)  # _calculate_metrics reads nothing of the instance
        documents = len(predictions["human_scores"])
        return TaskScorer([documents], lambda idx: evaluator._calculate_metrics(_subset(predictions, idx[0]))[main],
                          "documents")
    raise ValueError(f"{task.metadata.name}: no paired bootstrap for {type(task).__mro__[1].__name__} tasks (covered: "
                     "STS, pair classification, classification, legacy clustering, summarization).")


def _resamples(sizes: list[int], resamples: int, rng: np.random.Generator) -> list[Indices]:
    return [[rng.integers(0, n, n) for n in sizes] for _ in range(resamples)]


def _summary(name: str, items: str, a: float, b: float, deltas: np.ndarray) -> PairedDelta:
    deltas = deltas[np.isfinite(deltas)]  # a resample of a tiny set can be constant: its correlation is undefined
    if not len(deltas):
        return PairedDelta(name, items, a, b, b - a, float("nan"), float("nan"), float("nan"))
    low, high = np.percentile(deltas, [2.5, 97.5])
    p_value = min(1.0, 2 * min(np.mean(deltas <= 0), np.mean(deltas >= 0)))
    return PairedDelta(name, items, a, b, b - a, float(low), float(high), float(p_value))


def paired_bootstrap(tasks: list, predictions_a: str | Path, predictions_b: str | Path, *, reported_a: dict[str, float],
                     reported_b: dict[str, float], resamples: int = 1000, seed: int = 0,
                     tolerance: float = 1e-4) -> tuple[list[PairedDelta], PairedDelta | None]:
    """Per task and for the average over `tasks`: model B minus model A, with a 95% interval from `resamples` paired
    resamples of the test items (seed `seed`). `reported_*` are the main scores mteb reported per task name: the
    predictions must give them back on the full sample (to `tolerance`), else a ValueError names the task."""
    rng = np.random.default_rng(seed)
    rows, all_deltas = [], []
    for task in tasks:
        name = task.metadata.name
        scorers = [task_scorer(task, read_predictions(folder, task)) for folder in (predictions_a, predictions_b)]
        if scorers[0].sizes != scorers[1].sizes:
            raise ValueError(f"{name}: the two models' predictions cover different items ({scorers[0].sizes} vs "
                             f"{scorers[1].sizes}); evaluate both on the same slice.")
        full = [scorer.full() for scorer in scorers]
        for label, value, reported in zip("AB", full, (reported_a, reported_b), strict=True):
            if abs(value - reported[name]) > tolerance:
                raise ValueError(f"{name}: model {label}'s saved predictions give {value:.6f}, mteb reported "
                                 f"{reported[name]:.6f}; the predictions are from another run (delete them and rerun).")
        draws = _resamples(scorers[0].sizes, resamples, rng)
        with warnings.catch_warnings():  # constant resamples (NaN correlations) are dropped in _summary
            warnings.simplefilter("ignore")
            deltas = np.array([scorers[1].score(idx) - scorers[0].score(idx) for idx in draws])
        rows.append(_summary(name, f"{sum(scorers[0].sizes)} {scorers[0].unit}", *full, deltas))
        all_deltas.append(deltas)
    if not rows:
        return rows, None
    mean_a, mean_b = np.mean([r.score_a for r in rows]), np.mean([r.score_b for r in rows])
    average = _summary(f"Average ({len(rows)})", "each task resampled", float(mean_a), float(mean_b),
                       np.mean(all_deltas, axis=0))  # a replicate with any undefined task delta is dropped
    return rows, average


def transfer_bootstrap(results_a: dict[str, dict], results_b: dict[str, dict], *, resamples: int = 1000,
                       seed: int = 0) -> tuple[list[PairedDelta], PairedDelta | None]:
    """The same for SentEval transfer tasks, from `st-tp senteval`'s per-item predictions ({task: the `result` of its
    predictions file: gold, predictions, source_rows}): accuracy over resampled items (test items; out-of-fold
    items for the cross-validated tasks, whose reported accuracy is the mean over folds, equal to the item accuracy
    up to SentEval's rounding of each fold). Items are matched by their row in the task's files."""
    rng = np.random.default_rng(seed)
    rows, all_deltas = [], []
    for task in results_a:
        if task not in results_b:
            continue
        correct, gold = [], []
        for result in (results_a[task], results_b[task]):
            correct.append(dict(zip(result["source_rows"], np.equal(result["predictions"], result["gold"]), strict=True)))
            gold.append(dict(zip(result["source_rows"], result["gold"], strict=True)))
        if set(correct[0]) != set(correct[1]) or gold[0] != gold[1]:
            raise ValueError(f"{task}: the two models' predictions cover different items; run both on the same sample.")
        items = sorted(correct[0])
        hits = [np.array([c[i] for i in items], dtype=float) for c in correct]
        draws = rng.integers(0, len(items), (resamples, len(items)))
        deltas = hits[1][draws].mean(1) - hits[0][draws].mean(1)
        rows.append(_summary(task, f"{len(items)} items", hits[0].mean(), hits[1].mean(), deltas))
        all_deltas.append(deltas)
    if not rows:
        return rows, None
    average = _summary(f"Average ({len(rows)})", "each task resampled", float(np.mean([r.score_a for r in rows])),
                       float(np.mean([r.score_b for r in rows])), np.mean(all_deltas, axis=0))
    return rows, average


def significance_table(rows: list[PairedDelta], average: PairedDelta | None, label_a: str, label_b: str,
                       resamples: int) -> list[str]:
    """Markdown lines: x100 scores, delta, its 95% bootstrap interval and p."""
    lines = [f"| Task | items | {label_a} | {label_b} | delta | 95% interval ({resamples} paired resamples) | p |",
             "|---|---|---|---|---|---|---|"]
    for row in [*rows, *([average] if average else [])]:
        name = f"**{row.name}**" if row is average else row.name
        lines.append(f"| {name} | {row.items} | {100 * row.score_a:.2f} | {100 * row.score_b:.2f} | "
                     f"{100 * row.delta:+.2f} | [{100 * row.low:+.2f}, {100 * row.high:+.2f}] | {row.p_value:.3f} |")
    return lines
