"""`st-tp mteb`: the appendix evaluation from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def run(args: argparse.Namespace) -> None:
    from st_tp.evaluation.runner import run_mteb, task_selection
    from st_tp.evaluation.tasks import describe

    if args.limit is not None and not args.local_data:
        raise ValueError("--limit slices the local TSV tasks only: add --local-data DIR, or drop --limit.")
    if args.local_data and not Path(args.local_data).is_dir():
        raise ValueError(f"--local-data {args.local_data}: no such folder.")
    if args.list:
        selection = task_selection(args.tasks, args.local_data, args.limit)
        for task in selection.tasks:
            print(describe(task))
        for note in selection.notes:
            print(note)
        print(f"{len(selection.tasks)} tasks")
        return
    if not args.models:
        raise ValueError("give at least one model folder (st-tp mteb MODEL ... --tasks SET), or --list.")
    from st_tp.base_model import check_local_path

    for model in args.models:
        check_local_path(model)
    run = run_mteb(args.models, args.tasks, args.output_folder, local_data=args.local_data, limit=args.limit,
                   batch_size=args.batch_size, device=args.device)
    if run.failures:
        print(f"st-tp: {len(run.failures)} task(s) failed; see 'Failures' in {run.summary_path}", file=sys.stderr)
        raise SystemExit(1)
