"""`st-tp`: build a TP model from a preset, encode a file, run MTEB, sweep tp_end x output_layer.

Every input is checked before any model loads (a missing file, a mistyped folder, a GPU that is not there), and
each mistake ends in one `st-tp: error: ...` line that names the fix. Heavy imports (torch, transformers, mteb)
happen inside the commands, so `st-tp --help` answers at once.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from st_tp.config import DTYPES

PRESET_DIRS = [Path.cwd() / "configs", Path(__file__).resolve().parents[1] / "configs"]


class CliError(ValueError):
    """A mistake on the command line; printed as one line."""


def _parse_overrides(pairs: list[str]) -> dict:
    """--set key=value (value parsed as YAML, so 7 -> int, true -> bool, null -> None)."""
    import yaml

    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise CliError(f"--set expects KEY=VALUE, got {pair!r} (e.g. --set tp_end=7).")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def _existing_file(path: str, option: str) -> Path:
    if not Path(path).is_file():
        raise CliError(f"{option} {path}: no such file.")
    return Path(path)


def find_preset(name_or_path: str) -> Path:
    """A preset file path, or a preset name from configs/ (e.g. llama2-7b-prompteol-tp)."""
    if Path(name_or_path).is_file():
        return Path(name_or_path)
    for folder in PRESET_DIRS:
        candidate = folder / f"{Path(name_or_path).name.removesuffix('.yaml')}.yaml"
        if candidate.is_file():
            return candidate
    available = sorted({p.stem for folder in PRESET_DIRS if folder.is_dir() for p in folder.glob("*.yaml")})
    raise CliError(f"--config {name_or_path}: no such preset file or name. Presets: {', '.join(available) or 'none found'}.")


def _check_device(device: str | None) -> None:
    if device is None:
        return
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CliError(f"--device {device}: no CUDA GPU is visible to torch {torch.__version__}. Use --device cpu, "
                       "or install the CUDA build of torch on a machine with a GPU.")
    if device.startswith("mps") and not torch.backends.mps.is_available():
        raise CliError(f"--device {device}: MPS is not available here. Use --device cpu.")


def _check_model(name: str) -> None:
    from st_tp.base_model import check_local_path

    check_local_path(name)


def _npy_path(output: str) -> Path:
    """Where np.save really writes (it appends .npy), checked writable before any work is done."""
    path = Path(output if output.endswith(".npy") else output + ".npy")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise CliError(f"--output {output}: the folder {folder} does not exist; create it first (mkdir -p {folder}).")
    if not os.access(folder, os.W_OK):
        raise CliError(f"--output {output}: the folder {folder} is not writable.")
    return path


# ---- commands ---------------------------------------------------------------------------------------------------
def cmd_build(args: argparse.Namespace) -> None:
    from st_tp.config import TPConfig, load_preset

    preset_base, tp_config = load_preset(find_preset(args.config)) if args.config else (None, TPConfig())
    base = args.base or preset_base
    if base is None:
        raise CliError("give a base model (st-tp build BASE ...) or a preset with a base_model key (--config NAME).")
    _check_model(base)
    _check_device(args.device)
    overrides = _parse_overrides(args.set)
    if args.dtype:
        overrides["dtype"] = args.dtype
    if args.device:
        overrides["device"] = args.device
    from st_tp.builder import build

    model = build(base, tp_config, gguf_file=args.gguf_file, **overrides)
    model.save(args.out)
    c = model[0].tp_config
    layers = f"layer {c.tp_start}" if c.tp_end - c.tp_start == 1 else f"layers {c.tp_start}..{c.tp_end - 1}"
    setting = f"TP before {layers}" if c.tp else "no TP"
    print(f"Saved a Token Prepending model ({base}; {c.prompt_method}, {setting}, output_layer {c.output_layer}) to {args.out}")


def cmd_encode(args: argparse.Namespace) -> None:
    lines = _existing_file(args.input, "--input").read_text(encoding="utf-8").splitlines()
    output = _npy_path(args.output)
    _check_model(args.model)
    _check_device(args.device)
    sentences = [line for line in lines if line.strip()] if args.skip_empty else lines
    if not sentences:
        raise CliError(f"--input {args.input}: no sentences to embed.")
    import numpy as np
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(args.model, trust_remote_code=True, device=args.device)
    embeddings = model.encode(sentences, batch_size=args.batch_size, show_progress_bar=True,
                              normalize_embeddings=args.normalize)
    np.save(output, embeddings)
    skipped = f" ({len(lines) - len(sentences)} empty lines skipped)" if args.skip_empty else ""
    print(f"Read {len(lines)} lines from {args.input}{skipped}; wrote {embeddings.shape[0]} embeddings of dimension "
          f"{embeddings.shape[1]} to {output}")
    if args.similarity:
        print(similarity_table(sentences, model.similarity(embeddings, embeddings).numpy()))


def similarity_table(sentences: list[str], scores) -> str:
    """Cosine similarity of every pair, most similar first: a quick look at whether the embeddings mean something."""
    pairs = sorted(((scores[i, j], i, j) for i in range(len(sentences)) for j in range(i + 1, len(sentences))), reverse=True)
    width = min(48, max(len(s) for s in sentences))
    rows = [f"{'cosine':>7}  {'sentence':<{width}}  sentence"]
    for score, i, j in pairs:
        rows.append(f"{score:7.3f}  {sentences[i][:width]:<{width}}  {sentences[j][:width]}")
    return "\n".join(rows)


def _parse_range(text: str) -> list[int]:
    """'2..12', '2,4,8' or '7'."""
    try:
        if ".." in text:
            low, high = text.split("..")
            return list(range(int(low), int(high) + 1))
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise CliError(f"--tp-end {text!r}: expected a range a..b, a list a,b,c or one number.") from None


def cmd_sweep(args: argparse.Namespace) -> None:
    _existing_file(args.dev, "--dev")
    _check_model(args.base)
    _check_device(args.device)
    tp_ends = _parse_range(args.tp_end)
    import numpy as np

    from st_tp.sweep import VANILLA, sweep, write_outputs

    result = sweep(args.base, args.dev, prompt_method=args.prompt_method, tp_start=args.tp_start, tp_ends=tp_ends,
                   metric=args.metric, batch_size=args.batch_size, limit=args.limit, sample=args.sample,
                   dtype=args.dtype, device=args.device, gguf_file=args.gguf_file)
    write_outputs(result, args.out, args.base, args.prompt_method, args.dev)
    best_e, best_k, best_v = result.best()
    print(f"best: tp_end={best_e} output_layer={best_k} {result.metric}={best_v:.4f} "
          f"(vanilla best {np.nanmax(result.scores[VANILLA]):.4f}); wrote {args.out}/grid.csv, heatmap.png, curves.png, best.yaml")


def cmd_mteb(args: argparse.Namespace) -> None:
    from st_tp.evaluation.cli import run

    run(args)


# ---- parser -----------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from st_tp.prompts import PROMPTS

    methods = sorted(PROMPTS)
    parser = argparse.ArgumentParser(prog="st-tp", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build", help="build a TP SentenceTransformer from a base model and save it")
    p.add_argument("base", nargs="?", help="hub id, local folder, or packaged:<name> of the base LLM (default: the preset's base_model)")
    p.add_argument("--config", help="a preset: a YAML file or a name from configs/ (e.g. smollm2-135m-prompteol-tp)")
    p.add_argument("--out", required=True, help="folder to save the model to")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a TPConfig key (repeatable)")
    p.add_argument("--dtype", choices=DTYPES, help="weights dtype (auto: float16 on CUDA, float32 elsewhere)")
    p.add_argument("--device", help="torch device: cpu, cuda, cuda:1, mps (default: the best available)")
    p.add_argument("--gguf-file", help="a GGUF file inside the BASE folder to read tokenizer, config and weights from")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("encode", help="embed a text file (one sentence per line) into a .npy matrix")
    p.add_argument("model", help="a folder saved by `st-tp build` (or any SentenceTransformer model)")
    p.add_argument("--input", required=True, help="text file, one sentence per line; row i of the output is line i")
    p.add_argument("--output", required=True, help="the .npy file to write (.npy is appended if missing)")
    p.add_argument("--batch-size", type=int, default=16, help="sentences per forward pass (default 16)")
    p.add_argument("--device", help="torch device: cpu, cuda, cuda:1, mps (default: the best available)")
    p.add_argument("--normalize", action="store_true", help="L2-normalise the embeddings")
    p.add_argument("--skip-empty", action="store_true", help="skip blank lines (then rows no longer match line numbers)")
    p.add_argument("--similarity", action="store_true", help="also print the cosine similarity of every pair of lines")
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("sweep", help="dev score for every tp_end x output_layer (+ vanilla); plots and best.yaml")
    p.add_argument("base", help="hub id, local folder, or packaged:<name> of the base LLM")
    p.add_argument("--dev", required=True, help="STS-like dev TSV: score, sentence1, sentence2 (never a test set)")
    p.add_argument("--prompt-method", default="prompteol", choices=methods, help="embedding prompt (default prompteol)")
    p.add_argument("--tp-start", type=int, default=1, help="first decoder layer that gets the <PST> overwrite (default 1)")
    p.add_argument("--tp-end", default="2..12", help="tp_end values: a range a..b or a list a,b,c (default 2..12)")
    p.add_argument("--metric", default="spearman", choices=["spearman", "pearson"], help="dev score (default spearman)")
    p.add_argument("--out", required=True, help="folder for grid.csv, heatmap.png, curves.png and best.yaml")
    p.add_argument("--batch-size", type=int, default=16, help="pairs per batch (default 16)")
    p.add_argument("--limit", type=int, help="first N dev pairs")
    p.add_argument("--sample", type=int, help="N dev pairs drawn at random (seed 0), for a quicker sweep on all genres")
    p.add_argument("--dtype", default="auto", choices=DTYPES, help="weights dtype (default auto)")
    p.add_argument("--device", help="torch device: cpu, cuda, cuda:1, mps (default: the best available)")
    p.add_argument("--gguf-file", help="a GGUF file inside the BASE folder to read the model from")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("mteb", help="evaluate models on MTEB task sets (the paper's appendix) or local TSV data")
    p.add_argument("models", nargs="*", help="saved st_tp folders or any SentenceTransformer model")
    p.add_argument("--tasks", default="appendix", help="classification, pair-classification, reranking, clustering, "
                   "summarization, sts, appendix, or comma-separated task names")
    p.add_argument("--output-folder", default="mteb-results", help="results cache and summary.md go here (default mteb-results)")
    p.add_argument("--local-data", help="folder of TSV files (see ../shared/data/SOURCES.md) instead of the hub")
    p.add_argument("--limit", type=int, help="with --local-data: first N test rows per task")
    p.add_argument("--batch-size", type=int, default=32, help="sentences per forward pass (default 32)")
    p.add_argument("--device", help="torch device: cpu, cuda, cuda:1, mps (default: the best available)")
    p.add_argument("--list", action="store_true", help="print the resolved task list and exit (no download)")
    p.set_defaults(func=cmd_mteb)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as error:  # configuration mistakes: one clear line, no traceback
        print(f"st-tp: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
