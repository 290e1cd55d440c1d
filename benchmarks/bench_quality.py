"""Quality on real weights: the paper's seven STS test sets and BIOSSES, through st_tp's mteb local tasks.

For each packaged model (st_tp.base_model.PACKAGED) and prompt method, four variants:
  * vanilla at the last layer (what PromptEOL users do),
  * vanilla at its best STS-B **dev** layer,
  * TP at the paper's default (tp 1..7, exit at 27/32 of the depth),
  * TP at the best STS-B **dev** cell.
The dev cells come from `st-tp sweep` outputs (`--sweep-dir/sweep-<model>-<method>/grid.csv`); test sets are only
scored, never used to choose. Results are cached by mteb under `--out`, so a stopped run resumes where it was.

    python benchmarks/bench_quality.py --sample 250 --write
"""

from __future__ import annotations

import argparse
import csv
import math
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import ROOT, paper_exit, write_section  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
STS7 = ["STS12", "STS13", "STS14", "STS15", "STS16", "STSBenchmark", "SICK-R"]
TASKS = [*STS7, "BIOSSES"]
PAPER_TP = (1, 7)  # tp_start, tp_end of the paper's default; its exit is `paper_exit` (Llama-2-7B: 27 of 32)


def dev_cells(grid_csv: Path) -> tuple[int, tuple[int, int]]:
    """(best vanilla layer, (best tp_end, best exit)) from a sweep's grid.csv; NaN cells never win."""
    with open(grid_csv, newline="") as f:
        rows = list(csv.reader(f))
    layers = [int(k) for k in rows[0][1:]]
    scores = {row[0]: [float(v) for v in row[1:]] for row in rows[1:]}

    def best(values: list[float]) -> int:
        return max((k for k, v in zip(layers, values, strict=True) if not math.isnan(v)), key=lambda k: values[k])

    vanilla = best(scores.pop("vanilla"))
    cells = [(int(e), best(row), row[best(row)]) for e, row in scores.items()]
    tp_end, exit_layer, _ = max(cells, key=lambda cell: cell[2])
    return vanilla, (tp_end, exit_layer)


def variants(total_layers: int, grid_csv: Path) -> dict[str, dict]:
    """The four settings, as st_tp.build overrides; output_layer = total_layers is written as -1."""
    vanilla_layer, (tp_end, exit_layer) = dev_cells(grid_csv)

    def layer(k: int) -> int:
        return -1 if k == total_layers else k

    start, end = PAPER_TP
    paper_layer = paper_exit(total_layers)
    return {
        "vanilla, last layer": dict(tp=False, output_layer=-1),
        f"vanilla, dev-best layer {vanilla_layer}": dict(tp=False, output_layer=layer(vanilla_layer)),
        f"TP paper default (1..{end}, exit {paper_layer})": dict(
            tp=True, tp_start=start, tp_end=end, output_layer=paper_layer),
        f"TP dev-best (1..{tp_end}, exit {exit_layer})": dict(tp=True, tp_start=1, tp_end=tp_end, output_layer=layer(exit_layer)),
    }


def label(model: str, method: str, settings: dict) -> str:
    """Unique per setting, so mteb's cache never serves one setting's score for another."""
    if settings["tp"]:
        return f"{model}-{method}-tp{settings['tp_start']}-{settings['tp_end']}-L{settings['output_layer']}"
    return f"{model}-{method}-vanilla-L{settings['output_layer']}"


def run(args: argparse.Namespace) -> str:
    import st_tp
    from st_tp.base_model import resolve_base_model
    from st_tp.evaluation import local_tasks, run_mteb
    from st_tp.evaluation.tasks import PAPER_SCORES

    torch.set_num_threads(args.threads)
    tasks = local_tasks(DATA, TASKS, sample=args.sample)
    by_name = {t.metadata.name.removesuffix("-local"): t for t in tasks}
    tasks = [by_name[name] for name in TASKS]
    sections = []
    started = time.time()
    for model in args.models:
        from transformers import AutoConfig

        total_layers = AutoConfig.from_pretrained(resolve_base_model(f"packaged:{model}").path).num_hidden_layers
        table = []
        for method in args.methods:
            grid = Path(args.sweep_dir) / f"sweep-{model}-{method}" / "grid.csv"
            if not grid.exists():
                raise SystemExit(f"{grid} is missing: run `st-tp sweep packaged:{model} --prompt-method {method} "
                                 f"--dev {DATA}/raw/stsb.dev.tsv --out {grid.parent}` first (dev data only).")
            for name, settings in variants(total_layers, grid).items():
                st = st_tp.build(f"packaged:{model}", prompt_method=method, dtype="float32", device="cpu", **settings)
                name_in_results = label(model, method, settings)
                st.model_card_data.model_name = name_in_results
                run = run_mteb([st], tasks, Path(args.out) / "mteb", batch_size=args.batch_size, verbose=args.verbose)
                (scores,) = run.scores.values()  # one model
                row = [100 * scores[t.metadata.name] for t in tasks]
                table.append((method, name, row))
                print(f"{model} {method} {name}: STS avg {sum(row[:7]) / 7:.2f} ({time.time() - started:.0f}s)", flush=True)
        sections.append(format_table(model, total_layers, table))
    paper = [PAPER_SCORES[name] for name in TASKS]
    sections.append(format_table("Llama-2-7B (paper Table 1 / Table 12; a different, 50x larger model)", 32, [
        ("prompteol", "vanilla PromptEOL, last layer", [p[0] for p in paper]),
        ("prompteol", "PromptEOL + TP (1..7, exit 27)", [p[1] for p in paper]),
    ]))
    return "\n\n".join(sections)


def format_table(model: str, total_layers: int, rows: list[tuple[str, str, list[float]]]) -> str:
    header = ["prompt", "variant", *TASKS, "STS avg (7)"]
    lines = [f"**{model}** ({total_layers} layers)", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, name, row in rows:
        lines.append("| " + " | ".join([method, name, *(f"{v:.2f}" for v in row), f"**{sum(row[:7]) / 7:.2f}**"]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--methods", nargs="+", default=["prompteol", "cot"])
    parser.add_argument("--sample", type=int, default=250, help="test pairs per set, drawn at random (seed 0); 0 = all")
    parser.add_argument("--sweep-dir", default="runs", help="where sweep-<model>-<method>/grid.csv are")
    parser.add_argument("--out", default="runs/quality")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--verbose", action="store_true", help="mteb's own progress bars and logs")
    parser.add_argument("--write", action="store_true", help="write the tables into benchmarks/RESULTS.md")
    args = parser.parse_args()
    args.sample = args.sample or None
    started = time.time()
    tables = run(args)
    print(tables)
    if args.write:
        command = "python benchmarks/bench_quality.py " + " ".join(sys.argv[1:])
        subset = f"{args.sample} pairs per test set drawn at random (seed 0; BIOSSES has 100, all used)" if args.sample else "full test sets"
        body = (
            f"`{command}`: {platform.processor() or platform.machine()} CPU, {args.threads} threads, float32, "
            f"{time.time() - started:.0f} s. Scores are mteb's cosine Spearman x100 on {subset}, through st_tp's "
            "local mteb tasks (raw text). Dev cells come from `st-tp sweep` on 400 STS-B **dev** pairs (seed 0); "
            "no test set was used to choose anything.\n\n" + tables
        )
        write_section("Quality on real weights (bench_quality.py, CPU)", body)


if __name__ == "__main__":
    main()
