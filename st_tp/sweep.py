"""`st-tp sweep`: dev-set score for every (tp_end, output_layer) cell, plus vanilla, cheaply.

Cost: every exit layer of a tp_end comes from one forward pass (only the last-token state of each layer is
kept), and runs with different tp_end share the layers before tp_end. One full TP pass at the largest tp_end
saves its input at every candidate tp_end; each smaller tp_end resumes from there without TP. Exits at or
below a tp_end are shared with the full run.
"""

from __future__ import annotations

import argparse
import csv
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from scipy.stats import pearsonr, spearmanr
from tqdm.auto import tqdm

from st_tp.config import TPConfig
from st_tp.data import read_pairs
from st_tp.forward import continue_layers, run_layers
from st_tp.module import TokenPrepending, collate, resolve_device

VANILLA = "vanilla"


@dataclass
class SweepResult:
    scores: dict[str | int, list[float]]  # tp_end (or "vanilla") -> score per output_layer 0..L
    num_layers: int
    metric: str
    tp_start: int

    def best(self) -> tuple[int, int, float]:
        """(tp_end, output_layer, score) of the best TP cell. NaN cells (e.g. layer 0: every prompt ends in the
        same token, so all cosines are equal and the correlation is undefined) never win."""
        cells = [(e, k, v) for e, row in self.scores.items() if e != VANILLA for k, v in enumerate(row) if np.isfinite(v)]
        return max(cells, key=lambda cell: cell[2])


def _cosine(states: torch.Tensor) -> np.ndarray:
    """Rows are [sentence1 of each pair..., sentence2 of each pair...]."""
    a, b = states.float().chunk(2)
    return torch.nn.functional.cosine_similarity(a, b, dim=1).cpu().numpy()


def sweep(
    base_model: str,
    dev: str | Path,
    *,
    prompt_method: str = "prompteol",
    template: str | None = None,
    tp_start: int = 1,
    tp_ends: list[int] = tuple(range(2, 13)),
    metric: str = "spearman",
    batch_size: int = 16,
    limit: int | None = None,
    dtype: str = "auto",
    device: str | None = None,
    show_progress_bar: bool = True,
    include_vanilla: bool = True,
) -> SweepResult:
    """Score every (tp_end, output_layer) cell and the vanilla prompt on an STS-like dev set."""
    if metric not in ("spearman", "pearson"):
        raise ValueError(f"metric must be 'spearman' or 'pearson', got {metric!r}.")
    tp_ends = sorted(set(tp_ends))
    if not tp_ends or tp_ends[0] <= tp_start:
        raise ValueError(f"every tp_end must be greater than tp_start={tp_start}; got {tp_ends}.")
    config = TPConfig(prompt_method=prompt_method if template is None else "custom", template=template, tp_start=tp_start,
                      tp_end=tp_ends[-1], output_layer=-1, dtype=dtype, device=device)
    module = TokenPrepending(base_model, config)
    module.to(resolve_device(device))
    device = module.pst_embedding.device
    layers = module.num_hidden_layers_base
    s1, s2, gold = read_pairs(dev, limit)
    order = np.argsort([-(len(a) + len(b)) for a, b in zip(s1, s2, strict=True)])  # length-sorted pairs: little padding
    cosines = {e: [[] for _ in range(layers + 1)] for e in [VANILLA, *tp_ends][0 if include_vanilla else 1 :]}
    encoders = {True: module.encoders, False: module.make_encoders(tp=False)}
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for pair_ids in tqdm(batches, desc=f"sweep ({len(tp_ends)} tp_end{' + vanilla' if include_vanilla else ''})", disable=not show_progress_bar):
        texts = [s1[i] for i in pair_ids] + [s2[i] for i in pair_ids]
        per_cell: dict = {}
        for tp in (True, False) if include_vanilla else (True,):
            features = collate(encoders[tp], texts, module.pad_token_id)
            rows = len(texts)
            for g in range(len(encoders[tp])):  # MetaEOL: average the templates' states, as the module does
                sl = slice(g * rows, (g + 1) * rows)
                ids, mask, pst, prefix = module.prepare(
                    encoders[tp][g], features["input_ids"][sl].to(device), features["attention_mask"][sl].to(device),
                    features["pst_positions"][sl].to(device) if tp else None, int(features["prefix_lengths"][g]),
                )
                with torch.inference_mode():
                    if tp:
                        states = _tp_cells(module, ids, mask, pst, prefix, tp_start, tp_ends, layers)
                    else:
                        captured = run_layers(module.auto_model, ids, mask, None, tp_layers=(), capture=range(layers + 1), prefix=prefix)
                        states = {(VANILLA, k): v for k, v in captured.items()}
                for key, value in states.items():
                    per_cell[key] = per_cell.get(key, 0) + value.float() / len(encoders[tp])
        for (e, k), states in per_cell.items():
            cosines[e][k].append(_cosine(states))
    score = spearmanr if metric == "spearman" else pearsonr
    gold_sorted = np.concatenate([gold[ids] for ids in batches])
    with warnings.catch_warnings():  # constant cosines (layer 0) give NaN, reported as such in grid.csv
        warnings.simplefilter("ignore")
        scores = {e: [float(score(gold_sorted, np.concatenate(c)).statistic) for c in row] for e, row in cosines.items()}
    return SweepResult(scores=scores, num_layers=layers, metric=metric, tp_start=tp_start)


def _tp_cells(module, ids, mask, pst, prefix, tp_start: int, tp_ends: list[int], layers: int) -> dict:
    """Last-token states for every (tp_end, k): one full pass at max(tp_ends), the others resume from it."""
    largest = tp_ends[-1]
    captured, active = run_layers(
        module.auto_model, ids, mask, pst, tp_layers=range(tp_start, largest), capture=range(layers + 1),
        pst_embedding=module.pst_embedding, prefix=prefix, save_inputs=[e for e in tp_ends[:-1] if e < layers],
        return_pass=True,
    )
    cells = {(largest, k): v for k, v in captured.items()}
    for e in tp_ends[:-1]:
        resumed = continue_layers(module.auto_model, active, e) if e < layers else {}
        for k in range(layers + 1):  # states at or before layer e saw exactly the TP layers of this tp_end
            cells[(e, k)] = resumed[k] if k > e else captured[k]
    return cells


def write_outputs(result: SweepResult, out: str | Path, base_model: str, prompt_method: str, dev: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    layers = result.num_layers
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
                 f"{np.nanmax(result.scores[VANILLA]):.4f})",
        "prompt_method": prompt_method,
        "tp": True,
        "tp_start": result.tp_start,
        "tp_end": best_e,
        "output_layer": -1 if best_k == layers else best_k,
    }
    (out / "best.yaml").write_text(yaml.safe_dump(preset, sort_keys=False))


def _parse_range(text: str) -> list[int]:
    """'2..12', '2,4,8' or '7'."""
    if ".." in text:
        low, high = text.split("..")
        return list(range(int(low), int(high) + 1))
    return [int(x) for x in text.split(",")]


def register(sub) -> None:
    p = sub.add_parser("sweep", help="dev score for every tp_end x output_layer (+ vanilla); plots and best.yaml")
    p.add_argument("base")
    p.add_argument("--dev", required=True, help="STS-like TSV: score, sentence1, sentence2")
    p.add_argument("--prompt-method", default="prompteol")
    p.add_argument("--tp-start", type=int, default=1)
    p.add_argument("--tp-end", default="2..12", help="range a..b or a list a,b,c")
    p.add_argument("--metric", default="spearman", choices=["spearman", "pearson"])
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=int, default=16, help="pairs per batch")
    p.add_argument("--limit", type=int, help="first N dev pairs")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    result = sweep(args.base, args.dev, prompt_method=args.prompt_method, tp_start=args.tp_start,
                   tp_ends=_parse_range(args.tp_end), metric=args.metric, batch_size=args.batch_size, limit=args.limit,
                   dtype=args.dtype, device=args.device)
    write_outputs(result, args.out, args.base, args.prompt_method, args.dev)
    best_e, best_k, best_v = result.best()
    print(f"best: tp_end={best_e} output_layer={best_k} {result.metric}={best_v:.4f} "
          f"(vanilla best {np.nanmax(result.scores[VANILLA]):.4f}); wrote {args.out}/grid.csv, heatmap.png, curves.png, best.yaml")
