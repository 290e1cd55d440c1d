"""`st-tp sweep`: dev-set score for every (tp_end, output_layer) cell, plus vanilla, cheaply.

Cost: every exit layer of a tp_end comes from one forward pass (only the last-token state of each layer is
kept), and runs with different tp_end share the layers before tp_end. One full TP pass at the largest tp_end
saves its input at every candidate tp_end; each smaller tp_end resumes from there without TP. Exits at or
below a tp_end are shared with the full run. In all, `full_passes` forward passes: 9.7 for tp_end 2..12 + vanilla
on a 28-layer model, under the n + 1 = 12 of running each tp_end and vanilla once. The progress bar counts prompt
tokens, not batches, so its ETA holds although the batches run longest first.

How the cells are computed (`run_sweep`) is apart from how they are scored (a `CellScorer`, st_tp.sweep_scoring):
`STSScorer` correlates each cell's cosines with an STS dev set's scores (`sweep`); the transfer scorer
(st_tp.evaluation.senteval.dev_split, `sweep_transfer`) keeps every cell's states and trains SentEval's classifier
on a transfer task's train split, scored on its dev split.
"""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
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
from st_tp.sweep_scoring import CellScorer, STSScorer, encode_batches

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
        vanilla = f"vanilla best {np.nanmax(self.scores[VANILLA]):.4f}; " if VANILLA in self.scores else ""
        lines = [f"best: tp_end={best_e} output_layer={best_k} {self.metric}={best_v:.4f} ({vanilla}{self.dtype}); "
                 f"wrote {out}/grid.csv, heatmap.png, curves.png, best.yaml"]
        if self.best_rebuilt is not None and not self.rebuilt_differs():
            lines.append(f"checked: a model built with best.yaml scores {self.best_rebuilt:.6f}, as its grid cell.")
        return "\n".join(lines)

    def rebuild_warning(self) -> str:
        """Why a rebuilt best cell can score otherwise than its grid cell (when `rebuilt_differs`)."""
        return (f"a model built with the best cell's settings scores {self.best_rebuilt:.6f}, its grid cell "
                f"{self.best()[2]:.6f}. The sweep runs the built model's batches, but computes every row of every layer "
                "where a built model skips the rows it never reads; this machine's kernels seem to round by the number "
                "of rows. Trust the built model's score;")

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


def write_outputs(result: SweepResult, out: str | Path, base_model: str, prompt_method: str, scored_on: str) -> None:
    """grid.csv, heatmap.png, curves.png and best.yaml; `scored_on` names the dev data (a file, a transfer dev split)."""
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
    ax.set_title(f"{Path(base_model).name}, {prompt_method}: {result.metric} on {Path(scored_on).name}")
    fig.tight_layout()
    fig.savefig(out / "heatmap.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for e in tp_ends:
        ax.plot(range(layers + 1), np.array(result.scores[e]) * 100, marker=".", label=f"TP, tp_end={e}")
    if VANILLA in result.scores:
        ax.plot(range(layers + 1), np.array(result.scores[VANILLA]) * 100, "k--", label="vanilla")
    ax.scatter([best_k], [best_v * 100], marker="*", s=250, c="red", zorder=5, label=f"best (tp_end={best_e}, layer {best_k})")
    ax.set_xlabel("output layer")
    ax.set_ylabel(f"dev {result.metric} x100")
    ax.set_title(f"{Path(base_model).name}, {prompt_method}")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=120)
    plt.close(fig)

    vanilla = f" (vanilla best {np.nanmax(result.scores[VANILLA]):.4f})" if VANILLA in result.scores else ""
    rebuilt = "" if result.best_rebuilt is None else f"; a model built with this preset scored {result.best_rebuilt:.4f}"
    preset = {
        "base_model": base_model,
        "notes": f"st-tp sweep: best dev {result.metric} {best_v:.4f} on {scored_on}{vanilla}, in {result.dtype}{rebuilt}",
        "prompt_method": prompt_method,
        "tp": True,
        "tp_start": result.tp_start,
        "tp_end": best_e,
        "output_layer": -1 if best_k == layers else best_k,
    }
    (out / "best.yaml").write_text(yaml.safe_dump(preset, sort_keys=False))
