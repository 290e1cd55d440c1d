"""SentEval's three ways of scoring a task on fixed features (facebookresearch/SentEval,
`senteval/tools/validation.py`), with its seeds, folds, grids and rounding:

* `inner_kfold` (MR, CR, SUBJ, MPQA; InnerKFoldClassifier): StratifiedKFold(k, shuffle, random_state=1111) over
  the data; in each outer fold the regularisation is chosen by an inner StratifiedKFold (same seed) on its training
  part, then refit on that part and scored on the held-out fold. acc = the mean of the outer folds' accuracies.
* `split_validation` (SST-2; SplitClassifier): the regularisation chosen on dev, then the test accuracy.
* `kfold_then_test` (TREC, MRPC; KFoldClassifier): the regularisation chosen by StratifiedKFold(k, shuffle,
  random_state=seed) on train, then refit on all of train and scored on test.

Scores are SentEval's: percentages rounded to 2 decimals at the same steps (the rounding decides ties in the choice
of the regularisation, the first best winning). Besides, each returns every row's prediction: out of fold for
`inner_kfold`, on test otherwise, which SentEval computes but does not return.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .classifiers import ClassifierSettings
from .tasks import INNER_KFOLD, KFOLD, SPLIT


@dataclass
class Scored:
    """A task's SentEval scores and the predictions behind them."""

    devacc: float  # SentEval's devacc (x100)
    acc: float  # SentEval's acc (x100): the reported metric
    predictions: np.ndarray  # per row of the scored rows (out-of-fold, or test)
    gold: np.ndarray
    chosen: list[float] = field(default_factory=list)  # the regularisation chosen (per outer fold for inner_kfold)


def _folds(k: int, seed: int):
    from sklearn.model_selection import StratifiedKFold

    return StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)


def _fit(settings: ClassifierSettings, X, y, nclasses: int, reg: float, **validation):
    classifier = settings.make(X.shape[1], nclasses, reg)
    classifier.fit(X, y, **validation)
    return classifier


def inner_kfold(X: np.ndarray, y: np.ndarray, settings: ClassifierSettings, nclasses: int) -> Scored:
    regs = settings.regularisations(INNER_KFOLD)
    outer, inner = _folds(settings.kfold, 1111), _folds(settings.kfold, 1111)  # SentEval fixes 1111 here
    dev_results, test_results, chosen = [], [], []
    predictions = np.zeros(len(y), dtype=np.int64)
    for train_idx, test_idx in outer.split(X, y):
        X_train, X_test, y_train, y_test = X[train_idx], X[test_idx], y[train_idx], y[test_idx]
        scores = []
        for reg in regs:
            fold_scores = []
            for in_train, in_test in inner.split(X_train, y_train):
                classifier = _fit(settings, X_train[in_train], y_train[in_train], nclasses, reg,
                                  validation_data=(X_train[in_test], y_train[in_test]))
                fold_scores.append(classifier.score(X_train[in_test], y_train[in_test]))
            scores.append(round(100 * np.mean(fold_scores), 2))
        best = regs[int(np.argmax(scores))]
        chosen.append(best)
        dev_results.append(np.max(scores))
        classifier = _fit(settings, X_train, y_train, nclasses, best, validation_split=0.05)
        test_results.append(round(100 * classifier.score(X_test, y_test), 2))
        predictions[test_idx] = classifier.predict(X_test)
    return Scored(float(round(np.mean(dev_results), 2)), float(round(np.mean(test_results), 2)), predictions, y, chosen)


def select_on_dev(train: tuple[np.ndarray, np.ndarray], dev: tuple[np.ndarray, np.ndarray],
                  settings: ClassifierSettings, nclasses: int) -> tuple[float, float]:
    """SplitClassifier's choice: (the best dev accuracy x100, rounded as SentEval rounds it; its regularisation)."""
    regs = settings.regularisations(SPLIT)
    scores = [round(100 * _fit(settings, *train, nclasses, reg, validation_data=dev).score(*dev), 2) for reg in regs]
    return float(np.max(scores)), regs[int(np.argmax(scores))]


def split_validation(train: tuple[np.ndarray, np.ndarray], dev: tuple[np.ndarray, np.ndarray],
                     test: tuple[np.ndarray, np.ndarray], settings: ClassifierSettings, nclasses: int) -> Scored:
    devacc, best = select_on_dev(train, dev, settings, nclasses)
    classifier = _fit(settings, *train, nclasses, best, validation_data=dev)
    acc = round(100 * classifier.score(*test), 2)
    return Scored(devacc, float(acc), classifier.predict(test[0]), test[1], [best])


def kfold_then_test(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                    settings: ClassifierSettings, nclasses: int) -> Scored:
    (X, y), regs = train, settings.regularisations(KFOLD)
    folds = list(_folds(settings.kfold, settings.seed).split(X, y))
    scores = []
    for reg in regs:
        fold_scores = [_fit(settings, X[a], y[a], nclasses, reg, validation_data=(X[b], y[b])).score(X[b], y[b])
                       for a, b in folds]
        scores.append(round(100 * np.mean(fold_scores), 2))
    best = regs[int(np.argmax(scores))]
    classifier = _fit(settings, X, y, nclasses, best, validation_split=0.05)
    predictions = classifier.predict(test[0])
    acc = round(100 * classifier.score(*test), 2)
    return Scored(float(np.max(scores)), float(acc), predictions, test[1], [best])
