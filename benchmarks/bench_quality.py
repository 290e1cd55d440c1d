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
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import ROOT, cpu_name, write_section  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
STS7 = ["STS12", "STS13", "STS14", "STS15", "STS16", "STSBenchmark", "SICK-R"]
TASKS = [*STS7, "BIOSSES"]


def sts_tasks(sample: int | None) -> list:
    """st_tp's local mteb tasks for TASKS, in TASKS' order (`sample` test pairs per set, seed 0; None: all)."""
    from st_tp.evaluation import local_tasks

    by_name = {t.metadata.name.removesuffix("-local"): t for t in local_tasks(DATA, TASKS, sample=sample)}
    return [by_name[name] for name in TASKS]


def variants(total_layers: int, grid_csv: Path) -> dict[str, dict]:
    """The four settings, as st_tp.build overrides; output_layer = total_layers is written as -1."""
    from st_tp.runtime.config import paper_setting
    from st_tp.sweep import SweepResult

    sweep = SweepResult.read_csv(grid_csv)
    vanilla_layer, (tp_end, exit_layer, _) = sweep.best_vanilla(), sweep.best()

    def layer(k: int) -> int:
        return -1 if k == total_layers else k

    paper = paper_setting(total_layers)
    return {
        "vanilla, last layer": dict(tp=False, output_layer=-1),
        f"vanilla, dev-best layer {vanilla_layer}": dict(tp=False, output_layer=layer(vanilla_layer)),
        f"TP paper default ({paper['tp_start']}..{paper['tp_end']}, exit {paper['output_layer']})": dict(
            tp=True, tp_start=paper["tp_start"], tp_end=paper["tp_end"], output_layer=paper["output_layer"]),
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
    from st_tp.evaluation import run_mteb
    from st_tp.evaluation.tasks import PAPER_SCORES

    torch.set_num_threads(args.threads)
    tasks = sts_tasks(args.sample)
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
                if method in args.only_dev_best and "dev-best" not in name:
                    continue
                st = st_tp.build(f"packaged:{model}", prompt_method=method, dtype=args.dtype, device="cpu", **settings)
                name_in_results = label(model, method, settings) + ("" if args.dtype == "float32" else f"-{args.dtype}")
                st.model_card_data.model_name = name_in_results
                run = run_mteb([st], tasks, Path(args.out) / "mteb", batch_size=args.batch_size, verbose=args.verbose)
                (scores,) = run.scores.values()  # one model
                row = [100 * scores[t.metadata.name] for t in tasks]
                table.append((method, name, row))
                print(f"{model} {method} {name}: STS avg {sum(row[:7]) / 7:.2f} ({time.time() - started:.0f}s)", flush=True)
        sections.append(format_table(model, total_layers, table))
    paper = [PAPER_SCORES[name] for name in TASKS]
    sections.append(format_table("Llama-2-7B (paper Table 1 / Table 12; a different, larger model)", 32, [
        ("prompteol", "vanilla PromptEOL, last layer", [p[0] for p in paper]),
        ("prompteol", "PromptEOL + TP (1..7, exit 27)", [p[1] for p in paper]),
    ]))
    return "\n\n".join(sections)


def dtype_run(args: argparse.Namespace) -> str:
    """Each model's PromptEOL+TP preset (configs/<model>-prompteol-tp.yaml) at each of `args.dtypes`: what the
    default dtype ('auto', bfloat16 on a CPU that runs it natively) costs in quality against float32."""
    import st_tp
    from st_tp.evaluation import run_mteb
    from st_tp.runtime.config import resolve_dtype

    torch.set_num_threads(args.threads)
    tasks = sts_tasks(args.sample)
    sections = []
    for model in args.models:
        table = []
        for dtype in args.dtypes:
            st = st_tp.build(f"packaged:{model}", ROOT / "configs" / f"{model}-prompteol-tp.yaml", dtype=dtype, device="cpu")
            runs_in = str(st[0].model_dtype).removeprefix("torch.")
            st.model_card_data.model_name = f"{model}-prompteol-preset-{dtype}-{runs_in}"
            (scores,) = run_mteb([st], tasks, Path(args.out) / "mteb", batch_size=args.batch_size, verbose=args.verbose).scores.values()
            row = [100 * scores[t.metadata.name] for t in tasks]
            table.append(("prompteol", f"preset, dtype {dtype} (runs in {runs_in})", row))
            print(f"{model} dtype {dtype} ({runs_in}): STS avg {sum(row[:7]) / 7:.2f}", flush=True)
        sections.append(format_table(model, st[0].runner.total_layers, table))
    if args.reference:  # a trained sentence encoder on the same tasks, for scale
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(args.reference, device="cpu")
        row = [100 * reference_score(st, task, args.batch_size) for task in tasks]
        name = Path(args.reference).name
        print(f"reference {name}: STS avg {sum(row[:7]) / 7:.2f}", flush=True)
        sections.append(format_table(f"{name} (reference: a trained sentence encoder, float32)",
                                     st[0].auto_model.config.num_hidden_layers, [("none", "as trained", row)]))
    auto = str(resolve_dtype("auto", "cpu")).removeprefix("torch.")
    return f"dtype 'auto' resolves to {auto} on this CPU.\n\n" + "\n\n".join(sections)


def reference_score(model, task, batch_size: int) -> float:
    """mteb's main score of a plain SentenceTransformer on one task (no st_tp metadata, no results cache)."""
    import mteb
    from mteb.models.sentence_transformer_wrapper import SentenceTransformerEncoderWrapper

    result = mteb.evaluate(SentenceTransformerEncoderWrapper(model), task, cache=None,
                           encode_kwargs={"batch_size": batch_size}, show_progress_bar=False).task_results[0]
    return float(result.validate_and_filter_scores(task).get_score())


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
    parser.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16", "float16"],
                        help="the four variants' dtype (default float32); the sweep that chose the dev cells should match")
    parser.add_argument("--only-dev-best", nargs="*", default=[], metavar="METHOD",
                        help="for these prompt methods only the two dev-best rows (vanilla layer, TP cell): what the size curve needs")
    parser.add_argument("--dev-pairs", default="400", help="for --write: how many STS-B dev pairs the sweeps scored")
    parser.add_argument("--section", help="for --write: the RESULTS.md section the tables replace (default: one named "
                        "after the models, so a run of other models never replaces theirs)")
    parser.add_argument("--verbose", action="store_true", help="mteb's own progress bars and logs")
    parser.add_argument("--dtypes", nargs="+", choices=["auto", "float32", "bfloat16", "float16"],
                        help="instead of the four variants: each model's PromptEOL+TP preset at each of these dtypes")
    parser.add_argument("--reference", help="with --dtypes: also a plain SentenceTransformer folder (e.g. all-mpnet-base-v2)")
    parser.add_argument("--write", action="store_true", help="write the tables into benchmarks/RESULTS.md")
    args = parser.parse_args()
    args.sample = args.sample or None
    if unknown := set(args.only_dev_best) - set(args.methods):
        parser.error(f"--only-dev-best {' '.join(sorted(unknown))}: not among --methods {' '.join(args.methods)}")
    from st_tp.runtime.config import resolve_dtype

    args.dtype = str(resolve_dtype(args.dtype, "cpu")).removeprefix("torch.")  # 'auto' named as what it runs in here
    if args.section is None:
        default_models = args.models == parser.get_default("models")
        args.section = "Quality on real weights " + ("" if default_models else f"of {', '.join(args.models)} ") + "(bench_quality.py, CPU)"
    started = time.time()
    tables = dtype_run(args) if args.dtypes else run(args)
    print(tables)
    if args.write and args.dtypes:
        command = shlex.join(["python", "benchmarks/bench_quality.py", *sys.argv[1:]])
        body = (f"`{command}`: CPU {cpu_name()}, {args.threads} threads, "
                f"{time.time() - started:.0f} s; {args.sample} pairs per test set drawn at random (seed 0; BIOSSES has "
                "100, all used), mteb's cosine Spearman x100.\n\n" + tables)
        write_section("Quality at the default dtype (bench_quality.py --dtypes, CPU)", body)
    elif args.write:
        command = shlex.join(["python", "benchmarks/bench_quality.py", *sys.argv[1:]])
        subset = f"{args.sample} pairs per test set drawn at random (seed 0; BIOSSES has 100, all used)" if args.sample else "full test sets"
        body = (
            f"`{command}`: CPU {cpu_name()}, {args.threads} threads, {args.dtype}, "
            f"{time.time() - started:.0f} s. Scores are mteb's cosine Spearman x100 on {subset}, through st_tp's "
            f"local mteb tasks (raw text). Dev cells come from `st-tp sweep` on {args.dev_pairs} STS-B **dev** pairs "
            "(seed 0); no test set was used to choose anything.\n\n" + tables
        )
        write_section(args.section, body)


if __name__ == "__main__":
    main()
