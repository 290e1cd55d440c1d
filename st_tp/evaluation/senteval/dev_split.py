"""The transfer sweep's scorer (st_tp.sweep.sweep_transfer): every (tp_end, output_layer) cell scored by a SentEval
transfer task's dev split, never by its test split.

* SST2: trained on SST-2 train, scored on SST-2 dev (the test file is not read).
* TREC, MRPC: a held-out fold of train (the first of SentEval's StratifiedKFold(10, shuffle, random_state=1111)
  folds over the SentEval-sorted train rows) is the dev split; the test file is not read.
* MR, CR, SUBJ, MPQA have no split apart from the data they are scored on by cross-validation, so they are refused.

A cell's score is what the official TP code's dev mode reports for a transfer task, SentEval's SplitClassifier
`devacc`: scikit-learn's logistic regression fitted on train for each C of SentEval's grid, the best dev accuracy
(x100, rounded to 2 decimals as SentEval rounds it), here / 100.

Memory: the scorer keeps every kept cell's state of every train and dev text until the pass is over, that is
texts x rows (tp_ends + vanilla) x exit layers x hidden size values. `feature_dtype='auto'` holds them in the
dtype the model computes in when that loses nothing (a 16-bit model and a one-template prompt: the states are that
dtype's values), else float32; `layers` keeps fewer exit layers. The estimate is checked against the memory this
machine has free before the pass starts.
"""

from __future__ import annotations

import numpy as np

from st_tp.sweep_scoring import check_states_fit, kept_layers

from .classifiers import SKLEARN, ClassifierSettings
from .evaluate import features
from .protocol import select_on_dev
from .tasks import INNER_KFOLD, SPLIT, Split, prepare, resolve_tasks

FEATURE_DTYPES = ("auto", "float32", "bfloat16", "float16")


def _subset(split: Split, rows: np.ndarray) -> Split:
    return Split(tuple([side[i] for i in rows] for side in split.sides), split.labels[rows], split.source_rows[rows])


def held_out_fold(split: Split, seed: int = 1111) -> tuple[Split, Split]:
    """(train, dev): the first of SentEval's 10 stratified folds over `split` as dev, the other nine as train."""
    from sklearn.model_selection import StratifiedKFold

    train_rows, dev_rows = next(StratifiedKFold(10, shuffle=True, random_state=seed).split(split.labels, split.labels))
    return _subset(split, train_rows), _subset(split, dev_rows)


class TransferDevScorer:
    """st_tp.sweep's CellScorer for a transfer task's dev split (see the module docstring)."""

    metric = "accuracy"

    def __init__(self, task: str, data, *, sample: int | None = None, limit: int | None = None,
                 layers: list[int] | None = None, feature_dtype: str = "auto", templates: int = 1,
                 classifier: ClassifierSettings | None = None) -> None:
        found = resolve_tasks([task])
        if len(found) != 1:
            raise ValueError(f"{task!r}: a transfer sweep scores one task (SST2, TREC or MRPC).")
        self.task = found[0]
        if self.task.protocol == INNER_KFOLD:
            raise ValueError(f"{self.task.name} has no split apart from the data SentEval cross-validates it on, so a "
                             "setting chosen on it would be chosen on its test data: sweep on SST2 (its dev set), TREC "
                             "or MRPC (a held-out fold of their train set).")
        if feature_dtype not in FEATURE_DTYPES:
            raise ValueError(f"feature_dtype must be one of {', '.join(FEATURE_DTYPES)}, got {feature_dtype!r}.")
        self.classifier = classifier or ClassifierSettings(SKLEARN)
        self.layers_given, self.feature_dtype, self.templates = layers, feature_dtype, templates
        if self.task.protocol == SPLIT:
            raw = self.task.read(data, ("train", "dev"))
            self.splits = {"train": prepare(raw["train"], sample, limit), "dev": prepare(raw["dev"], sample, limit)}
            self.description = f"{self.task.name} dev"
        else:
            train, dev = held_out_fold(prepare(self.task.read(data, ("train",))["train"], sample, limit))
            self.splits = {"train": train, "dev": dev}
            self.description = f"{self.task.name}: a held-out fold of train (1 of 10)"
        for name, split in self.splits.items():
            if len(set(split.labels.tolist())) < 2:
                raise ValueError(f"{self.task.name}: its {name} split holds one class only ({len(split)} examples); "
                                 f"take more examples (e.g. sample={max(4 * len(split), 200)}).")
        self.texts = [text for split in self.splits.values() for side in split.sides for text in side]
        self.note = ""

    # ---- CellScorer --------------------------------------------------------------------------------------------
    def text_batches(self, encode_batches) -> list[list[str]]:
        """The texts in the batches model.encode(self.texts) forms (`score_model` embeds them so); the states are put
        back in text order as they come."""
        self.batches = encode_batches(self.texts)
        return [[self.texts[i] for i in ids] for ids in self.batches]

    def start(self, rows: list, total_layers: int, hidden_size: int, dtype) -> None:
        import torch

        self.layers = kept_layers(self.layers_given, total_layers, first=1)  # 0: one token for every text
        lossless = dtype in (torch.bfloat16, torch.float16) and self.templates == 1
        name = (str(dtype).removeprefix("torch.") if lossless else "float32") if self.feature_dtype == "auto" else self.feature_dtype
        self.storage = getattr(torch, name)
        self.total_layers, self.rows = total_layers, list(rows)
        need = len(self.texts) * len(self.rows) * len(self.layers) * hidden_size * self.storage.itemsize
        self.note = check_states_fit(f"a transfer sweep of {len(self.texts)} texts x {len(self.rows)} rows x "
                                     f"{len(self.layers)} exit layers x {hidden_size} values in {name}", need,
                                     max(map(len, self.splits.values())), total_layers)
        self.states = {(e, k): [] for e in self.rows for k in self.layers}

    def add(self, cells: dict) -> None:
        import torch

        for cell, parts in self.states.items():
            held = cells[cell].to(self.storage).cpu()
            if self.storage == torch.float16 and not torch.isfinite(held).all():
                raise ValueError(f"the states of cell {cell} exceed float16's range (|x| > 65504); use "
                                 "feature_dtype='bfloat16' or 'float32'.")
            parts.append(held)

    def scores(self) -> dict:
        import torch

        text_order = np.argsort(np.concatenate(self.batches))  # batch order -> text order
        out = {}
        for e in self.rows:
            row = [float("nan")] * (self.total_layers + 1)
            for k in self.layers:
                states = torch.cat(self.states.pop((e, k))).float().numpy()[text_order]
                row[k] = self._score(states)
            out[e] = row
        return out

    def score_model(self, model, batch_size: int) -> float:
        """The same score for a model built with a cell's settings, its embeddings (model.encode, the model's own text
        preprocessing, as in the sweep's passes) held in the sweep's feature dtype."""
        import torch

        embedded = model.encode(self.texts, batch_size=2 * batch_size, show_progress_bar=False, convert_to_numpy=True)
        return self._score(torch.from_numpy(np.asarray(embedded, dtype=np.float32)).to(self.storage).float().numpy())

    # ---- scoring -----------------------------------------------------------------------------------------------
    def _score(self, states: np.ndarray) -> float:
        embeddings, start = {}, 0
        for name, split in self.splits.items():
            for side_name, side in zip(("A", "B") if self.task.pairs else (None,), split.sides, strict=True):
                embeddings[f"{name}.{side_name}" if side_name else name] = states[start : start + len(side)]
                start += len(side)
        X = features(self.task, self.splits, embeddings)
        y = {name: split.labels for name, split in self.splits.items()}
        devacc, _ = select_on_dev((X["train"], y["train"]), (X["dev"], y["dev"]), self.classifier, self.task.nclasses)
        return devacc / 100
