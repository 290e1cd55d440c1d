"""Peak memory (RSS) of a GGUF model's life in st_tp, against the weights it holds: conversion, build, encode.

Each step runs in a fresh process (its own peak RSS, read from getrusage at exit), in a fresh st_tp cache:
* convert: the GGUF (packaged:<name>) into the cache, in the conversion dtype (st_tp.gguf.conversion_dtype);
* build-cold: `st-tp build --dtype D` from an empty cache (conversion included), the figure the bound is about;
* build: the same from the warm cache;
* encode: load the saved folder and embed 256 STS-B sentences.
The bound (issue 36): peak RSS <= 1.3 x the weights in the dtype the model runs in + 1 GiB. Weights are the
conversion's safetensors bytes; the cache size on disk is printed too.

    python benchmarks/bench_memory.py --models smollm2-135m gemma3-270m qwen2.5-1.5b --dtypes bfloat16 [--write]

`--gguf-file F` measures any GGUF file instead (e.g. the 7B-shaped one benchmarks/make_synthetic_gguf.py writes):
convert, then build and encode 8 sentences in one process from the warm cache, without saving a copy.

`--accuracy N` measures what the 16-bit cache costs instead: the model's PromptEOL+TP preset built to run in float32
from the bfloat16 conversion (what dtype 'auto' does on a CPU without native bfloat16) and from a float32 conversion,
on the first N STS-B test pairs: the smallest cosine between the two embeddings of a sentence, and both Spearman
scores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks.common, when run as a script
GIB = 2**30
TP_SETTINGS = ["--set", "prompt_method=prompteol", "--set", "tp_end=2", "--set", "output_layer=-1"]  # every layer


def step(name: str, model: str, dtype: str, work: Path) -> None:
    """One measured step, in this process (run as a child of `measure`). `model` is a packaged name or a GGUF path."""
    from st_tp.cli import main

    out = work / "model"
    if model.endswith(".gguf"):
        import st_tp
        from st_tp.base_model import resolve_base_model

        gguf = Path(model)
        if name == "convert":
            resolve_base_model(str(gguf.parent), gguf.name, dtype=dtype, device="cpu")
        else:  # build-encode: the model held once, in the dtype it runs in
            st = st_tp.build(str(gguf.parent), gguf_file=gguf.name, prompt_method="prompteol", tp_end=2, output_layer=-1,
                             dtype=dtype, device="cpu")
            st.encode(["A man is playing a guitar.", "A woman slices an onion."] * 4, batch_size=8)
    elif name == "convert":
        from st_tp.base_model import resolve_base_model

        resolve_base_model(f"packaged:{model}", dtype=dtype, device="cpu")
    elif name in ("build", "build-cold"):
        main(["build", f"packaged:{model}", *TP_SETTINGS, "--dtype", dtype, "--device", "cpu", "--out", str(out)])
    elif name == "encode":
        from sentence_transformers import SentenceTransformer

        from benchmarks.common import sentences

        SentenceTransformer(str(out), device="cpu", trust_remote_code=True).encode(sentences(256), batch_size=16)
    print(json.dumps({"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def measure(name: str, model: str, dtype: str, work: Path, cache: Path) -> int:
    env = {**os.environ, "ST_TP_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, __file__, "--step", name, "--models", model, "--dtypes", dtype, "--work", str(work)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"{name} {model} {dtype} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_rss"]


def accuracy(model: str, pairs: int) -> str:
    import numpy as np
    from scipy.stats import spearmanr

    import st_tp
    from benchmarks.common import STSB_TEST
    from st_tp.base_model import resolve_base_model
    from st_tp.data import read_pairs

    first, second, gold = read_pairs(STSB_TEST)
    first, second, gold = first[:pairs], second[:pairs], np.asarray(gold[:pairs])
    preset = ROOT / "configs" / f"{model}-prompteol-tp.yaml"
    embeddings, scores = {}, {}
    for stored in ("bfloat16", "float32"):
        folder = resolve_base_model(f"packaged:{model}", dtype=stored, device="cpu").path
        st = st_tp.build(folder, preset if preset.exists() else None, dtype="float32", device="cpu")
        a, b = (st.encode(side, batch_size=16, normalize_embeddings=True) for side in (first, second))
        embeddings[stored] = np.concatenate([a, b])
        scores[stored] = 100 * spearmanr((a * b).sum(axis=1), gold).statistic
    cosine = (embeddings["bfloat16"] * embeddings["float32"]).sum(axis=1)
    return (f"| {model} | {pairs} | {cosine.min():.6f} | {scores['bfloat16']:.2f} | {scores['float32']:.2f} | "
            f"{scores['bfloat16'] - scores['float32']:+.2f} |")


def gguf_file_run(path: Path, dtype: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        peaks = {"convert": measure("convert", str(path), dtype, tmp / "w", tmp / "cache")}
        conversion = next((tmp / "cache" / "gguf").glob("*/"))
        weights = folder_bytes(conversion, "*.safetensors")
        peaks["build and encode"] = measure("build-encode", str(path), dtype, tmp / "w", tmp / "cache")
    bound = 1.3 * weights + GIB
    print(f"{path.name} ({path.stat().st_size / GIB:.2f} GiB) in {dtype}: weights {weights / GIB:.2f} GiB; "
          + ", ".join(f"{k} {v / GIB:.2f} GiB ({v / weights:.2f}x)" for k, v in peaks.items())
          + f"; bound {bound / GIB:.2f} GiB: {'met' if max(peaks.values()) <= bound else 'NOT met'}")


def folder_bytes(folder: Path, pattern: str = "*") -> int:
    return sum(f.stat().st_size for f in folder.rglob(pattern) if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16"])
    parser.add_argument("--gguf-file", type=Path, help="measure this GGUF file's conversion and build+encode")
    parser.add_argument("--accuracy", type=int, metavar="N", help="measure the 16-bit cache's cost on N STS-B pairs")
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--write", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = parser.parse_args()
    if args.step:
        return step(args.step, args.models[0], args.dtypes[0], Path(args.work))
    if args.gguf_file:
        return gguf_file_run(args.gguf_file.resolve(), args.dtypes[0])
    if args.accuracy:
        lines = ["PromptEOL+TP preset run in float32, from the bfloat16 and from the float32 conversion; STS-B test.", "",
                 "| model | pairs | min cosine | Spearman, bf16 cache | Spearman, f32 cache | difference |",
                 "|---|---|---|---|---|---|", *(accuracy(model, args.accuracy) for model in args.models)]
        print("\n".join(lines))
        if args.write:
            from benchmarks.common import write_section

            write_section("Memory: what the 16-bit GGUF cache costs in accuracy (bench_memory.py --accuracy)", "\n".join(lines))
        return None

    from benchmarks.common import cpu_name

    cpu = cpu_name()
    rows = []
    for model in args.models:
        for dtype in args.dtypes:
            with tempfile.TemporaryDirectory() as tmp:
                tmp = Path(tmp)
                peaks = {"convert": measure("convert", model, dtype, tmp / "w0", tmp / "cache-convert")}
                conversion = next((tmp / "cache-convert" / "gguf").glob("*/"))
                weights = folder_bytes(conversion, "*.safetensors")
                cache_bytes = folder_bytes(tmp / "cache-convert")
                peaks["build-cold"] = measure("build-cold", model, dtype, tmp / "w1", tmp / "cache-cold")
                peaks["build"] = measure("build", model, dtype, tmp / "w1", tmp / "cache-cold")
                peaks["encode"] = measure("encode", model, dtype, tmp / "w1", tmp / "cache-cold")
                bound = 1.3 * weights + GIB
                rows.append((model, dtype, weights, cache_bytes, peaks, bound))
                print(f"{model} {dtype}: weights {weights / GIB:.2f} GiB, cache {cache_bytes / GIB:.2f} GiB, "
                      + ", ".join(f"{k} {v / GIB:.2f} GiB ({v / weights:.2f}x)" for k, v in peaks.items())
                      + f"; bound {bound / GIB:.2f} GiB: {'met' if peaks['build-cold'] <= bound else 'NOT met'}",
                      flush=True)
    lines = [f"CPU: {cpu}; {time.strftime('%Y-%m-%d')}. Peak RSS of a fresh process per step; "
             "x = / weights.", "",
             "| model | dtype | weights | cache on disk | convert | build from a cold cache | build | encode 256 | "
             "bound 1.3 x weights + 1 GiB |", "|---|---|---|---|---|---|---|---|---|"]
    for model, dtype, weights, cache_bytes, peaks, bound in rows:
        cells = [f"{peaks[k] / GIB:.2f} GiB ({peaks[k] / weights:.2f}x)" for k in ("convert", "build-cold", "build", "encode")]
        verdict = "met" if peaks["build-cold"] <= bound else "**not met**"
        lines.append(f"| {model} | {dtype} | {weights / GIB:.2f} GiB | {cache_bytes / GIB:.2f} GiB | {' | '.join(cells)} | "
                     f"{bound / GIB:.2f} GiB, {verdict} |")
    print("\n".join(lines))
    if args.write:
        from benchmarks.common import write_section

        write_section("Memory: GGUF conversion, build and encode (bench_memory.py)", "\n".join(lines))


if __name__ == "__main__":
    main()
