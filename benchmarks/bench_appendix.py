"""The paper's whole evaluation on one real model, offline: every appendix category with local data (mteb's own tasks
and evaluators, st_tp's local copies) and the seven SentEval transfer tasks, for two or more presets side by side,
with paired bootstrap intervals (st_tp.evaluation.significance) for every task and category average.

    python benchmarks/bench_appendix.py --model packaged:qwen2.5-1.5b \
        --presets qwen2.5-1.5b-prompteol qwen2.5-1.5b-prompteol-tp --out runs/appendix-qwen --write

Everything is cached under --out (mteb's results cache, SentEval's embedding cache), so a stopped run resumes. The
sample sizes are flags: a 2-core CPU cannot embed the full sets of a 1.5B model in a session, and each table says
what was run. The first preset is the baseline (A) of every delta; each later preset is compared with it (B - A).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import ROOT, cpu_name, write_section  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
STS = ["STS12", "STS13", "STS14", "STS15", "STS16", "STSBenchmark", "SICK-R", "BIOSSES"]
CLASSIFICATION = ["AmazonCounterfactualClassification", "Banking77Classification", "EmotionClassification",
                  "MassiveIntentClassification", "MassiveScenarioClassification", "TweetSentimentExtractionClassification"]
PAIR, CLUSTERING, SUMMARIZATION = ["TwitterURLCorpus"], ["TwentyNewsgroupsClustering"], ["SummEval"]
TABLES = {"Classification": 7, "PairClassification": 8, "Reranking": 9, "Clustering": 10, "Summarization": 11, "STS": 12}


CATEGORIES = ("sts", "classification", "pair-classification", "clustering", "summarization")


def appendix_tasks(args) -> tuple[list, list[str]]:
    """The local tasks of the chosen categories, each at its sample size, and the no-data lines (reranking)."""
    from st_tp.evaluation.local import find_local_tasks
    from st_tp.evaluation.tasks import TASK_SETS

    parts = {"sts": lambda: find_local_tasks(DATA, STS, sample=args.sts_sample),
             "classification": lambda: find_local_tasks(DATA, CLASSIFICATION, sample=args.classification_sample),
             "pair-classification": lambda: find_local_tasks(DATA, PAIR, sample=args.pair_sample),
             "clustering": lambda: find_local_tasks(DATA, CLUSTERING, limit=args.clustering_texts),
             "summarization": lambda: find_local_tasks(DATA, SUMMARIZATION, limit=args.summarization_documents)}
    chosen = args.categories.split(",")
    unknown = sorted(set(chosen) - set(parts))
    if unknown:
        raise SystemExit(f"bench_appendix.py: unknown categories {', '.join(unknown)}; choose from {', '.join(parts)}.")
    tasks = [task for category in chosen for task in parts[category]().tasks]
    reranking = find_local_tasks(DATA, TASK_SETS["reranking"])  # run wherever a copy appears, named where none does
    tasks += reranking.tasks
    notes = [] if reranking.tasks else [f"reranking: no local data in {DATA}"]
    return tasks, notes


def build_folders(args, presets: list[str]) -> list[str]:
    """A saved folder per preset under OUT/models/, built once; one built from another model or preset is refused (its
    cached results would be served under the new title)."""
    import hashlib

    import st_tp
    from st_tp.presets import find_preset

    paths = [Path(find_preset(preset)) for preset in presets]  # names hold dots (qwen2.5-1.5b-...): no .stem
    folders = [Path(args.out) / "models" / path.name.removesuffix(".yaml") for path in paths]
    if len(set(folders)) < len(folders):
        raise SystemExit(f"bench_appendix.py: two presets share a file name ({', '.join(map(str, paths))}); rename one.")
    for preset, path, folder in zip(presets, paths, folders, strict=True):
        built_from = {"model": args.model, "preset": hashlib.sha256(path.read_bytes()).hexdigest()}
        marker = folder / "bench_appendix.json"
        if marker.is_file() and json.loads(marker.read_text()) != built_from:
            raise SystemExit(f"bench_appendix.py: {folder} was built from another model or preset; use a new --out.")
        if not marker.is_file():
            st_tp.build(args.model, preset, device="cpu").save(str(folder))
            marker.write_text(json.dumps(built_from))
    return [str(folder) for folder in folders]


def paper_cells(name: str) -> list[str]:
    from st_tp.evaluation.tasks import PAPER_SCORES

    paper = PAPER_SCORES.get(name)
    return [f"{paper[0]:.2f}", f"{paper[1]:.2f}"] if paper else ["-", "-"]


def category_tables(tasks, run, labels: list[str], resamples: int) -> tuple[list[str], dict]:
    """One table per category: each later model against the first, with intervals; the paper's figures beside."""
    from st_tp.evaluation.local_copies import local_copy
    from st_tp.evaluation.significance import paired_bootstrap

    lines, data = [], {}
    by_category: dict[str, list] = {}  # the paper's Table 12 is BIOSSES; its Table 1 the seven STS sets
    for task in tasks:
        by_category.setdefault(task.metadata.type, []).append(task)
    base = labels[0]
    for category, cat_tasks in sorted(by_category.items(), key=lambda item: TABLES.get(item[0], 99)):
        for other in labels[1:]:
            rows, average = paired_bootstrap(cat_tasks, run.predictions[base], run.predictions[other],
                                             reported_a=run.scores[base], reported_b=run.scores[other],
                                             resamples=resamples)
            data[f"{category}: {other} - {base}"] = [r.__dict__ for r in [*rows, average]]
            main = cat_tasks[0].metadata.main_score
            lines += [f"### Table {TABLES.get(category, '-')}: {category} ({main} x100): {other} - {base}", "",
                      f"| Task | items | {base} | {other} | delta | 95% interval | p | paper PromptEOL | paper +TP | "
                      "local copy |", "|---|---|---|---|---|---|---|---|---|---|"]
            for row, task in zip([*rows, average], [*cat_tasks, None], strict=True):
                name = row.name.removesuffix("-local")
                differs = local_copy(name).differs if task is not None else None
                paper = paper_cells(name) if task is not None else ["-", "-"]
                bold = "**" if task is None else ""
                lines.append(f"| {bold}{name}{bold} | {row.items} | {100 * row.score_a:.2f} | {100 * row.score_b:.2f} | "
                             f"{100 * row.delta:+.2f} | [{100 * row.low:+.2f}, {100 * row.high:+.2f}] | "
                             f"{row.p_value:.3f} | {' | '.join(paper)} | {differs or ('same rows as mteb' if task else '')} |")
            lines.append("")
    return lines, data


def transfer_tables(senteval_run, labels: list[str], resamples: int, tasks: list[str]) -> tuple[list[str], dict]:
    from st_tp.evaluation.senteval.table import paper_rows
    from st_tp.evaluation.significance import transfer_bootstrap

    results = senteval_run.results
    lines = ["### Table 5: transfer tasks (SentEval, accuracy x100)", "",
             "| Model | " + " | ".join(tasks) + " | Avg. |", "|---|" + "---|" * (len(tasks) + 1)]
    for label in labels:
        accs = [results[label][t].acc for t in tasks]
        lines.append(f"| {label} | " + " | ".join(f"{a:.2f}" for a in accs) + f" | {sum(accs) / len(accs):.2f} |")
    for name, row in paper_rows().items():
        lines.append(f"| paper, Llama-2-7B, {name} (full sets) | " + " | ".join(row[t] for t in tasks) + f" | {row['Avg.']} (7) |")
    lines.append("")
    data = {}
    for other in labels[1:]:
        items = {label: {t: results[label][t].__dict__ for t in tasks} for label in (labels[0], other)}
        rows, average = transfer_bootstrap(items[labels[0]], items[other], resamples=resamples)
        data[f"transfer: {other} - {labels[0]}"] = [r.__dict__ for r in [*rows, average]]
        lines += [f"Item accuracy (test items; out-of-fold items for MR, CR, SUBJ, MPQA), {other} - {labels[0]}:", "",
                  "| Task | items | " + f"{labels[0]} | {other} | delta | 95% interval | p |", "|---|---|---|---|---|---|---|"]
        for row in [*rows, average]:
            lines.append(f"| {row.name} | {row.items} | {100 * row.score_a:.2f} | {100 * row.score_b:.2f} | "
                         f"{100 * row.delta:+.2f} | [{100 * row.low:+.2f}, {100 * row.high:+.2f}] | {row.p_value:.3f} |")
        lines.append("")
    return lines, data


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="packaged:qwen2.5-1.5b")
    parser.add_argument("--presets", nargs="+", default=["qwen2.5-1.5b-prompteol", "qwen2.5-1.5b-prompteol-tp"])
    parser.add_argument("--out", default="runs/appendix")
    parser.add_argument("--sts-sample", type=int, default=250, help="test pairs per STS set (random, seed 0)")
    parser.add_argument("--classification-sample", type=int, default=500, help="test texts per task (random, seed 0)")
    parser.add_argument("--pair-sample", type=int, default=1000, help="TwitterURLCorpus test pairs (random, seed 0)")
    parser.add_argument("--clustering-texts", type=int, default=2000, help="TwentyNewsgroups texts (random, seed 0)")
    parser.add_argument("--summarization-documents", type=int, help="SummEval documents (default: all 100)")
    parser.add_argument("--senteval-sample", type=int, default=2000, help="examples per SentEval split (random)")
    parser.add_argument("--categories", default=",".join(CATEGORIES), help=f"comma-separated, of {', '.join(CATEGORIES)}")
    parser.add_argument("--transfer-tasks", default="transfer", help="SentEval tasks (transfer: all seven)")
    parser.add_argument("--transfer-presets", nargs="*", default=[], help="more presets scored on the transfer tasks "
                        "only (e.g. a tp_end chosen by st-tp sweep --transfer on SST-2 dev), each against the first preset")
    parser.add_argument("--skip-transfer", action="store_true")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--write", action="store_true", help="put the tables in benchmarks/RESULTS.md")
    args = parser.parse_args(argv)

    from st_tp.evaluation import run_mteb, run_senteval
    from st_tp.runtime.config import saved_dtype

    started, stages = time.time(), {}
    folders = build_folders(args, args.presets)
    labels = [Path(f).name for f in folders]
    transfer_folders = [] if args.skip_transfer else folders + build_folders(args, args.transfer_presets)
    tasks, notes = appendix_tasks(args)
    clock = time.time()
    run = run_mteb(folders, tasks, Path(args.out) / "mteb", batch_size=args.batch_size, device="cpu")
    stages["mteb (embedding and mteb's evaluators)"] = time.time() - clock
    if run.failures:
        raise SystemExit(f"mteb failures: {run.failures}")
    clock = time.time()
    body, data = category_tables(tasks, run, labels, args.resamples)
    stages["paired bootstrap, mteb tasks"] = time.time() - clock
    if not args.skip_transfer:
        clock = time.time()
        senteval_run = run_senteval(transfer_folders, args.transfer_tasks, DATA / "senteval", Path(args.out) / "senteval",
                                    sample=args.senteval_sample, classifier="sklearn", batch_size=args.batch_size,
                                    device="cpu")
        stages["SentEval (embedding and classifiers)"] = time.time() - clock
        if senteval_run.failures:
            raise SystemExit(f"SentEval failures: {senteval_run.failures}")
        transfer, transfer_data = transfer_tables(senteval_run, [Path(f).name for f in transfer_folders], args.resamples,
                                                  list(senteval_run.summary.tasks))
        body, data = transfer + body, {**transfer_data, **data}
    dtype = ", ".join(f"{Path(folder).name} in {str(saved_dtype(folder, 'cpu')[1]).removeprefix('torch.')}"
                      for folder in transfer_folders or folders)
    command = shlex.join(["python", "benchmarks/bench_appendix.py", *sys.argv[1:]])
    intro = [f"`{command}` (CPU {cpu_name()}, {dtype}, {time.strftime('%Y-%m-%d')}; {time.time() - started:.0f} s in all, "
             + ", ".join(f"{k} {v:.0f} s" for k, v in stages.items()) + ").", "",
             f"Samples (random, seed 0): STS {args.sts_sample} pairs per set (BIOSSES has 100), classification "
             f"{args.classification_sample} test texts per task (training texts as mteb draws them: samples_per_label "
             f"per label, 10 experiments), TwitterURLCorpus {args.pair_sample} test pairs, TwentyNewsgroups "
             f"{args.clustering_texts} texts, SummEval {args.summarization_documents or 'all 100'} documents"
             + (", no SentEval (--skip-transfer)" if args.skip_transfer else
                f", SentEval at most {args.senteval_sample} examples per split (scikit-learn classifier)")
             + f". {'; '.join(notes)}. "
             f"Intervals: {args.resamples} paired bootstrap resamples of the test items, each scored by mteb's own "
             "metric code; p: two-sided bootstrap p-value of no difference. The paper's columns are Llama-2-7B on "
             "mteb's full sets, quoted; a local copy that differs from mteb's data is named in the last column.", ""]
    report = "\n".join(intro + body)
    print(report)
    (Path(args.out) / "appendix.json").write_text(json.dumps({"stages": stages, "bootstrap": data}, indent=1, default=str))
    if args.write:
        write_section(f"The paper's whole evaluation on {args.model} (bench_appendix.py, CPU)", report)
    return {"report": report, "stages": stages, "bootstrap": data, "mteb": run}


if __name__ == "__main__":
    main()
