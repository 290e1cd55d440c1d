"""`st-tp mteb`: the appendix evaluation from the command line."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("mteb", help="evaluate models on MTEB task sets (the paper's appendix) or local TSV data")
    p.add_argument("models", nargs="*", help="saved st_tp folders or any SentenceTransformer model")
    p.add_argument("--tasks", default="appendix", help="classification, pair-classification, reranking, clustering, "
                   "summarization, sts, appendix, or comma-separated task names")
    p.add_argument("--output-folder", default="mteb-results")
    p.add_argument("--local-data", help="folder of TSV files (see ../shared/data/SOURCES.md) instead of the hub")
    p.add_argument("--limit", type=int, help="with --local-data: first N test rows per task")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device")
    p.add_argument("--list", action="store_true", help="print the resolved task list and exit (no download)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from st_tp.evaluation.runner import run_mteb, select_tasks
    from st_tp.evaluation.tasks import describe

    if args.list:
        tasks = select_tasks(args.tasks, args.local_data, args.limit)
        for task in tasks:
            print(describe(task))
        print(f"{len(tasks)} tasks")
        return
    if not args.models:
        raise SystemExit("st-tp mteb: give at least one model (or --list)")
    run_mteb(args.models, args.tasks, args.output_folder, local_data=args.local_data, limit=args.limit,
             batch_size=args.batch_size, device=args.device)
