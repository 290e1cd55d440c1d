"""`st-tp`: build a TP model from a preset, encode a file, run MTEB, sweep tp_end x output_layer."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import yaml


def _parse_overrides(pairs: list[str]) -> dict:
    """--set key=value (value parsed as YAML, so 7 -> int, true -> bool, null -> None)."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def cmd_build(args: argparse.Namespace) -> None:
    from st_tp.build import build
    from st_tp.config import TPConfig, load_preset

    preset_base, tp_config = load_preset(args.config) if args.config else (None, TPConfig())
    base = args.base or preset_base
    if base is None:
        raise SystemExit("Give a base model (st-tp build BASE ...) or a preset with a base_model key.")
    overrides = _parse_overrides(args.set)
    if args.dtype:
        overrides["dtype"] = args.dtype
    if args.device:
        overrides["device"] = args.device
    model = build(base, tp_config, **overrides)
    model.save(args.out)
    print(f"Saved Token Prepending model ({base}) to {args.out}")


def cmd_encode(args: argparse.Namespace) -> None:
    from sentence_transformers import SentenceTransformer

    lines = Path(args.input).read_text(encoding="utf-8").splitlines()
    sentences = [line for line in lines if line.strip() or args.keep_empty]
    model = SentenceTransformer(args.model, trust_remote_code=True, device=args.device)
    embeddings = model.encode(
        sentences, batch_size=args.batch_size, show_progress_bar=True, normalize_embeddings=args.normalize
    )
    np.save(args.output, embeddings)
    print(f"Wrote {embeddings.shape[0]} embeddings of dimension {embeddings.shape[1]} to {args.output}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="st-tp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build", help="build a TP SentenceTransformer from a base model and save it")
    p.add_argument("base", nargs="?", help="hub id or folder of the base LLM (default: the preset's base_model)")
    p.add_argument("--config", help="YAML preset (configs/*.yaml)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a TPConfig key")
    p.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"])
    p.add_argument("--device")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("encode", help="embed a text file (one sentence per line) into a .npy matrix")
    p.add_argument("model", help="a folder saved by `st-tp build`")
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device")
    p.add_argument("--normalize", action="store_true", help="L2-normalise the embeddings")
    p.add_argument("--keep-empty", action="store_true", help="embed empty lines too (default: skip them)")
    p.set_defaults(func=cmd_encode)

    for register in _extra_commands():
        register(sub)

    args = parser.parse_args(argv)
    try:
        args.func(args)
    except ValueError as error:  # configuration mistakes: one clear line, no traceback
        print(f"st-tp: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def _extra_commands():
    """Subcommands that live beside their code (evaluation, sweep)."""
    from st_tp.evaluation.cli import register as register_mteb
    from st_tp.sweep import register as register_sweep

    return [register_mteb, register_sweep]


if __name__ == "__main__":
    main()
