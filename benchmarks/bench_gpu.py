"""Throughput and model FLOPs utilisation (MFU) at Llama-2-7B shapes, fp16, batch 64, on a GPU.

Model: a random-init `LlamaModel` with Llama-2-7B's shapes (hidden 4096, 32 layers, 32 heads, MLP 11008, vocab
32000) and the real Llama-2 tokenizer; timing does not depend on the weights, so nothing is downloaded. It is
initialised on the device, saved once, and loaded through `st_tp.build` as a user's model would be.
Data: STS-B test sentences (../shared/data/raw/stsb.test.tsv). Settings from configs/llama2-7b-prompteol-tp.yaml
(PromptEOL, TP before layers 1..6, exit at hidden_states[27] of 32), scaled by L/32 for other depths.

Variants, interleaved round by round:
  tp            the paper's setting
  vanilla       PromptEOL without TP, same exit
  vanilla_last  PromptEOL without TP, output_layer=-1 (the usual PromptEOL readout)
Per variant: sentences/s end to end (`model.encode`, tokenization included) and forward only (pre-tokenized
length-sorted batches, as `encode` makes them); MFU of the forward = useful model FLOPs / time / dense fp16
peak; the weights' and the peak activation memory.

    python benchmarks/bench_gpu.py --write                    # on a CUDA GPU; --write updates RESULTS.md "## GPU"
    python benchmarks/bench_gpu.py --shapes tiny --device cpu --dtype float32 --peak-tflops 1   # smoke run
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
from pathlib import Path

import torch
from sentence_transformers.util import batch_to_device
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import SHAPES, make_base, ratio_lines, sentences, time_interleaved, write_section  # noqa: E402
from st_tp.runtime.config import paper_setting  # noqa: E402

# Dense (no sparsity) FP16/BF16 tensor-core peaks from NVIDIA's datasheets, TFLOP/s; matched in this order
# against torch.cuda.get_device_name(). Anything else needs --peak-tflops.
DENSE_FP16_PEAK_TFLOPS = [("H200", 989.4), ("H100 PCIe", 756.0), ("H100 NVL", 835.5), ("H100", 989.4),
                          ("A100", 312.0), ("L40S", 362.1), ("L4", 121.0), ("A10", 125.0)]


def dense_fp16_peak_tflops(device_name: str) -> float | None:
    return next((peak for key, peak in DENSE_FP16_PEAK_TFLOPS if key in device_name), None)


def model_flops(module, features: dict) -> dict[str, int]:
    """Useful forward FLOPs of one batch, as the module computes it: the decoder layers that run, over the tokens
    actually computed (the cached prefix and padding excluded; the MLP and the query and output projections skip the
    rows never read: all but the last tokens in the last layer that runs, the <PST> rows in a layer before a TP layer;
    the LM head is never built).

    linear:    2 x (weights of the layer's Linear modules) per computed token per layer;
    attention: 4 x (heads x head_dim) per (query, key) pair a causal query attends to (cached prefix keys
               included): the scores and the weighted sum of values.
    Norms, rotary embeddings and activations are elementwise and left out, as MFU conventionally does.
    """
    from st_tp.runtime.decoder import find_decoder
    from st_tp.runtime.decoder import row_wise_parts as read_rows_only_parts
    from st_tp.runtime.row_skipping import layers_before_tp

    def linear_weights(modules) -> int:
        return sum(m.weight.numel() for m in modules if isinstance(m, nn.Linear))

    runner = module.runner
    decoder = find_decoder(runner.model)
    layers = decoder.layers[: min(runner.exit_layer, len(decoder.layers))]
    per_token = sum(linear_weights(layer.modules()) for layer in layers)
    # Weights that skip a row: in the last layer that runs (all but the last tokens), and before a TP layer (<PST>).
    skipping = [sum(linear_weights(part.modules()) for part in read_rows_only_parts(layer)) for layer in layers]
    before_tp = sum(skipping[i] for i in layers_before_tp(runner.tp_layers, len(layers) - 1))
    cfg = decoder.config
    attention_width = cfg.num_attention_heads * (getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    tokens = rows = pst_slots = pairs = 0
    for batch in runner.template_batches(features):
        mask = batch.attention_mask
        past = batch.prefix.length if batch.prefix is not None else 0
        tokens += int(mask.sum())
        rows += mask.shape[0]
        pst_slots += batch.pst_positions.numel() if batch.pst_positions is not None else 0
        pairs += int(((mask.cumsum(1) + past) * mask).sum())  # each computed token attends to past + itself + earlier
    skipped = (tokens - rows) * (skipping[-1] if skipping else 0) + pst_slots * before_tp
    return {"linear": 2 * (tokens * per_token - skipped), "attention": 4 * attention_width * pairs * len(layers)}


def variants(total_layers: int) -> dict[str, dict]:
    paper = paper_setting(total_layers)
    return {
        "tp": paper,
        "vanilla": dict(paper, tp=False),
        "vanilla_last": dict(paper, tp=False, output_layer=-1),
    }


def batches(module, texts: list[str], batch_size: int, device: str) -> list[dict]:
    """Length-sorted (longest first, as `encode` sorts) pre-tokenized batches, already on the device."""
    ordered = sorted(texts, key=len, reverse=True)
    return [
        batch_to_device(module.preprocess(ordered[i : i + batch_size]), device)
        for i in range(0, len(ordered), batch_size)
    ]


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", choices=sorted(SHAPES), default="llama2-7b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--sentences", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, help="the device's dense peak for --dtype, TFLOP/s")
    parser.add_argument("--write", action="store_true", help="record the figures in RESULTS.md (CUDA runs only)")
    args = parser.parse_args(argv)
    on_cuda = args.device.startswith("cuda")
    if args.write and not on_cuda:
        parser.error("--write records GPU figures in RESULTS.md; this run is not on a CUDA device.")
    if on_cuda and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device; use --device cpu for a smoke run.")

    import st_tp

    dtype = getattr(torch, args.dtype)
    device_name = torch.cuda.get_device_name(args.device) if on_cuda else "CPU"
    peak = args.peak_tflops or (dense_fp16_peak_tflops(device_name) if dtype != torch.float32 else None)
    texts = sentences(args.sentences)
    total_layers = SHAPES[args.shapes]["num_hidden_layers"]
    with tempfile.TemporaryDirectory() as tmp:
        base = make_base(Path(tmp) / args.shapes, args.shapes, args.device, dtype)
        models, weights_gib = {}, {}
        for name, settings in variants(total_layers).items():
            models[name] = st_tp.build(base, dtype=args.dtype, device=args.device, **settings)
            weights_gib[name] = sum(p.numel() * p.element_size() for p in models[name].parameters()) / 2**30
    prepared = {name: batches(model[0], texts, args.batch_size, args.device) for name, model in models.items()}
    flops = {name: sum(sum(model_flops(models[name][0], b).values()) for b in bs) for name, bs in prepared.items()}

    def encode(name):
        models[name].encode(texts, batch_size=args.batch_size, convert_to_tensor=True)

    def forward(name):
        with torch.inference_mode():
            for features in prepared[name]:
                models[name][0].forward(dict(features))

    activation_gib = {}
    for name in models:  # warm-up (kernels, prefix caches), and the peak activation memory of one encode
        forward(name)
        if on_cuda:
            synchronize(args.device)
            torch.cuda.reset_peak_memory_stats(args.device)
            before = torch.cuda.memory_allocated(args.device)
        encode(name)
        if on_cuda:
            synchronize(args.device)
            activation_gib[name] = (torch.cuda.max_memory_allocated(args.device) - before) / 2**30
    runs = {(name, kind): functools.partial(fn, name) for name in models for kind, fn in (("encode", encode), ("forward", forward))}
    med = time_interleaved(runs, args.rounds, sync=functools.partial(synchronize, args.device))

    rows = {}
    for name in models:
        encode_s, forward_s = med[name, "encode"], med[name, "forward"]
        achieved = flops[name] / forward_s / 1e12
        rows[name] = {
            "sentences_per_s_encode": len(texts) / encode_s,
            "sentences_per_s_forward": len(texts) / forward_s,
            "forward_tflops": achieved,
            "mfu": achieved / peak if peak else None,
            "weights_gib": weights_gib[name],
            "peak_activation_gib": activation_gib.get(name),
        }
    ratios = {
        "TP / vanilla PromptEOL, same exit, forward time": rows["vanilla"]["sentences_per_s_forward"] / rows["tp"]["sentences_per_s_forward"],
        "TP at the paper's exit / vanilla PromptEOL at output_layer=-1, forward time": rows["vanilla_last"]["sentences_per_s_forward"] / rows["tp"]["sentences_per_s_forward"],
    }
    settings = paper_setting(total_layers)
    lines = [
        f"Device: {device_name}; torch {torch.__version__}; {args.dtype}; shapes {args.shapes} ({total_layers} layers); "
        f"batch {args.batch_size}; {len(texts)} STS-B test sentences; {args.rounds} interleaved rounds, medians. "
        f"Paper setting: tp_start {settings['tp_start']}, tp_end {settings['tp_end']}, exit {settings['output_layer']}/{total_layers}. "
        f"MFU = useful forward FLOPs (cached prefix and padding excluded) / forward time / "
        + (f"{peak:g} TFLOP/s dense peak." if peak else "no known peak (MFU not computed; pass --peak-tflops)."),
        "",
        "| variant | sentences/s (encode) | sentences/s (forward) | forward TFLOP/s | MFU | weights GiB | peak activations GiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        act = f"{r['peak_activation_gib']:.2f}" if r["peak_activation_gib"] is not None else "n/a"
        lines.append(f"| {name} | {r['sentences_per_s_encode']:.0f} | {r['sentences_per_s_forward']:.0f} | "
                     f"{r['forward_tflops']:.3g} | {mfu} | {r['weights_gib']:.2f} | {act} |")
    lines += ratio_lines(ratios)
    report = "\n".join(lines)
    print(report)
    result = {"device": device_name, "rows": rows, "ratios": ratios}
    print(json.dumps(result))
    if args.write:
        write_section("GPU", f"`bench_gpu.py`, {device_name}.\n\n{report}")
    return result


if __name__ == "__main__":
    main()
