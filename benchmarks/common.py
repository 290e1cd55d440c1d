"""What the benchmark scripts share: the random Llama they time, the STS-B sentences, interleaved timing, and the
sections they write into RESULTS.md."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Hashable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
STSB_TEST = ROOT.parent / "shared" / "data" / "raw" / "stsb.test.tsv"
# LlamaConfig keyword arguments; timing does not depend on the weights, so all of these are random-init.
SHAPES = {
    "llama-512x16": {"hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 16, "num_attention_heads": 8,
                     "num_key_value_heads": 8, "vocab_size": 32000, "max_position_embeddings": 2048},
    "llama2-7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
                  "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5},
    "tiny": {"hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 8, "num_attention_heads": 4,
             "num_key_value_heads": 4, "vocab_size": 32000, "max_position_embeddings": 1024},
}


def make_base(folder: Path, shape: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> str:
    """A random Llama of `shape` with the real Llama-2 tokenizer, initialised in `dtype` on `device`, saved."""
    from transformers import AutoModel, AutoTokenizer, LlamaConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    with torch.device(device):  # initialised where the memory is: 7B is 13.5 GB in fp16
        model = AutoModel.from_config(LlamaConfig(**SHAPES[shape]), dtype=dtype)
    model.save_pretrained(folder)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    AutoTokenizer.from_pretrained(ROOT / "assets" / "tiny-llama-install-check").save_pretrained(folder)
    return str(folder)


def cpu_name() -> str:
    """The CPU a figure ran on, as a reader needs it: model name, family/model, and the ISA that decides the bfloat16
    path (AVX512-BF16, AMX-BF16 tiles, AVX2 only) and torch's kernel level, e.g. 'AMD EPYC (family 26, model 2;
    AVX512-BF16, no AMX; torch AVX512), 2 cores'."""
    import os
    import platform

    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:  # not Linux
        return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    flags = set(fields.get("flags", "").split())
    isa = ["AMX-BF16" if {"amx_bf16", "amx_tile"} <= flags else "no AMX",
           "AVX512-BF16" if "avx512_bf16" in flags else "no AVX512-BF16",
           "AVX512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"]
    model = f"family {fields.get('cpu family', '?')}, model {fields.get('model', '?')}"
    return (f"{fields.get('model name', platform.machine())} ({model}; {', '.join(isa)}; torch "
            f"{torch.backends.cpu.get_cpu_capability()} kernels), {os.cpu_count()} cores")


def cpu_kind() -> str:
    """The CPU's bfloat16 class in one word, for section titles: AMX-BF16, AVX512-BF16 or no-BF16 (figures taken on
    different classes go to different sections instead of replacing each other)."""
    name = cpu_name()
    return next((kind for kind in ("AMX-BF16", "AVX512-BF16") if f"{kind}" in name.replace("no " + kind, "")), "no-BF16")


def sentences(n: int) -> list[str]:
    """The first `n` STS-B test sentences (both sides of each pair, in order)."""
    from st_tp.data import read_tsv

    return [s for r in read_tsv(STSB_TEST) for s in (r["sentence1"], r["sentence2"])][:n]


def time_rounds(runs: dict[Hashable, Callable[[], object]], rounds: int, sync: Callable[[], None] = lambda: None,
                rotate: bool = False) -> dict:
    """Wall seconds of every run in every round. Each round times every run once, in order, so drift hits all of
    them alike; `rotate` starts round r at run r (for long runs, where the place in a round matters too). `sync`
    waits for the device (e.g. torch.cuda.synchronize) before each clock reading."""
    times = {name: [] for name in runs}
    names = list(runs)
    for round_index in range(rounds):
        shift = round_index % len(names) if rotate else 0
        for name in names[shift:] + names[:shift]:
            run = runs[name]
            sync()
            start = time.perf_counter()
            run()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def time_interleaved(runs: dict[Hashable, Callable[[], object]], rounds: int, sync: Callable[[], None] = lambda: None) -> dict:
    """Median wall seconds per run, over interleaved rounds (see `time_rounds`)."""
    return {name: statistics.median(t) for name, t in time_rounds(runs, rounds, sync).items()}


def paired_ratios(times: dict, numerator: Hashable, denominator: Hashable) -> tuple[float, float, float]:
    """(median, min, max) over rounds of numerator / denominator within the same round: runs timed side by side."""
    ratios = [a / b for a, b in zip(times[numerator], times[denominator], strict=True)]
    return statistics.median(ratios), min(ratios), max(ratios)


def ratio_lines(ratios: dict[str, float]) -> list[str]:
    return ["", "| ratio | measured |", "|---|---|"] + [f"| {k} | {v:.3f} |" for k, v in ratios.items()]


def write_section(title: str, body: str, path: Path | None = None) -> None:
    """Replace (or append) the section `## {title}` of RESULTS.md, keeping every other section as it is."""
    path = path or ROOT / "benchmarks" / "RESULTS.md"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    head, *sections = text.split("\n## ")
    titled = [(sec.split("\n", 1)[0].strip(), sec) for sec in sections]
    new = f"{title}\n\n{body.strip()}\n"
    if any(t == title for t, _ in titled):
        titled = [(t, new if t == title else sec) for t, sec in titled]
    else:
        titled.append((title, new))
    path.write_text("\n## ".join([head.rstrip() + "\n", *(sec.rstrip() + "\n" for _, sec in titled)]))
