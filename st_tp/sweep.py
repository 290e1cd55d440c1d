"""`st-tp sweep`: dev-set score for every (tp_end, output_layer) cell, plus vanilla, cheaply.

Cost: every exit layer of a tp_end comes from one forward pass (only the last-token state of each layer is
kept), and runs with different tp_end share the layers before tp_end. One full TP pass at the largest tp_end
saves its input at every candidate tp_end; each smaller tp_end resumes from there without TP. Exits at or
below a tp_end are shared with the full run. In all, `full_passes` forward passes: 9.7 for tp_end 2..12 + vanilla
on a 28-layer model, under the n + 1 = 12 of running each tp_end and vanilla once. The progress bar counts prompt
tokens, not batches, so its ETA holds although the batches run longest first.

How the cells are computed (`run_sweep`) is apart from how they are scored (a `CellScorer`): `STSScorer` keeps one
cosine per pair and cell and correlates them with an STS dev set's scores (`sweep`); the transfer scorer
(st_tp.evaluation.senteval.dev_split, `sweep_transfer`) keeps every cell's states and trains SentEval's classifier
on a transfer task's train split, scored on its dev split.
"""

from __future__ import annotations

import csv
import functools
import itertools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from unittest import mock

import numpy as np
import torch
import yaml
from scipy.stats import pearsonr, spearmanr
from sentence_transformers import SentenceTransformer
from sentence_transformers.util import batch_to_device
from tqdm.auto import tqdm

from st_tp.base_model import resolve_base_model
from st_tp.data import read_pairs
from st_tp.resume import TPEndRecorder
from st_tp.runtime.batching import TemplateBatch
from st_tp.runtime.config import TPConfig, resolve_device
from st_tp.runtime.module import TokenPrepending
from st_tp.runtime.prompts import templates_for

VANILLA = "vanilla"


@dataclass
class SweepResult:
    scores: dict[str | int, list[float]]  # tp_end (or "vanilla") -> score per output_layer 0..L
    total_layers: int
    metric: str
    tp_start: int
    dtype: str = ""  # the torch dtype the sweep ran in ("bfloat16" for dtype auto on a CPU that runs it natively)
    best_rebuilt: float | None = None  # the best TP cell's score from a model built with its settings (model.encode)
    scored_on: str = ""  # what the cells were scored on (the dev file; a transfer task's dev split)

    @classmethod
    def read_csv(cls, path: str | Path, metric: str = "spearman", tp_start: int = 1) -> SweepResult:
        """A sweep's grid.csv (as `write_outputs` writes it) read back."""
        with open(path, newline="") as f:
            header, *rows = list(csv.reader(f))
        scores = {(row[0] if row[0] == VANILLA else int(row[0])): [float(v) for v in row[1:]] for row in rows}
        return cls(scores=scores, total_layers=len(header) - 2, metric=metric, tp_start=tp_start)

    def best_vanilla(self) -> int:
        """The output layer of the best vanilla cell (NaN cells never win)."""
        row = self.scores[VANILLA]
        return max((k for k, v in enumerate(row) if np.isfinite(v)), key=lambda k: row[k])

    def rebuilt_differs(self, tolerance: float = 1e-6) -> bool:
        """Whether the model built with the best cell's settings scored otherwise than its cell (beyond `tolerance`)."""
        return self.best_rebuilt is not None and abs(self.best_rebuilt - self.best()[2]) > tolerance

    def report(self, out: str | Path) -> str:
        """What `st-tp sweep` prints: the best cell, and (when a model built with its settings scored the same) so."""
        best_e, best_k, best_v = self.best()
        lines = [f"best: tp_end={best_e} output_layer={best_k} {self.metric}={best_v:.4f} (vanilla best "
                 f"{np.nanmax(self.scores[VANILLA]):.4f}; {self.dtype}); wrote {out}/grid.csv, heatmap.png, curves.png, best.yaml"]
        if self.best_rebuilt is not None and not self.rebuilt_differs():
            lines.append(f"checked: a model built with best.yaml scores {self.best_rebuilt:.6f}, as its grid cell.")
        return "\n".join(lines)

    def rebuild_warning(self) -> str:
        """Why a rebuilt best cell can score otherwise than its grid cell (when `rebuilt_differs`)."""
        return (f"a model built with the best cell's settings scores {self.best_rebuilt:.6f}, its grid cell "
                f"{self.best()[2]:.6f}: this machine's kernels round the sweep's shared layers otherwise than a built "
                "model's. Trust the built model's score;")

    def best(self) -> tuple[int, int, float]:
        """(tp_end, output_layer, score) of the best TP cell. NaN cells (e.g. layer 0: every prompt ends in the
        same token, so all cosines are equal and the correlation is undefined) never win."""
        cells = [(e, k, v) for e, row in self.scores.items() if e != VANILLA for k, v in enumerate(row) if np.isfinite(v)]
        return max(cells, key=lambda cell: cell[2])


def full_passes(tp_ends: list[int], total_layers: int, include_vanilla: bool = True) -> float:
    """The sweep's cost in full forward passes over the dev prompts (layer computations / total_layers): one pass at
    the largest tp_end, the layers after each smaller tp_end again, and one vanilla pass. At most n + 1 for n tp_ends."""
    *smaller, largest = sorted(set(tp_ends))
    return 1 + sum(total_layers - e for e in smaller) / total_layers + include_vanilla


def computed_tokens(batches: list[TemplateBatch]) -> int:
    """The prompt tokens a pass over these template batches computes: real ones, after each template's cached prefix."""
    return sum(int(batch.attention_mask.sum()) for batch in batches)


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
    forms. A scorer batches its texts that way because a row's numbers depend on the rows batched with it (the
    padded length attention runs at, the rows of each matmul): batched as the built model's encode batches them, each
    cell's states are bit for bit the built model's embeddings, so the grid scores what the preset will."""

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


class STSScorer:
    """Cosine Spearman (or Pearson) on an STS-like dev set, computed as `_sts_score` computes a built model's: the
    sentence1s in model.encode's batches, then the sentence2s in theirs, each batch's states L2-normalised as encode
    normalises them, the cosine a float32 dot product. The sentence1 states of every cell are held until the
    sentence2s come (pairs x rows x exit layers x hidden size float32 values)."""

    note = ""

    def __init__(self, pairs: tuple[list[str], list[str], np.ndarray], metric: str = "spearman",
                 layers: list[int] | None = None, description: str = "") -> None:
        if metric not in ("spearman", "pearson"):
            raise ValueError(f"metric must be 'spearman' or 'pearson', got {metric!r}.")
        self.s1, self.s2, self.gold = pairs
        self.metric, self.layers_given, self.description = metric, layers, description
        self.batches: list[tuple[int, np.ndarray]] = []  # (side: 0 sentence1, 1 sentence2; rows of the pairs)

    def text_batches(self, encode_batches: Callable[[list[str]], list[np.ndarray]]) -> list[list[str]]:
        self.batches = [(side, ids) for side, texts in enumerate((self.s1, self.s2)) for ids in encode_batches(texts)]
        return [[(self.s1, self.s2)[side][i] for i in ids] for side, ids in self.batches]

    def start(self, rows: list[str | int], total_layers: int, hidden_size: int, dtype: torch.dtype) -> None:
        self.kept = set(kept_layers(self.layers_given, total_layers, first=0))
        self.total_layers, self.hidden_size, self.done = total_layers, hidden_size, 0
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

    def _correlation(self):
        return spearmanr if self.metric == "spearman" else pearsonr

    def scores(self) -> dict[str | int, list[float]]:
        score, rows = self._correlation(), dict.fromkeys(e for e, _ in self.first)
        with warnings.catch_warnings():  # constant cosines (layer 0) give NaN, reported as such in grid.csv
            warnings.simplefilter("ignore")
            return {e: [float(score(self.gold, self.cosines[(e, k)]).statistic) if k in self.kept else float("nan")
                        for k in range(self.total_layers + 1)] for e in rows}

    def score_model(self, model: SentenceTransformer, batch_size: int) -> float:
        return _sts_score(model, (self.s1, self.s2, self.gold), self.metric, 2 * batch_size)


def sweep(
    base_model: str,
    dev: str | Path,
    *,
    prompt_method: str = "prompteol",
    template: str | None = None,
    tp_start: int = 1,
    tp_ends: list[int] = tuple(range(2, 13)),
    metric: str = "spearman",
    layers: list[int] | None = None,
    batch_size: int = 16,
    limit: int | None = None,
    sample: int | None = None,
    dtype: str = "auto",
    device: str | None = None,
    show_progress_bar: bool = True,
    include_vanilla: bool = True,
    gguf_file: str | None = None,
    rebuild_best: bool = True,
) -> SweepResult:
    """Score every (tp_end, output_layer) cell and the vanilla prompt on an STS-like dev set (`layers`: only those
    exit layers; the others are NaN). With `rebuild_best`, the best TP cell is scored once more by a model built with
    its settings (`SweepResult.best_rebuilt`)."""
    if metric not in ("spearman", "pearson"):
        raise ValueError(f"metric must be 'spearman' or 'pearson', got {metric!r}.")
    config = _sweep_config(prompt_method, template, tp_start, tp_ends, dtype, device)
    return run_sweep(base_model, config, STSScorer(read_pairs(dev, limit, sample), metric, layers, str(dev)), tp_ends=tp_ends,
                     batch_size=batch_size, show_progress_bar=show_progress_bar, include_vanilla=include_vanilla,
                     gguf_file=gguf_file, rebuild_best=rebuild_best)


def sweep_transfer(
    base_model: str,
    task: str,
    data: str | Path,
    *,
    prompt_method: str = "prompteol",
    template: str | None = None,
    tp_start: int = 1,
    tp_ends: list[int] = tuple(range(2, 13)),
    layers: list[int] | None = None,
    batch_size: int = 16,
    limit: int | None = None,
    sample: int | None = None,
    feature_dtype: str = "auto",
    dtype: str = "auto",
    device: str | None = None,
    show_progress_bar: bool = True,
    include_vanilla: bool = True,
    gguf_file: str | None = None,
    rebuild_best: bool = True,
) -> SweepResult:
    """Score every cell by a SentEval transfer task's dev split, never its test split: SST2's dev set, or a held-out
    fold of TREC's or MRPC's train set (st_tp.evaluation.senteval.dev_split). `layers` are the exit layers kept (all
    but 0 by default), `feature_dtype` how their states are held ('auto': the model's dtype when that is lossless);
    `sample` / `limit` apply to each split. Batches hold 2 * batch_size sentences, as an STS sweep's."""
    from st_tp.evaluation.senteval.dev_split import TransferDevScorer

    config = _sweep_config(prompt_method, template, tp_start, tp_ends, dtype, device)
    scorer = TransferDevScorer(task, data, sample=sample, limit=limit, layers=layers, feature_dtype=feature_dtype,
                               templates=len(templates_for(config)))
    return run_sweep(base_model, config, scorer, tp_ends=tp_ends, batch_size=batch_size,
                     show_progress_bar=show_progress_bar, include_vanilla=include_vanilla, gguf_file=gguf_file,
                     rebuild_best=rebuild_best)


def _sweep_config(prompt_method: str, template: str | None, tp_start: int, tp_ends, dtype: str, device: str | None) -> TPConfig:
    tp_ends = sorted(set(tp_ends))
    if not tp_ends:
        raise ValueError("tp_ends is empty: give at least one tp_end (e.g. tp_ends=range(2, 13)).")
    # The model runs TP up to the largest tp_end (its runner checks it against the model's depth); the smallest, too,
    # goes through TPConfig's check against tp_start.
    config = TPConfig(prompt_method=prompt_method if template is None else "custom", template=template, tp_start=tp_start,
                      tp_end=tp_ends[-1], output_layer=-1, dtype=dtype, device=device)
    config.replace(tp_end=tp_ends[0])
    return config


def run_sweep(base_model: str, config: TPConfig, scorer: CellScorer, *, tp_ends, batch_size: int,
              show_progress_bar: bool, include_vanilla: bool, gguf_file: str | None, rebuild_best: bool) -> SweepResult:
    """Every cell's last-token states for the scorer's texts, batch by batch (one recorded pass at the largest tp_end,
    resumed for the smaller ones), handed to the scorer; its scores, and the best cell rebuilt and scored again."""
    tp_ends = sorted(set(tp_ends))
    base_path = resolve_base_model(base_model, gguf_file, dtype=config.dtype, device=config.device).path
    module = TokenPrepending(base_path, config)
    runner = module.to(resolve_device(config.device)).runner
    device = runner.pst_embedding.device
    total_layers = runner.total_layers
    every_layer = range(total_layers + 1)
    # A batch holds 2 * batch_size sentences (batch_size pairs), as the rebuilt check's encode calls do.
    encoder = SentenceTransformer(modules=[module], device=str(device))
    text_batches = scorer.text_batches(functools.partial(encode_batches, encoder, batch_size=2 * batch_size))
    scorer.start([VANILLA, *tp_ends][0 if include_vanilla else 1 :], total_layers, runner.hidden_size, runner.dtype)

    # Tokenized (and split by template, the shared prefixes cut off) up front, so that the progress bar counts the
    # prompt tokens each batch computes: the batches run longest first, and a bar counting batches extrapolated the
    # first, most expensive one (a 6 h ETA for a 1 h sweep).
    def prepared(texts: list[str], tp: bool) -> list[TemplateBatch]:
        return runner.template_batches(batch_to_device(module.preprocess(texts, tp=tp), device))

    work = []
    with torch.inference_mode():  # a template's prefix cache is computed on its first batch
        for texts in text_batches:
            work.append((prepared(texts, tp=True), prepared(texts, tp=False) if include_vanilla else None))
    progress = tqdm(total=sum(computed_tokens(tp) for tp, _ in work), unit="tok", unit_scale=True, disable=not show_progress_bar,
                    desc=f"sweep ({len(tp_ends)} tp_end{' + vanilla' if include_vanilla else ''}: "
                         f"{full_passes(tp_ends, total_layers, include_vanilla):.1f} passes over "
                         f"{sum(map(len, text_batches))} prompts{scorer.note})")
    for tp_batches, vanilla_batches in work:
        with torch.inference_mode():
            # Every (tp_end, k), averaged over the templates: one recorded pass at the largest tp_end per template;
            # every smaller tp_end resumes from that pass's input to its layer tp_end (st_tp.resume).
            cells = runner.last_token_states(tp_batches, every_layer, recorder=TPEndRecorder(tp_ends, total_layers))
            if vanilla_batches is not None:
                vanilla = runner.last_token_states(vanilla_batches, every_layer)
                cells.update({(VANILLA, k): v for k, v in vanilla.items()})
        scorer.add(cells)
        progress.update(computed_tokens(tp_batches))
    progress.close()
    result = SweepResult(scores=scorer.scores(), total_layers=total_layers, metric=scorer.metric, tp_start=config.tp_start,
                         dtype=str(runner.dtype).removeprefix("torch."), scored_on=scorer.description)
    if rebuild_best:
        best_e, best_k, _ = result.best()
        del module, runner, work, encoder  # one model in memory at a time
        best = config.replace(tp_end=best_e, output_layer=-1 if best_k == total_layers else best_k)
        model = SentenceTransformer(modules=[TokenPrepending(base_path, best)], device=str(device))
        result.best_rebuilt = scorer.score_model(model, batch_size)
    return result


def score_built(base_path: str, config: TPConfig, pairs: tuple, metric: str, *, batch_size: int, device: str) -> float:
    """The dev score of a model built with `config`, through model.encode: the path every user of a preset takes, so
    a sweep can check that the preset it writes scores what its grid says."""
    model = SentenceTransformer(modules=[TokenPrepending(base_path, config)], device=device)
    return _sts_score(model, pairs, metric, batch_size)


def _sts_score(model: SentenceTransformer, pairs: tuple, metric: str, batch_size: int) -> float:
    s1, s2, gold = pairs
    embed = functools.partial(model.encode, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
    score = spearmanr if metric == "spearman" else pearsonr
    return float(score(gold, (embed(s1) * embed(s2)).sum(1)).statistic)


def write_outputs(result: SweepResult, out: str | Path, base_model: str, prompt_method: str, dev: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    layers = result.total_layers
    with open(out / "grid.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["tp_end", *range(layers + 1)])
        for e, row in result.scores.items():
            writer.writerow([e, *(f"{v:.6f}" for v in row)])
    best_e, best_k, best_v = result.best()
    tp_ends = [e for e in result.scores if e != VANILLA]
    grid = np.array([result.scores[e] for e in tp_ends]) * 100

    fig, ax = plt.subplots(figsize=(max(6, layers * 0.35), max(3, len(tp_ends) * 0.4)))
    image = ax.imshow(grid, aspect="auto", cmap="viridis", origin="lower")
    ax.set_xticks(range(layers + 1))
    ax.set_yticks(range(len(tp_ends)), labels=[str(e) for e in tp_ends])
    ax.set_xlabel("output layer (hidden_states index; last = final-normed output)")
    ax.set_ylabel("tp_end")
    ax.scatter([best_k], [tp_ends.index(best_e)], marker="*", s=250, c="red", label=f"best {100 * best_v:.2f}")
    ax.legend(loc="upper left")
    fig.colorbar(image, ax=ax, label=f"dev {result.metric} x100")
    ax.set_title(f"{Path(base_model).name}, {prompt_method}: {result.metric} on {Path(dev).name}")
    fig.tight_layout()
    fig.savefig(out / "heatmap.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for e in tp_ends:
        ax.plot(range(layers + 1), np.array(result.scores[e]) * 100, marker=".", label=f"TP, tp_end={e}")
    ax.plot(range(layers + 1), np.array(result.scores[VANILLA]) * 100, "k--", label="vanilla")
    ax.scatter([best_k], [best_v * 100], marker="*", s=250, c="red", zorder=5, label=f"best (tp_end={best_e}, layer {best_k})")
    ax.set_xlabel("output layer")
    ax.set_ylabel(f"dev {result.metric} x100")
    ax.set_title(f"{Path(base_model).name}, {prompt_method}")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=120)
    plt.close(fig)

    preset = {
        "base_model": base_model,
        "notes": f"st-tp sweep: best dev {result.metric} {best_v:.4f} on {dev} (vanilla best "
                 f"{np.nanmax(result.scores[VANILLA]):.4f}), in {result.dtype}"
                 + ("" if result.best_rebuilt is None else f"; a model built with this preset scored {result.best_rebuilt:.4f}"),
        "prompt_method": prompt_method,
        "tp": True,
        "tp_start": result.tp_start,
        "tp_end": best_e,
        "output_layer": -1 if best_k == layers else best_k,
    }
    (out / "best.yaml").write_text(yaml.safe_dump(preset, sort_keys=False))
