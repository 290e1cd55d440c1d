"""Cost of the output-layer sweep vs one plain evaluation, interleaved in one run (CPU).

Model: the random Llama of bench_speed.py (hidden 512, 16 layers); data: STS-B dev pairs (raw text).
  * sweep_one:   every output layer (0..16) for one tp_end (4), in one pass per batch  (st_tp.sweep)
  * plain_exit:  one evaluation at the paper-like setting (tp_end 4, exit 14/16): st_tp.build + encode + Spearman
  * plain_last:  the same at output_layer=-1 (every layer, as the sweep must run)
Both the sweep and the plain evaluations load the model inside the timed call, as a user's run does.
  * sweep_many:  tp_end 2..8 (7 values) in one sweep, vs 7 x sweep_one

Real-model mode (`--model packaged:qwen2.5-1.5b --tp-ends 2..12`): the sweep's cost in full passes, measured. The
sweep of those tp_end values plus vanilla (as `st-tp sweep` runs it) against one plain evaluation that runs every
layer (TP at the largest tp_end, output_layer=-1), both at the default dtype and loading their model inside the
timed call; beside it the count `st_tp.sweep.full_passes` predicts and the n + 1 bound.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_speed import SHAPE  # noqa: E402
from benchmarks.common import cpu_name, make_base, ratio_lines, time_interleaved, write_section  # noqa: E402

DEV = ROOT.parent / "shared" / "data" / "raw" / "stsb.dev.tsv"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="random", help="random (the 512x16 Llama of bench_speed.py) or packaged:<name>")
    parser.add_argument("--tp-ends", default="2..12", help="real-model mode: the swept tp_end values, as st-tp sweep --tp-end takes them")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    if args.model != "random":
        return model_main(args)

    import numpy as np
    from scipy.stats import spearmanr

    import st_tp
    from st_tp.data import read_pairs
    from st_tp.sweep import sweep

    with tempfile.TemporaryDirectory() as tmp:
        base = make_base(Path(tmp) / SHAPE, SHAPE)
        s1, s2, gold = read_pairs(DEV, args.pairs)
        common = dict(limit=args.pairs, dtype="float32", device="cpu", show_progress_bar=False, include_vanilla=False)
        def plain(output_layer):  # one evaluation as a user runs it: build (load) the model, embed both sides, score
            model = st_tp.build(base, tp_end=4, output_layer=output_layer, dtype="float32", device="cpu")
            a, b = model.encode(s1, batch_size=32), model.encode(s2, batch_size=32)
            return spearmanr(gold, (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).statistic

        runs = {  # the sweep, too, loads its model inside the timed call
            "sweep_one": lambda: sweep(base, DEV, tp_ends=[4], **common),
            "sweep_many": lambda: sweep(base, DEV, tp_ends=list(range(2, 9)), **common),
            "plain_exit": lambda: plain(14),
            "plain_last": lambda: plain(-1),
        }
        med = time_interleaved(runs, args.rounds)
    lines = [f"CPU float32, 2 cores; {args.pairs} STS-B dev pairs; {args.rounds} interleaved rounds, median seconds.", "",
             "| run | median s |", "|---|---|"] + [f"| {n} | {v:.2f} |" for n, v in med.items()]
    lines += ratio_lines({
        "full output-layer sweep (one tp_end) / one plain evaluation at exit 14/16 (goal <= 1.3)": med["sweep_one"] / med["plain_exit"],
        "full output-layer sweep (one tp_end) / one plain evaluation at output_layer=-1": med["sweep_one"] / med["plain_last"],
        "sweep of 7 tp_end values / 7 x one-tp_end sweep (shared layers reused)": med["sweep_many"] / (7 * med["sweep_one"]),
    })
    report = "\n".join(lines)
    print(report)
    if args.write:
        write_section("bench_sweep.py (CPU)", report)


def model_main(args) -> None:
    import numpy as np
    import torch
    from scipy.stats import spearmanr

    import st_tp
    from st_tp.cli import parse_tp_ends
    from st_tp.data import read_pairs
    from st_tp.runtime.config import resolve_dtype
    from st_tp.sweep import full_passes, sweep

    tp_ends = parse_tp_ends(args.tp_ends)
    s1, s2, gold = read_pairs(DEV, args.pairs)
    total_layers = []

    def plain():  # one evaluation that runs every layer, as a user's run does: build (load), embed both sides, score
        model = st_tp.build(args.model, tp_end=tp_ends[-1], output_layer=-1, device="cpu")
        total_layers.append(model[0].runner.total_layers)
        a, b = model.encode(s1, batch_size=32), model.encode(s2, batch_size=32)
        return spearmanr(gold, (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).statistic

    runs = {"plain_all_layers": plain,
            "sweep": lambda: sweep(args.model, DEV, tp_ends=tp_ends, limit=args.pairs, device="cpu", show_progress_bar=False)}
    med = time_interleaved(runs, args.rounds)
    layers, n = total_layers[0], len(tp_ends)
    dtype = str(resolve_dtype("auto", "cpu")).removeprefix("torch.")
    lines = [f"{args.model} ({layers} layers), {dtype} (the default dtype here), CPU {cpu_name()}, "
             f"{torch.get_num_threads()} threads; {args.pairs} STS-B dev pairs; tp_end {args.tp_ends} (n = {n}) + vanilla; {args.rounds} interleaved "
             "round(s), median seconds.", "", "| run | median s |", "|---|---|"] + [f"| {k} | {v:.2f} |" for k, v in med.items()]
    lines += ratio_lines({
        f"sweep / one plain evaluation, wall time, both loading the model (bound about n + 1 = {n + 1})": med["sweep"] / med["plain_all_layers"],
        "full passes counted by st_tp.sweep.full_passes (layer computations / depth)": full_passes(tp_ends, layers),
    })
    report = "\n".join(lines)
    print(report)
    if args.write:
        write_section(f"bench_sweep.py --model {args.model} (CPU)", report)


if __name__ == "__main__":
    main()
