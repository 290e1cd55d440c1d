"""TP's gain against model size: one figure, benchmarks/figures/tp-gain-vs-size.png.

y = STS average (7 test sets) of TP at its best STS-B **dev** cell minus vanilla at its best STS-B **dev** layer, both
scored on the test sets. Measured points are read from the bench_quality.py tables in RESULTS.md (never typed in);
parameters are counted from each packaged model's converted weights. The paper's points are quoted from its
Tables 1 and 2 and drawn apart: their baseline is vanilla at the *last* layer, not at a dev-chosen layer.

    python benchmarks/plot_size_curve.py --write
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import ROOT, write_section  # noqa: E402

RESULTS = ROOT / "benchmarks" / "RESULTS.md"
FIGURE = ROOT / "benchmarks" / "figures" / "tp-gain-vs-size.png"
MODELS = {"smollm2-135m": "SmolLM2-135M", "gemma3-270m": "Gemma-3-270M", "qwen2.5-1.5b": "Qwen2.5-Coder-1.5B (code-tuned)"}
# Quoted, not measured: (label, parameters, prompt, TP avg - vanilla last-layer avg), from the paper's tables.
PAPER = [
    ("Llama-2-7B", 6.74e9, "prompteol", 77.19 - 70.03),  # Table 1: PromptEOL 70.03 -> + TP 77.19
    ("Llama-2-7B", 6.74e9, "cot", 77.54 - 76.86),  # Table 2: Pretended CoT 76.86 -> + TP 77.54
    ("Llama-2-13B", 13.0e9, "cot", 74.62 - 73.34),  # Table 2: Pretended CoT 73.34 -> + TP 74.62
]


def table_averages(text: str, model: str) -> tuple[dict[tuple[str, str], float], str]:
    """{(prompt, variant kind): STS avg} of `model`'s table in the bench_quality.py sections of RESULTS.md (kind
    'vanilla' or 'tp': the dev-best rows), and how it was run ("bfloat16, 250 pairs"), read from the section's
    command line (bench_quality.py's defaults where it names none)."""
    for section in text.split("\n## "):
        if not section.startswith("Quality on real weights"):
            continue
        found = {}
        for block in re.split(r"\n(?=\*\*)", section):
            if not block.startswith(f"**{model}**"):
                continue
            for line in block.splitlines():
                cells = [c.strip() for c in line.strip("|").split("|")]
                kind = "vanilla" if cells[1:2] and cells[1].startswith("vanilla, dev-best layer") else (
                    "tp" if cells[1:2] and cells[1].startswith("TP dev-best") else None)
                if kind:
                    found[cells[0], kind] = float(cells[-1].strip("*"))
        if found:
            dtype, sample = re.search(r"--dtype (\w+)", section), re.search(r"--sample (\d+)", section)
            return found, f"{dtype[1] if dtype else 'float32'}, {sample[1] if sample else 250} pairs"
    return {}, ""


def parameter_count(model: str) -> int:
    """Elements of every tensor in the packaged model's converted safetensors (tied embeddings counted once)."""
    from safetensors import safe_open

    from st_tp.base_model import resolve_base_model

    total = 0
    for file in Path(resolve_base_model(f"packaged:{model}").path).glob("*.safetensors"):
        with safe_open(file, "pt") as f:  # reads the header only
            total += sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="write the figure's table into RESULTS.md")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    text = RESULTS.read_text()
    rows = []
    for model, name in MODELS.items():
        averages, how = table_averages(text, model)
        if not averages:
            raise SystemExit(f"RESULTS.md has no bench_quality.py table for {model}: run bench_quality.py --models {model} first.")
        params = parameter_count(model)
        for prompt in ("prompteol", "cot"):
            if (prompt, "tp") in averages and (prompt, "vanilla") in averages:
                tp, vanilla = averages[prompt, "tp"], averages[prompt, "vanilla"]
                rows.append((name, params, prompt, tp, vanilla, tp - vanilla, how))

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    style = {"prompteol": ("tab:blue", "o"), "cot": ("tab:orange", "s")}
    for prompt, (color, marker) in style.items():
        mine = [r for r in rows if r[2] == prompt]
        ax.scatter([r[1] for r in mine], [r[5] for r in mine], marker=marker, color=color, s=50, label=f"measured, {prompt}")
        quoted = [p for p in PAPER if p[2] == prompt]
        ax.scatter([p[1] for p in quoted], [p[3] for p in quoted], marker=marker, facecolors="none", edgecolors=color,
                   s=80, label=f"paper (quoted; baseline = last layer), {prompt}")
    for name in MODELS.values():  # one label per model, above its higher point
        mine = [r for r in rows if r[0] == name]
        if mine:
            top = max(mine, key=lambda r: r[5])
            ax.annotate(f"{name.split(' ')[0]}\n{top[6]}", (top[1], top[5]), textcoords="offset points", xytext=(0, 8),
                        ha="center", fontsize=6)
    for name, params, prompt, gain in PAPER:
        ax.annotate(f"{name}, {prompt}", (params, gain), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel("TP dev-best - best vanilla layer\n(STS avg of 7 test sets, points)")
    ax.set_title("TP's gain against model size (measured on CPU; no line: different model families)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGURE, dpi=120)

    lines = ["| model | parameters | prompt | run | TP dev-best | vanilla dev-best layer | gain |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {n} | {p / 1e9:.3f} B | {m} | {h} | {t:.2f} | {v:.2f} | {g:+.2f} |" for n, p, m, t, v, g, h in rows]
    lines += [f"| {n} (paper, quoted; vanilla at the last layer) | {p / 1e9:.2f} B | {m} | the paper's runs, full test sets | | | {g:+.2f} |"
              for n, p, m, g in PAPER]
    report = "\n".join(lines)
    print(report)
    if args.write:
        write_section("TP's gain against model size (plot_size_curve.py)", (
            "`python benchmarks/plot_size_curve.py --write`: the measured rows are read from the bench_quality.py "
            "tables above (cells chosen on STS-B dev, scored on samples of the test sets, CPU; 'run' says the dtype and "
            "the pairs per test set); the paper's rows are quoted from its Tables 1 and 2. Figure: "
            f"`benchmarks/figures/{FIGURE.name}`.\n\n" + report))


if __name__ == "__main__":
    main()
