"""The two classifiers SentEval trains on frozen embeddings, as SentEval builds and trains them
(facebookresearch/SentEval, `senteval/tools/validation.py` and `senteval/tools/classifier.py`).

* `sklearn`: `LogisticRegression(C=c, random_state=seed)`, scikit-learn's defaults otherwise (SentEval's
  `usepytorch=False`); deterministic.
* `pytorch`: SentEval's `MLP` with the official TP code's test-mode settings (`nhid 0`: a linear layer and softmax,
  adam, batch 64, tenacity 5, epoch_size 4, at most 200 epochs), trained as SentEval trains it: numpy and torch
  seeded when the classifier is made, an epoch of shuffled batches per `epoch_size` step, the dev accuracy after each
  step, the best model kept, and a stop once the dev accuracy has failed to improve `tenacity` + 1 times (the count is
  never reset, as in SentEval). Its seeds are drawn from a private numpy RandomState and a forked torch RNG, the same
  streams SentEval's global seeding gives, so it runs identically without touching the caller's RNG state.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import numpy as np

from .tasks import KFOLD

SKLEARN, PYTORCH = "sklearn", "pytorch"


@dataclass(frozen=True)
class ClassifierSettings:
    """What SentEval's `params` say about the classifier (the official TP code's test mode by default)."""

    kind: str = SKLEARN  # SKLEARN (usepytorch=False) or PYTORCH
    kfold: int = 10
    seed: int = 1111  # SentEval's default seed: the classifiers' and the KFold/Split folds'
    nhid: int = 0
    optim: str = "adam"  # a torch.optim name, optionally with settings: "sgd,lr=0.1"
    batch_size: int = 64
    tenacity: int = 5
    epoch_size: int = 4
    max_epoch: int = 200
    dropout: float = 0.0
    device: str = "cpu"  # the PyTorch classifier's device (SentEval's MLP runs on CUDA; on CPU it is deterministic)

    def __post_init__(self) -> None:
        if self.kind not in (SKLEARN, PYTORCH):
            raise ValueError(f"classifier must be {SKLEARN!r} or {PYTORCH!r}, got {self.kind!r}.")
        if type(self.kfold) is not int or self.kfold < 2:
            raise ValueError(f"kfold must be an int of at least 2, got {self.kfold!r}.")

    def regularisations(self, protocol: str) -> list[float]:
        """SentEval's grid: L2 weight decay for PyTorch; C for scikit-learn (KFoldClassifier's grid is wider)."""
        if self.kind == PYTORCH:
            return [10**t for t in range(-5, -1)]
        return [2**t for t in range(-1, 6)] if protocol == KFOLD else [2**t for t in range(-2, 4)]

    def make(self, inputdim: int, nclasses: int, reg: float) -> SklearnLogReg | TorchMLP:
        if self.kind == PYTORCH:
            return TorchMLP(self, inputdim, nclasses, reg)
        return SklearnLogReg(reg, self.seed)

    def describe(self) -> str:
        if self.kind == SKLEARN:
            return f"scikit-learn LogisticRegression (SentEval usepytorch=False), {self.kfold}-fold"
        return (f"PyTorch MLP nhid {self.nhid}, {self.optim}, batch {self.batch_size}, tenacity {self.tenacity}, "
                f"epoch_size {self.epoch_size} (SentEval usepytorch=True), {self.kfold}-fold, on {self.device}")


class SklearnLogReg:
    """SentEval's `LogisticRegression(C=reg, random_state=seed)`; a validation set, if given, is not used."""

    def __init__(self, c: float, seed: int) -> None:
        from sklearn.linear_model import LogisticRegression

        self.model = LogisticRegression(C=c, random_state=seed)

    def fit(self, X: np.ndarray, y: np.ndarray, validation_data=None, validation_split=None) -> None:
        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings():  # lbfgs's 100 iterations often stop short on raw LLM states, as in SentEval
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model.fit(X, y)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.model.predict(X)

    def score(self, X: np.ndarray, y: np.ndarray) -> float:
        return self.model.score(X, y)


class TorchMLP:
    """SentEval's `MLP` (PyTorchClassifier): see the module docstring for what is kept exactly."""

    def __init__(self, settings: ClassifierSettings, inputdim: int, nclasses: int, l2reg: float) -> None:
        import torch

        self.settings, self.l2reg = settings, l2reg
        self.device = torch.device(settings.device)
        # SentEval seeds numpy and torch globally here, then builds the layers: the same streams, kept private.
        self.numpy_rng = np.random.RandomState(settings.seed)
        self.rng_devices = [self.device.index or 0] if self.device.type == "cuda" else []  # torch.manual_seed seeds them
        with torch.random.fork_rng(devices=self.rng_devices):
            torch.manual_seed(settings.seed)
            self.model = self._layers(inputdim, nclasses).to(self.device)
            self.torch_rng_state = torch.random.get_rng_state()  # what training draws from (dropout), as SentEval
        self.loss_fn = torch.nn.CrossEntropyLoss()  # mean reduction: SentEval's `size_average = False` is a no-op today
        optim_fn, optim_params = _optimizer(settings.optim)
        self.optimizer = optim_fn(self.model.parameters(), **optim_params)
        self.optimizer.param_groups[0]["weight_decay"] = l2reg

    def _layers(self, inputdim: int, nclasses: int):
        from torch import nn

        s = self.settings
        if s.nhid == 0:
            return nn.Sequential(nn.Linear(inputdim, nclasses))
        return nn.Sequential(nn.Linear(inputdim, s.nhid), nn.Dropout(p=s.dropout), nn.Sigmoid(), nn.Linear(s.nhid, nclasses))

    def _split(self, X, y, validation_data, validation_split):
        import torch

        if validation_data is not None:
            (train_x, train_y), (dev_x, dev_y) = (X, y), validation_data
        else:
            permutation = self.numpy_rng.permutation(len(X))
            cut = int(validation_split * len(X))
            train_x, train_y, dev_x, dev_y = X[permutation[cut:]], y[permutation[cut:]], X[permutation[:cut]], y[permutation[:cut]]
        tensors = [torch.from_numpy(np.asarray(a)).to(self.device, dtype=dtype) for a, dtype in
                   ((train_x, torch.float32), (train_y, torch.int64), (dev_x, torch.float32), (dev_y, torch.int64))]
        return tensors

    def fit(self, X: np.ndarray, y: np.ndarray, validation_data=None, validation_split=None) -> float:
        import torch

        s = self.settings
        train_x, train_y, dev_x, dev_y = self._split(X, y, validation_data, validation_split)
        epoch, best_accuracy, stop, misses, best_model = 0, -1.0, False, 0, None
        with torch.random.fork_rng(devices=self.rng_devices):
            torch.random.set_rng_state(self.torch_rng_state)
            while not stop and epoch <= s.max_epoch:
                self._train_epochs(train_x, train_y, epoch)
                epoch += s.epoch_size
                accuracy = self._accuracy(dev_x, dev_y)
                if accuracy > best_accuracy:
                    best_accuracy, best_model = accuracy, copy.deepcopy(self.model)
                else:
                    if misses >= s.tenacity:
                        stop = True
                    misses += 1
        self.model = best_model
        return best_accuracy

    def _train_epochs(self, X, y, first_epoch: int) -> None:
        import torch

        self.model.train()
        for _ in range(first_epoch, first_epoch + self.settings.epoch_size):
            permutation = self.numpy_rng.permutation(len(X))
            for i in range(0, len(X), self.settings.batch_size):
                idx = torch.from_numpy(permutation[i : i + self.settings.batch_size]).long().to(X.device)
                loss = self.loss_fn(self.model(X[idx]), y[idx])
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()

    def _outputs(self, X):
        """The model's outputs in SentEval's batches (a row's logits can depend on the batch it is computed in)."""
        import torch

        self.model.eval()
        if not isinstance(X, torch.Tensor):
            X = torch.from_numpy(np.asarray(X, dtype=np.float32)).to(self.device)
        with torch.no_grad():
            for i in range(0, len(X), self.settings.batch_size):
                yield self.model(X[i : i + self.settings.batch_size])

    def _accuracy(self, X, y) -> float:
        import torch

        y = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y, device=self.device).long()
        correct, start = 0, 0
        for output in self._outputs(X):
            correct += output.max(1)[1].long().eq(y[start : start + len(output)]).sum().item()
            start += len(output)
        return 1.0 * correct / len(X)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.concatenate([output.max(1)[1].cpu().numpy() for output in self._outputs(X)])

    def score(self, X: np.ndarray, y: np.ndarray) -> float:
        return self._accuracy(X, y)


def _optimizer(spec: str):
    """SentEval's `get_optimizer`: 'name' or 'name,key=value,...' -> a torch.optim class and its settings."""
    import torch

    name, *pairs = spec.split(",")
    classes = {"adadelta": torch.optim.Adadelta, "adagrad": torch.optim.Adagrad, "adam": torch.optim.Adam,
               "adamax": torch.optim.Adamax, "asgd": torch.optim.ASGD, "rmsprop": torch.optim.RMSprop,
               "rprop": torch.optim.Rprop, "sgd": torch.optim.SGD}
    if name not in classes:
        raise ValueError(f"optim {spec!r}: unknown optimizer {name!r}; one of {', '.join(classes)}.")
    settings = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            settings[key] = float(value)
        except ValueError:
            raise ValueError(f"optim {spec!r}: expected key=number pairs after the name, got {pair!r}.") from None
    if name == "sgd" and "lr" not in settings:
        raise ValueError(f"optim {spec!r}: sgd needs a learning rate (e.g. 'sgd,lr=0.1').")
    return classes[name], settings
