"""Where the time of one TP batch goes (torch.profiler), on a real model: tokenization, then the forward by operator
and by region (matmuls of the projections and MLP, attention, masks and positions, our hooks, the rest), on the CPU it
names. `--native` profiles sentence-transformers' own last-token pooling on the same batch beside it;
`--onednn-verbose` also lists which oneDNN kernels ran the matmuls (e.g. brgemm on avx512_core_amx, the AMX tiles);
`--encode` profiles a whole `model.encode` (several batches, as bench_speed times it), `--shapes` by input shape too.

    python benchmarks/profile_tp.py --model packaged:smollm2-135m                       # the paper's setting, float32
    python benchmarks/profile_tp.py --preset smollm2-135m-prompteol-tp --dtype bfloat16 --native --onednn-verbose
    python benchmarks/profile_tp.py --preset smollm2-135m-prompteol-tp --dtype bfloat16 --native --encode --batch 256 --shapes
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import cpu_name, sentences  # noqa: E402
from st_tp.runtime.config import paper_setting  # noqa: E402

# Operator name prefixes -> region. Self time is summed, so nothing is counted twice.
REGIONS = {
    "matmul (projections, MLP)": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear"),
    "attention kernel": ("aten::_scaled_dot_product", "aten::scaled_dot_product", "aten::_softmax", "aten::softmax"),
    "elementwise (norms, rotary, activations)": ("aten::mul", "aten::add", "aten::silu", "aten::rsqrt", "aten::pow",
                                                 "aten::mean", "aten::neg", "aten::cat", "aten::gelu", "aten::tanh"),
    "masks and positions": ("aten::arange", "aten::cumsum", "aten::le", "aten::lt", "aten::ge", "aten::gt", "aten::eq",
                            "aten::__and__", "aten::bitwise_and", "aten::any", "aten::all", "aten::where",
                            "aten::expand", "aten::logical", "aten::sub"),
    "copies and indexing": ("aten::copy_", "aten::index", "aten::clone", "aten::contiguous", "aten::to", "aten::_to_copy",
                            "aten::index_put", "aten::select", "aten::slice", "aten::view", "aten::reshape"),
}


def region(name: str) -> str:
    for label, prefixes in REGIONS.items():
        if name.startswith(prefixes):
            return label
    return "other operators"


def profile_forward(forward, label: str, shapes: bool = False) -> None:
    """One profiled call of `forward` (warm), printed by region and by operator (with `shapes`, also by operator and
    input shape: the same operator can cost far more per element at one size than at another)."""
    forward()  # warm-up (and the prefix cache)
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU], record_shapes=shapes) as prof:
        started = time.perf_counter()
        forward()
        forward_ms = (time.perf_counter() - started) * 1000
    events = prof.key_averages()
    by_region = defaultdict(float)
    for event in events:
        by_region[region(event.key)] += event.self_cpu_time_total / 1000
    profiled_ms = sum(by_region.values())
    print(f"\n{label}: forward {forward_ms:.1f} ms wall, {profiled_ms:.1f} ms in operators")
    print(f"{'region':45s} {'ms':>8s} {'share':>7s}")
    for name, ms in sorted(by_region.items(), key=lambda item: -item[1]):
        print(f"{name:45s} {ms:8.1f} {ms / profiled_ms:7.1%}")
    python_ms = forward_ms - profiled_ms
    print(f"{'Python between operators (hooks, HF glue)':45s} {python_ms:8.1f} {python_ms / forward_ms:7.1%} of wall")
    print(events.table(sort_by="self_cpu_time_total", row_limit=12))
    if shapes:
        by_shape = sorted(prof.key_averages(group_by_input_shape=True), key=lambda event: -event.self_cpu_time_total)
        print(f"{'operator':34s} {'ms':>8s} {'calls':>6s} {'us/call':>8s}  input shapes")
        for event in by_shape[:16]:
            ms = event.self_cpu_time_total / 1000
            print(f"{event.key[:34]:34s} {ms:8.1f} {event.count:6d} {1000 * ms / event.count:8.1f}  {str(event.input_shapes)[:90]}")


MARK = "st_tp-profile: forward"


def onednn_kernels(argv: list[str], label: str) -> None:
    """Which oneDNN primitives (and ISA) one forward of `label` runs, counted from oneDNN's own verbose log: the same
    command in a child process with ONEDNN_VERBOSE=1 (set before oneDNN starts: switching it on later logs nothing
    here). Float32 matmuls go to MKL's BLAS and log nothing; bfloat16 ones go to oneDNN, whose implementation names
    the ISA (avx512_core_bf16, avx512_core_amx, ...)."""
    import subprocess

    child = subprocess.run([sys.executable, __file__, *argv, "--onednn-child", label], capture_output=True, text=True,
                           env={**os.environ, "ONEDNN_VERBOSE": "1"})
    if child.returncode:
        raise SystemExit(f"the oneDNN-logged run of {label} failed:\n{child.stderr[-2000:]}")
    lines = child.stdout.split(f"{MARK} begins\n", 1)[-1].split(f"{MARK} ends", 1)[0].splitlines()
    kinds, calls = defaultdict(float), defaultdict(int)
    for line in lines:  # onednn_verbose,v1,primitive,exec,cpu,matmul,brg_matmul:avx512_core_amx,...,512x576:576x1536,4.04
        parts = line.split(",")
        if parts[0] != "onednn_verbose" or "exec" not in parts[:4]:
            continue
        at = parts.index("exec")
        kind = f"{parts[at + 2]} {parts[at + 3]} {parts[-2]}"  # primitive, implementation (its ISA), problem shape
        kinds[kind] += float(parts[-1] or 0)
        calls[kind] += 1
    print(f"\noneDNN primitives of one {label} forward (primitive, implementation, shape): calls, total ms")
    for kind, ms in sorted(kinds.items(), key=lambda item: -item[1])[:20] or [("none ran (float32 matmuls go to BLAS)", 0)]:
        print(f"  {kind:80s} {calls.get(kind, 0):5d} {ms:8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="packaged:smollm2-135m")
    parser.add_argument("--preset", help="profile this preset (e.g. smollm2-135m-prompteol-tp) instead of the paper's "
                        "setting scaled to the model")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "auto"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--prefix-cache", default="auto", choices=["auto", "true", "false"])
    parser.add_argument("--native", action="store_true", help="also profile sentence-transformers' last-token pooling "
                        "(all layers, the PromptEOL prompt by hand) on the same sentences and dtype")
    parser.add_argument("--onednn-verbose", action="store_true", help="also list the oneDNN kernels the matmuls ran")
    parser.add_argument("--encode", action="store_true", help="profile model.encode over the --batch sentences (batches "
                        "of 32, sorted by length, tokenization included) instead of one forward of one batch")
    parser.add_argument("--shapes", action="store_true", help="also list operators by input shape")
    parser.add_argument("--onednn-child", help=argparse.SUPPRESS)  # internal: one logged forward of this variant
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    from transformers import AutoConfig

    import st_tp
    from st_tp.base_model import resolve_base_model
    from st_tp.runtime.config import resolve_dtype

    base = resolve_base_model(args.model).path
    layers = AutoConfig.from_pretrained(base).num_hidden_layers
    cache = {"auto": "auto", "true": True, "false": False}[args.prefix_cache]
    dtype = str(resolve_dtype(args.dtype, "cpu")).removeprefix("torch.")
    settings = {} if args.preset else paper_setting(layers)
    model = st_tp.build(base, args.preset, **settings, prefix_cache=cache, dtype=dtype, device="cpu")
    module, config = model[0], model[0].tp_config
    texts = sentences(args.batch)
    started = time.perf_counter()
    for _ in range(5):
        features = module.preprocess(texts)
    tokenize_ms = (time.perf_counter() - started) / 5 * 1000
    width = features["input_ids"].shape[1]
    print(f"CPU: {cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} threads, {dtype}")
    print(f"{args.model}: {layers} layers, {args.preset or 'the paper setting'} (TP {config.tp_start}..{config.tp_end - 1}, "
          f"exit {config.output_layer}), batch {args.batch} x {width} tokens, prefix_cache={args.prefix_cache}")
    print(f"tokenization (preprocess): {tokenize_ms:.1f} ms")
    forwards = {"st_tp": (lambda: model.encode(texts, batch_size=32)) if args.encode else lambda: module.forward(dict(features))}
    if args.native:
        from benchmarks.bench_speed import st_native

        native = st_native(base, dtype)
        forwards["ST native (last-token pooling, all layers)"] = lambda: native(texts)  # tokenization included
    if args.onednn_child:
        import ctypes

        flush_c_stdio = functools.partial(ctypes.CDLL(None).fflush, None)  # oneDNN logs through C's buffered stdout
        forward = forwards[args.onednn_child]
        with torch.inference_mode():
            forward()  # warm-up: oneDNN creates its primitives on first use
            flush_c_stdio()
            print(f"{MARK} begins", flush=True)
            forward()
            flush_c_stdio()
            print(f"{MARK} ends", flush=True)
        return
    for label, forward in forwards.items():
        profile_forward(forward, label, args.shapes)
        if args.onednn_verbose:
            onednn_kernels([a for a in sys.argv[1:] if a != "--onednn-verbose"], label)


if __name__ == "__main__":
    main()
