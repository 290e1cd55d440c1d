"""Where the time of one TP batch goes (torch.profiler), on a real model: tokenization, then the forward by operator
and by region (matmuls of the projections and MLP, attention, masks and positions, our hooks, the rest).

    python benchmarks/profile_tp.py --model packaged:smollm2-135m
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import sentences  # noqa: E402
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="packaged:smollm2-135m")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--prefix-cache", default="auto", choices=["auto", "true", "false"])
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    from transformers import AutoConfig

    import st_tp
    from st_tp.base_model import resolve_base_model

    base = resolve_base_model(args.model).path
    layers = AutoConfig.from_pretrained(base).num_hidden_layers
    cache = {"auto": "auto", "true": True, "false": False}[args.prefix_cache]
    paper = paper_setting(layers)
    exit_layer = paper["output_layer"]
    model = st_tp.build(base, **paper, prefix_cache=cache, dtype="float32", device="cpu")
    module = model[0]
    texts = sentences(args.batch)
    module.forward(module.preprocess(texts))  # warm-up
    started = time.perf_counter()
    for _ in range(5):
        features = module.preprocess(texts)
    tokenize_ms = (time.perf_counter() - started) / 5 * 1000
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        module.forward(dict(features))
        forward_ms = (time.perf_counter() - started) * 1000
    events = prof.key_averages()
    by_region = defaultdict(float)
    for event in events:
        by_region[region(event.key)] += event.self_cpu_time_total / 1000
    profiled_ms = sum(by_region.values())
    width = features["input_ids"].shape[1]
    print(f"{args.model}: {layers} layers, TP 1..6, exit {exit_layer}, batch {args.batch} x {width} tokens, "
          f"prefix_cache={args.prefix_cache}")
    print(f"tokenization (preprocess): {tokenize_ms:.1f} ms; forward: {forward_ms:.1f} ms wall, {profiled_ms:.1f} ms in operators")
    print(f"{'region':45s} {'ms':>8s} {'share':>7s}")
    for label, ms in sorted(by_region.items(), key=lambda item: -item[1]):
        print(f"{label:45s} {ms:8.1f} {ms / profiled_ms:7.1%}")
    python_ms = forward_ms - profiled_ms
    print(f"{'Python between operators (hooks, HF glue)':45s} {python_ms:8.1f} {python_ms / forward_ms:7.1%} of wall")
    print(events.table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
