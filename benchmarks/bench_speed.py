"""Speed and memory of st_tp vs the alternatives, on CPU, with the variants interleaved in one run.

Model: a random-init Llama of realistic proportions (hidden 512, 16 layers, 8 heads, SwiGLU 1408, vocab 32000);
timing does not depend on the weights. Data: STS-B test sentences (../shared/data/raw/stsb.test.tsv).
Paper setting scaled to 16 layers: TP before layers 1..3 (7/32 -> 4/16), exit at hidden_states[14] (27/32 -> 14/16).

    python benchmarks/bench_speed.py                 # prints medians and ratios, writes nothing
    python benchmarks/bench_speed.py --write         # also updates benchmarks/RESULTS.md

Real-model mode (`--model packaged:smollm2-135m` or `packaged:gemma3-270m`; falls back to the random model when the
package is absent): st_tp against sentence-transformers' own `Transformer` + `Pooling("lasttoken")` with the
PromptEOL prompt applied by hand (all layers; the same embeddings as st_tp's vanilla PromptEOL at -1), at equal
dtypes (float32 and bfloat16), st_tp at its default dtype, the machine's matmul roofline and each variant's CPU MFU
measured in the same run; with `--prompt-methods`, every prompt method with prefix_cache "auto", True and False.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    cpu_kind,
    cpu_name,
    make_base,
    paired_ratios,
    ratio_lines,
    sentences,
    time_interleaved,
    time_rounds,
    write_section,
)
from st_tp.runtime.config import paper_setting  # noqa: E402

MACHINE = f"{cpu_name()}, torch {torch.__version__}, CPU float32"
SHAPE = "llama-512x16"
LAYERS = 16
EXIT, TP_END = paper_setting(LAYERS)["output_layer"], paper_setting(LAYERS)["tp_end"]  # 14, 4


VARIANTS = {  # name -> build settings; "naive" marks the official-style reference path
    "tp": dict(tp_end=TP_END, output_layer=EXIT),
    "vanilla": dict(tp=False, output_layer=EXIT),
    "tp_nocache": dict(tp_end=TP_END, output_layer=EXIT, prefix_cache=False),
    "vanilla_nocache": dict(tp=False, output_layer=EXIT, prefix_cache=False),
    "tp_exit_half": dict(tp_end=TP_END, output_layer=LAYERS // 2),
    "tp_exit_last": dict(tp_end=TP_END, output_layer=-1),
    "naive_tp": dict(tp_end=TP_END, output_layer=-1, prefix_cache=False, naive=True),
    "ke_cache": dict(prompt_method="ke", tp_end=TP_END, output_layer=EXIT),
    "ke_nocache": dict(prompt_method="ke", tp_end=TP_END, output_layer=EXIT, prefix_cache=False),
    "metaeol_cache": dict(prompt_method="metaeol", tp_end=TP_END, output_layer=EXIT),
    "metaeol_nocache": dict(prompt_method="metaeol", tp_end=TP_END, output_layer=EXIT, prefix_cache=False),
}


def build_variant(base: str, name: str):
    """A callable that embeds a list of sentences the way variant `name` does."""
    import st_tp
    from st_tp.reference import naive_tp_forward

    settings = dict(VARIANTS[name])
    naive = settings.pop("naive", False)
    model = st_tp.build(base, dtype="float32", device="cpu", **settings)
    if not naive:
        return lambda texts: model.encode(texts, batch_size=32)
    module = model[0]

    def embed_naive(texts):  # the official way: all layers, every hidden state kept, no cache, in-place overwrite
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(texts), 32):
                features = module.preprocess([texts[i] for i in order[start : start + 32]])
                naive_tp_forward(module.runner.model, features["input_ids"], features["attention_mask"],
                                 features["pst_positions"][:, 0], tp_layers=list(range(1, TP_END)), output_layer=EXIT)

    return embed_naive


def workload(name: str, n: int) -> list[str]:
    # MetaEOL runs 8 prompts of ~100 tokens per sentence: fewer sentences keep the run short on 2 cores.
    return sentences(n // 8 if name.startswith("metaeol") else n // 2 if name.startswith("ke") else n)


def token_ratio(base: str, cache: bool) -> float:
    """Tokens the forward actually computes (each prompt's cached prefix excluded), TP over vanilla, on the workload."""
    import st_tp

    counts = []
    for tp in (True, False):
        encoder = st_tp.build(base, dtype="float32", device="cpu", tp=tp, tp_end=TP_END, output_layer=EXIT)[0].encoders[0]
        encoded = [encoder.encode(text) for text in sentences(192)]
        counts.append(sum(len(e.input_ids) - (e.shared_prefix if cache else 0) for e in encoded))
    return counts[0] / counts[1]


def peak_memory(base: str, name: str, n: int) -> float:
    """Peak RSS (MiB) of a fresh process that builds the variant and embeds its workload.

    VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork+exec, so a child would report its parent's peak."""
    code = (f"import sys; sys.argv=['x']; sys.path.insert(0, {str(ROOT)!r}); import benchmarks.bench_speed as b;"
            f"f=b.build_variant({base!r}, {name!r}); f(b.workload({name!r}, {n}));"
            "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return int(out.stdout.strip().splitlines()[-1]) / 1024


CACHE_METHODS = ("prompteol", "cot", "ke", "metaeol")
DTYPES = ("float32", "bfloat16")


def real_variants(total_layers: int, prompt_methods: bool, reference: str | None = None,
                  preset: str | None = None) -> dict[str, dict]:
    """ST native and st_tp at equal dtypes (float32, bfloat16), st_tp at its default dtype ('auto'), with
    `prompt_methods` every prompt method with prefix_cache auto / True / False (float32), with `reference` a plain
    SentenceTransformer folder (a trained encoder, float32), and with `preset` that preset (e.g. the model's dev-chosen
    smollm2-135m-prompteol-tp) at both dtypes. TP is the paper's setting scaled to the model
    (st_tp.runtime.config.paper_setting)."""
    paper = paper_setting(total_layers)
    variants = {"vanilla_last_float32": dict(tp=False, output_layer=-1, dtype="float32")}
    for dtype in DTYPES:
        variants[f"st_native_{dtype}"] = dict(native=True, dtype=dtype)
        variants[f"tp_{dtype}"] = dict(paper, dtype=dtype)
        if preset:
            variants[f"preset_{dtype}"] = dict(preset=preset, dtype=dtype)
    variants["tp_default"] = dict(paper)  # dtype "auto": what a user gets
    if reference:
        variants["reference"] = dict(reference=reference)
    if prompt_methods:
        for method in CACHE_METHODS:
            for label, cache in (("auto", "auto"), ("cache", True), ("nocache", False)):
                variants[f"{method}_{label}"] = dict(paper, prompt_method=method, prefix_cache=cache, dtype="float32")
    return variants


def st_native(base: str, dtype: str):
    """What a sentence-transformers user would run: Transformer + last-token pooling over the PromptEOL prompt.
    Returns (embed function, decoder)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    from st_tp.runtime.prompts import PROMPTS, PromptEncoder

    transformer = Transformer(  # text modality pinned: no chat template around the prompt
        base, modality_config={"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
        module_output_name="token_embeddings", model_kwargs={"dtype": getattr(torch, dtype)},
    )
    model = SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), "lasttoken")], device="cpu")
    encoder = PromptEncoder(transformer.tokenizer, PROMPTS["prompteol"][0], tp=False)
    return lambda texts: model.encode([encoder.fill(t) for t in texts], batch_size=32)


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """GFLOP/s of an n x n matmul in `dtype` on this process's threads (best of `reps`): the machine's roofline."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    best = min(_seconds(lambda: a @ b) for _ in range(reps))
    return 2 * n**3 / best / 1e9


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def native_flops(decoder, lengths: list[int]) -> int:
    """Useful FLOPs of ST native on prompts of these lengths: every layer on every real token (bench_gpu.model_flops'
    conventions: linear weights x 2 per token, 4 x attention width per causal (query, key) pair)."""
    from torch import nn

    layers = decoder.layers
    per_token = sum(m.weight.numel() for layer in layers for m in layer.modules() if isinstance(m, nn.Linear))
    cfg = decoder.config
    width = cfg.num_attention_heads * (getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    pairs = sum(n * (n + 1) // 2 for n in lengths)
    return 2 * sum(lengths) * per_token + 4 * width * pairs * len(layers)


def tp_flops(model, texts: list[str]) -> int:
    """Useful FLOPs of st_tp's encode on `texts` (batches of 32, longest first, as encode sorts them)."""
    from benchmarks.bench_gpu import batches, model_flops

    return sum(sum(model_flops(model[0], features).values()) for features in batches(model[0], texts, 32, "cpu"))


def real_main(args, base: str) -> None:
    import numpy as np
    from transformers import AutoConfig

    import st_tp
    from st_tp.runtime.config import resolve_dtype
    from st_tp.runtime.decoder import find_decoder

    total_layers = AutoConfig.from_pretrained(base).num_hidden_layers
    variants = real_variants(total_layers, args.prompt_methods, args.reference, args.preset)
    fns, flops = {}, {}
    texts = {name: workload(name, args.sentences) for name in variants}
    for name, settings in variants.items():
        settings = dict(settings)
        if "reference" in settings:
            from sentence_transformers import SentenceTransformer

            reference = SentenceTransformer(settings.pop("reference"), device="cpu")
            fns[name] = functools.partial(reference.encode, batch_size=32)
        elif settings.pop("native", False):
            fns[name] = st_native(base, settings["dtype"])
        else:
            model = st_tp.build(base, settings.pop("preset", None), device="cpu", **settings)
            fns[name] = functools.partial(model.encode, batch_size=32)
            flops[name] = tp_flops(model, texts[name])
            if name == "vanilla_last_float32":
                module = model[0]
                lengths = [len(module.prompt_encoders(False)[0].encode(t).input_ids) for t in texts["st_native_float32"]]
                flops["st_native_float32"] = flops["st_native_bfloat16"] = native_flops(find_decoder(module.runner.model), lengths)
    check = sentences(64)
    a, b = fns["st_native_float32"](check), fns["vanilla_last_float32"](check)
    agreement = float(np.min((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))
    for name, fn in fns.items():  # warm-up (and prefix caches)
        fn(workload(name, 16))
    peaks = {dtype: matmul_peak(getattr(torch, dtype)) for dtype in DTYPES}  # before the timings ...
    times = time_rounds({name: functools.partial(fn, texts[name]) for name, fn in fns.items()}, args.rounds)
    peaks = {dtype: max(peaks[dtype], matmul_peak(getattr(torch, dtype))) for dtype in DTYPES}  # ... and after
    med = {name: statistics.median(times[name]) / len(texts[name]) for name in fns}
    default_dtype = str(resolve_dtype("auto", "cpu")).removeprefix("torch.")
    paper = paper_setting(total_layers)
    tp_label = f"st_tp TP PromptEOL ({paper['tp_start']}..{paper['tp_end'] - 1}, exit {paper['output_layer']}, defaults)"
    ratios = {}

    def paired(label: str, numerator: str, denominator: str) -> None:  # same workload: per-round times compare directly
        ratios[label] = med[numerator] / med[denominator]
        median, low, high = paired_ratios(times, numerator, denominator)
        ratios[f"  the same, median of the {args.rounds} per-round ratios (min {low:.3f}, max {high:.3f})"] = median
        if denominator.startswith("st_native") and numerator in flops and texts[numerator] == texts[denominator]:
            # The time ratio at equal efficiency (GFLOP/s): what the work itself allows, whatever the kernels.
            ratios[f"  their useful FLOPs, {numerator} / {denominator} (the ratio at equal GFLOP/s)"] = \
                flops[numerator] / flops[denominator]

    paired("st_tp vanilla PromptEOL at -1 / ST native, float32 (goal <= 0.78)", "vanilla_last_float32", "st_native_float32")
    for dtype in DTYPES:
        paired(f"{tp_label} / ST native, both {dtype} (goal <= 0.70)", f"tp_{dtype}", f"st_native_{dtype}")
    if args.preset:
        for dtype in DTYPES:
            paired(f"preset {args.preset} / ST native, both {dtype} (goal <= 0.70)", f"preset_{dtype}", f"st_native_{dtype}")
    paired(f"st_tp TP at its default dtype ({default_dtype} here) / st_tp TP float32 (goal <= 0.55)", "tp_default", "tp_float32")
    paired(f"st_tp TP at its default dtype ({default_dtype}) / ST native float32 (what a plain ST user gets)", "tp_default", "st_native_float32")
    if args.reference:
        paired(f"st_tp TP at its default dtype / {Path(args.reference).name} (float32, raw sentences)", "tp_default", "reference")
    for method in CACHE_METHODS if args.prompt_methods else ():
        ratios[f"{method}: TP defaults (prefix_cache auto) / TP without cache (goal <= 1.00)"] = med[f"{method}_auto"] / med[f"{method}_nocache"]
        ratios[f"  {method}: TP cache forced on / off"] = med[f"{method}_cache"] / med[f"{method}_nocache"]
    gflops = {name: flops[name] / statistics.median(times[name]) / 1e9 for name in flops}
    dtype_of = {name: settings.get("dtype", "float32" if "reference" in settings else default_dtype) for name, settings in variants.items()}
    intro = (f"Model: {args.model} ({total_layers} layers). Machine: {MACHINE.removesuffix(', CPU float32')}; "
             f"{args.rounds} interleaved rounds, medians per sentence; {args.sentences} STS-B test sentences, batch 32. "
             f"ST native and st_tp vanilla at -1 agree: min cosine {agreement:.6f} over 64 sentences. Roofline measured "
             f"in the same run (2048x2048 matmul, best of 5, before and after the timings): "
             + ", ".join(f"{dtype} {peaks[dtype]:.1f} GFLOP/s" for dtype in DTYPES)
             + ". GFLOP/s count useful FLOPs only (bench_gpu.model_flops; ST native: every layer on every real token); "
             "CPU MFU = GFLOP/s / the roofline of the variant's dtype.")
    rows = {name: [dtype_of[name], f"{1000 * med[name]:.2f}",
                   f"{gflops[name]:.1f}" if name in gflops else "",
                   f"{100 * gflops[name] / peaks[dtype_of[name]]:.0f}%" if name in gflops else ""] for name in fns}
    title = f"bench_speed.py --model {args.model}{f' --preset {args.preset}' if args.preset else ''} (CPU, {cpu_kind()})"
    publish(title, intro, ["dtype", "median ms / sentence", "GFLOP/s", "CPU MFU"],
            rows, ratios, {"median_s_per_sentence": med, "ratios": ratios, "min_cosine_native_vs_vanilla": agreement,
                           "matmul_peak_gflops": peaks, "gflops": gflops, "seconds_per_round": times}, args.write)


def publish(title: str, intro: str, columns: list[str], rows: dict[str, list[str]], ratios: dict, data: dict, write: bool) -> None:
    """Print the variants' table and the ratios (and their JSON); with `write`, put them in RESULTS.md too."""
    lines = [intro, "", "| variant | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows.items()]
    report = "\n".join(lines + ratio_lines(ratios))
    print(report)
    print(json.dumps(data))
    if write:
        write_section(title, report)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sentences", type=int, default=192)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--model", default="random", help="random (a random 512x16 Llama) or packaged:<name>")
    parser.add_argument("--reference", help="real-model mode: also time a plain SentenceTransformer folder (e.g. all-mpnet-base-v2)")
    parser.add_argument("--preset", help="real-model mode: also time this preset (e.g. smollm2-135m-prompteol-tp) at both dtypes")
    parser.add_argument("--prompt-methods", action="store_true",
                        help="real-model mode: also every prompt method with prefix_cache auto/True/False (float32)")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    if args.model != "random":
        from st_tp.base_model import PACKAGED, resolve_base_model

        package = PACKAGED[args.model.removeprefix("packaged:")].package
        if importlib.util.find_spec(package) is not None:
            return real_main(args, resolve_base_model(args.model).path)
        print(f"{package} is not installed: falling back to the random model", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        base = make_base(Path(tmp) / SHAPE, SHAPE)
        fns = {name: build_variant(base, name) for name in VARIANTS}
        for name, fn in fns.items():  # warm-up (and prefix caches)
            fn(workload(name, 16))
        texts = {name: workload(name, args.sentences) for name in fns}
        seconds = time_interleaved({name: functools.partial(fn, texts[name]) for name, fn in fns.items()}, args.rounds)
        med = {name: seconds[name] / len(texts[name]) for name in fns}
        memory = {name: peak_memory(base, name, 64) for name in fns}
        tokens = {cache: token_ratio(base, cache) for cache in (True, False)}
    ratios = {
        "TP / vanilla PromptEOL, same exit (goal <= 1.05)": med["tp"] / med["vanilla"],
        "  same, both without prefix cache": med["tp_nocache"] / med["vanilla_nocache"],
        "  TP (cache on) / vanilla without cache (what PromptEOL costs without a cache)": med["tp"] / med["vanilla_nocache"],
        "  computed tokens TP / vanilla, cache on (TP computes <PST> and the '\"' after it, which vanilla caches)": tokens[True],
        "  computed tokens TP / vanilla (cache off)": tokens[False],
        "exit L/2 / exit -1 (goal <= 0.55)": med["tp_exit_half"] / med["tp_exit_last"],
        f"ours / naive official-style, TP exit {EXIT}/{LAYERS} (goal <= 0.85)": med["tp"] / med["naive_tp"],
        "KE throughput, cache on / off (goal >= 1.5)": med["ke_nocache"] / med["ke_cache"],
        "MetaEOL throughput, cache on / off (goal >= 2)": med["metaeol_nocache"] / med["metaeol_cache"],
    }
    rows = {name: [f"{1000 * med[name]:.2f}", f"{memory[name]:.0f}"] for name in fns}
    publish("bench_speed.py (CPU)", f"Machine: {MACHINE}; {args.rounds} interleaved rounds, medians per sentence.",
            ["median ms / sentence", "peak RSS MiB (fresh process, 64 sentences)"], rows, ratios,
            {"median_s_per_sentence": med, "ratios": ratios, "peak_rss_mib": memory}, args.write)


if __name__ == "__main__":
    main()
