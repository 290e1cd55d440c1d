"""Speed and memory of st_tp vs the alternatives, on CPU, with the variants interleaved in one run.

Model: a random-init Llama of realistic proportions (hidden 512, 16 layers, 8 heads, SwiGLU 1408, vocab 32000);
timing does not depend on the weights. Data: STS-B test sentences (../shared/data/raw/stsb.test.tsv).
Paper setting scaled to 16 layers: TP before layers 1..3 (7/32 -> 4/16), exit at hidden_states[14] (27/32 -> 14/16).

    python benchmarks/bench_speed.py                 # prints medians and ratios, writes nothing
    python benchmarks/bench_speed.py --write         # also updates benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import make_base, ratio_lines, sentences, time_interleaved, write_section  # noqa: E402

SHAPE = "llama-512x16"
LAYERS, EXIT, TP_END = 16, 14, 4


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
                naive_tp_forward(module.auto_model, features["input_ids"], features["attention_mask"],
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sentences", type=int, default=192)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
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
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, CPU float32"
    lines = [f"Machine: {machine}; {args.rounds} interleaved rounds, medians per sentence.", "",
             "| variant | median ms / sentence | peak RSS MiB (fresh process, 64 sentences) |", "|---|---|---|"]
    lines += [f"| {name} | {1000 * med[name]:.2f} | {memory[name]:.0f} |" for name in fns]
    lines += ratio_lines(ratios)
    report = "\n".join(lines)
    print(report)
    print(json.dumps({"median_s_per_sentence": med, "ratios": ratios, "peak_rss_mib": memory}))
    if args.write:
        write_section("bench_speed.py (CPU)", report)


if __name__ == "__main__":
    main()
