"""`st-tp`: build a TP model from a preset, encode a file, run MTEB, sweep tp_end x output_layer, manage the cache.

Every input is checked before any model loads (a missing file, a mistyped folder, a GPU that is not there), and
each mistake ends in one `st-tp: error: ...` line that names the fix. Heavy imports (torch, transformers, mteb)
happen inside the commands, so `st-tp --help` answers at once.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from st_tp.runtime.config import DTYPES


class CliError(ValueError):
    """A mistake on the command line; printed as one line."""


# The library names its settings (st_tp.corpus: `text_column`, `input ...`); only the CLI speaks in flags. This one
# table maps each setting to its flag when a library error is printed (flag_message).
SETTING_FLAGS = {
    "input": "--input", "output": "--output", "text_column": "--text-column", "id_column": "--id-column",
    "keep_columns": "--keep-columns", "batch_size": "--batch-size", "shard_size": "--shard-size",
    "device": "--device", "normalize": "--normalize", "output_dtype": "--output-dtype", "on_bad_row": "--on-bad-row",
    "keep_duplicate_ids": "--keep-duplicate-ids", "engine": "--engine", "actors": "--actors",
    "cpus_per_actor": "--cpus-per-actor", "gpus_per_actor": "--gpus-per-actor", "address": "--address",
    "verbose": "--verbose", "sample": "--sample", "limit": "--limit", "layers": "--layers", "data": "--data",
}
_ONE_WORD = sorted((name for name in SETTING_FLAGS if "_" not in name), key=len, reverse=True)
_SETTING = "|".join(sorted(SETTING_FLAGS, key=len, reverse=True))


def flag_message(message: str) -> str:
    """A library message in the CLI's words: `name=value` -> `--flag value` (a True switch: `--flag`), an
    underscored setting name -> its flag, and a message that starts with a one-word setting (`input X: ...`) ->
    `--input X: ...`. A setting named as a manifest key (`setting shard_size: was ...`) stays as written there."""
    import re

    def assignment(match: re.Match) -> str:
        flag, value = SETTING_FLAGS[match.group(1)], match.group(2).strip("'\"")
        return flag if value == "True" else f"{flag} {value}"

    message = re.sub(rf"\b({_SETTING})=('[^']*'|\"[^\"]*\"|[^\s,;)]+)", assignment, message)
    message = re.sub(rf"(?<!setting )(?<![-\w])({'|'.join(n for n in SETTING_FLAGS if '_' in n)})\b",
                     lambda m: SETTING_FLAGS[m.group(1)], message)
    return re.sub(rf"^({'|'.join(_ONE_WORD)}) ", lambda m: SETTING_FLAGS[m.group(1)] + " ", message)


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
    """A preset file path, or a preset name (e.g. llama2-7b-prompteol-tp): st_tp.presets.find_preset, as a CLI error."""
    from st_tp.presets import find_preset as find

    try:
        return find(name_or_path)
    except ValueError as error:
        raise CliError(f"--config {error}") from None


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
    """A folder, a packaged name, a cached hub id or one the hub has: else one line now, not a minute of retries."""
    from st_tp.base_model import check_model_reachable

    check_model_reachable(name)


# ---- commands ---------------------------------------------------------------------------------------------------
def cmd_build(args: argparse.Namespace) -> None:
    from st_tp.runtime.config import TPConfig, load_preset

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
    print(f"Saved a Token Prepending model ({base}; {c.prompt_method}, {setting}, output_layer {c.output_layer}; "
          f"{dtype_note(c.dtype, model[0].model_dtype)}) to {args.out}")


def dtype_note(setting: str, runs_in) -> str:
    """'runs in bfloat16 (dtype auto: this CPU runs bfloat16 natively)': what a model computes in, and why."""
    from st_tp.runtime.config import cpu_runs_bfloat16

    name = str(runs_in).removeprefix("torch.")
    if setting != "auto":
        return f"runs in {name}"
    why = {"float16": "CUDA", "bfloat16": "this CPU runs bfloat16 natively" if cpu_runs_bfloat16() else "the device"}
    return f"runs in {name} (dtype auto: {why.get(name, 'no native bfloat16 here')})"


def _folder_dtype_note(model: str, device: str | None) -> str:
    """dtype_note for a saved st_tp folder, from its config (without loading it); '' for another kind of model."""
    from st_tp.runtime.config import saved_dtype

    found = saved_dtype(model, device)
    return f"; {dtype_note(*found)}" if found else ""


def _corpus_options(args: argparse.Namespace):
    from st_tp.corpus import CorpusOptions

    keep = tuple(c.strip() for c in args.keep_columns.split(",") if c.strip())
    return CorpusOptions(text_column=args.text_column, id_column=args.id_column, keep_columns=keep,
                         batch_size=args.batch_size, shard_size=args.shard_size, device=args.device,
                         normalize=args.normalize, output_dtype=args.output_dtype,
                         on_bad_row="skip" if args.skip_empty else args.on_bad_row,
                         keep_duplicate_ids=args.keep_duplicate_ids, engine=args.engine, actors=args.actors,
                         cpus_per_actor=args.cpus_per_actor, gpus_per_actor=args.gpus_per_actor, address=args.address,
                         verbose=args.verbose)


def cmd_encode(args: argparse.Namespace) -> None:
    """A folder --output (DIR/) gets the streamed, resumable Parquet dataset; anything else one .npy, in memory:
    both written by st_tp.corpus.embed_corpus; this only checks the command line and prints."""
    from st_tp.corpus import embed_corpus

    options = _corpus_options(args)
    folder = args.output.endswith(("/", os.sep)) or Path(args.output).is_dir()
    if folder:
        if args.similarity:
            raise CliError("--similarity prints every pair of a few lines; it needs an .npy --output, not a folder.")
        if not Path(args.model).is_dir():
            _check_model(args.model)
            raise CliError(f"{args.model}: a dataset --output needs a saved model folder (st-tp build ... --out DIR), "
                           "which every worker loads by path and a resume checks is unchanged.")
    elif args.engine == "ray":
        raise CliError(f"--engine ray writes a Parquet dataset: give --output a folder ending in / "
                       f"(e.g. --output {args.output.removesuffix('.npy')}/).")
    else:
        _check_model(args.model)
    _check_device(args.device)
    if args.engine == "ray":
        from st_tp.corpus.ray_engine import import_ray

        import_ray()
    output = args.output if folder or args.output.endswith(".npy") else args.output + ".npy"  # as np.save names it
    summary = embed_corpus(args.input, output, args.model, options)
    if folder:
        print(summary.line(args.input) + _folder_dtype_note(args.model, args.device))
        return
    skipped = summary.bad_skipped
    skipped_note = (f" ({skipped} {'empty lines' if summary.kind == 'lines' else 'bad rows'} skipped)"
                    if skipped or args.skip_empty else "")
    print(f"Read {summary.rows_read} {summary.kind} from {args.input}{skipped_note}; wrote {summary.rows_written} "
          f"embeddings of dimension {summary.dim} to {summary.output}{_folder_dtype_note(args.model, summary.device)}")
    if args.similarity:
        embeddings = summary.embeddings
        print(similarity_table(summary.texts, summary.model.similarity(embeddings, embeddings).numpy()))


def similarity_table(sentences: list[str], scores) -> str:
    """Cosine similarity of every pair, most similar first: a quick look at whether the embeddings mean something."""
    pairs = sorted(((scores[i, j], i, j) for i in range(len(sentences)) for j in range(i + 1, len(sentences))), reverse=True)
    width = min(48, max(len(s) for s in sentences))
    rows = [f"{'cosine':>7}  {'sentence':<{width}}  sentence"]
    for score, i, j in pairs:
        rows.append(f"{score:7.3f}  {sentences[i][:width]:<{width}}  {sentences[j][:width]}")
    return "\n".join(rows)


def parse_tp_ends(text: str, flag: str = "--tp-end") -> list[int]:
    """'2..12', '2,4,8' or '7'."""
    try:
        if ".." in text:
            low, high = text.split("..")
            return list(range(int(low), int(high) + 1))
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise CliError(f"{flag} {text!r}: expected a range a..b, a list a,b,c or one number.") from None


def cmd_sweep(args: argparse.Namespace) -> None:
    if (args.data is None) != (args.dev is not None) or (args.dev is None and args.metric):  # --dev FILE, or --transfer TASK --data DIR
        raise CliError("--transfer TASK needs --data DIR (SentEval's data/downstream folder) and scores dev accuracy (no --metric); --dev FILE takes no --data.")
    _check_model(args.base)
    _check_device(args.device)
    from st_tp.sweep import sweep, sweep_transfer, write_outputs

    common = dict(prompt_method=args.prompt_method, tp_start=args.tp_start, tp_ends=parse_tp_ends(args.tp_end), limit=args.limit,
                  sample=args.sample, batch_size=args.batch_size, dtype=args.dtype, device=args.device, gguf_file=args.gguf_file,
                  layers=parse_tp_ends(args.layers, "--layers") if args.layers else None)  # the exits kept (default: all)
    result = sweep(args.base, _existing_file(args.dev, "--dev"), metric=args.metric or "spearman", **common) if args.dev is not None else (
        sweep_transfer(args.base, args.transfer, args.data, **common))
    write_outputs(result, args.out, args.base, args.prompt_method, result.scored_on)
    print(result.report(args.out))  # the best cell; and that a model built with best.yaml scores it, when it does
    if result.rebuilt_differs():
        print(f"st-tp: warning: {result.rebuild_warning()} to compare near cells, build them (st-tp build --config "
              f"{args.out}/best.yaml --set tp_end=N --set output_layer=K) and score them on the dev set.", file=sys.stderr)


def cmd_senteval(args: argparse.Namespace) -> None:
    _check_device(args.device)  # run_senteval checks the models and the data before it loads anything
    from st_tp.evaluation.senteval import run_senteval

    run = run_senteval(args.models, args.tasks, args.data, args.output_folder, sample=args.sample,
                       classifier=args.classifier, batch_size=args.batch_size, device=args.device)
    print(run.report())
    if run.failures:  # data errors name the file and line; the other tasks ran: exit status 1
        raise SystemExit("\n".join(f"st-tp: error: {message}" for message in run.failures.values()))


def cmd_mteb(args: argparse.Namespace) -> None:
    if not args.list:
        for model in args.models:
            _check_model(model)  # before importing mteb, which alone takes seconds
    from st_tp.evaluation.cli import run

    run(args)


def cmd_cache(args: argparse.Namespace) -> None:
    """What the GGUF conversions (one 16-bit copy per GGUF: 260 MiB for SmolLM2) and assembled GGUF files take on
    disk, and a way to free it."""
    from st_tp.gguf import cache_entries, cache_root, clear_cache

    root = cache_root()
    if args.action == "clear":
        removed = clear_cache()
        print(f"Removed {len(removed)} entries, {_size(sum(e.size for e in removed))}, from {root}; "
              "a later build converts its GGUF again.")
        return
    entries = cache_entries()
    if not entries:
        print(f"The st_tp cache {root} is empty ($ST_TP_CACHE moves it).")
        return
    print(f"st_tp cache {root} ($ST_TP_CACHE moves it):")
    for entry in entries:
        print(f"{_size(entry.size):>10}  {entry.path.relative_to(root)}  {entry.source}")
    print(f"{_size(sum(e.size for e in entries)):>10}  in {len(entries)} entries; `st-tp cache clear` removes them.")


def _size(n: int) -> str:
    """Binary units, as `du -h` counts them."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


# ---- parser -----------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from st_tp.runtime.prompts import PROMPTS

    methods = sorted(PROMPTS)
    parser = argparse.ArgumentParser(prog="st-tp", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build", help="build a TP SentenceTransformer from a base model and save it")
    p.add_argument("base", nargs="?", help="hub id, local folder, or packaged:<name> of the base LLM (default: the preset's base_model)")
    p.add_argument("--config", help="a preset: a YAML file or a preset name (e.g. smollm2-135m-prompteol-tp; a typo gets a did-you-mean)")
    p.add_argument("--out", required=True, help="folder to save the model to")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a TPConfig key (repeatable)")
    p.add_argument("--dtype", choices=DTYPES, help="weights dtype (auto: float16 on CUDA, bfloat16 on a CPU that runs it natively, else float32)")
    p.add_argument("--device", help="torch device: cpu, cuda, cuda:1, mps (default: the best available)")
    p.add_argument("--gguf-file", help="a GGUF file inside the BASE folder to read tokenizer, config and weights from")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("encode", help="embed a text file into a .npy matrix, or a corpus into a Parquet dataset")
    p.add_argument("model", help="a folder saved by `st-tp build` (or any SentenceTransformer model, .npy output only)")
    p.add_argument("--input", required=True, help="a .txt (one text per line), .jsonl, .csv or .tsv file, or Parquet "
                   "(a file, a folder or a glob); row i of a .npy output is input row i")
    p.add_argument("--output", required=True, help="X.npy (.npy is appended if missing), or a folder DIR/ (trailing "
                   "slash): a Parquet dataset of id, embedding and kept columns, written shard by shard, resumable")
    p.add_argument("--batch-size", type=int, default=16, help="sentences per forward pass (default 16)")
    p.add_argument("--device", help="torch device: cpu, cuda, cuda:1, mps (default: the best available)")
    p.add_argument("--normalize", action="store_true", help="L2-normalise the embeddings")
    p.add_argument("--skip-empty", action="store_true", help="skip blank lines (then rows no longer match line numbers)")
    p.add_argument("--similarity", action="store_true", help="also print the cosine similarity of every pair of lines")
    p.add_argument("--text-column", default="text", help="column holding the text (default text; not for .txt)")
    p.add_argument("--id-column", help="column carried to the output as `id` (default: the row number, from 0)")
    p.add_argument("--keep-columns", default="", metavar="A,B", help="more input columns carried to the output")
    p.add_argument("--output-dtype", default="float32", choices=["float32", "float16"],
                   help="embedding dtype in the dataset (float16 halves it; default float32)")
    p.add_argument("--shard-size", type=int, default=10_000, help="input rows per part file; the unit a resume "
                   "skips (default 10000)")
    p.add_argument("--on-bad-row", default="error", choices=["error", "skip"], help="a null, non-string or empty "
                   "text: stop naming the row (default), or skip it and count it in the manifest")
    p.add_argument("--engine", default="local", choices=["local", "ray"], help="local: this process (default); "
                   'ray: Ray Data actors (pip install -e ".[ray]"), on this machine or --address')
    p.add_argument("--actors", type=int, default=2, help="--engine ray: model replicas (default 2)")
    p.add_argument("--cpus-per-actor", type=float, default=1, help="--engine ray: CPUs (and torch threads) per actor")
    p.add_argument("--gpus-per-actor", type=float, default=0, help="--engine ray: GPUs per actor; > 0 runs on cuda, "
                   "0 (default) on CPU with CUDA hidden")
    p.add_argument("--address", help="--engine ray: the cluster to join (default $RAY_ADDRESS, else a local one)")
    p.add_argument("--keep-duplicate-ids", action="store_true", help="write rows whose --id-column value repeats "
                   "(default: stop at the first repeat, naming the id and both rows)")
    p.add_argument("--verbose", action="store_true", help="--engine ray: show Ray's own INFO logs, worker output and "
                   "progress bars (default: warnings only)")
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("sweep", help="dev score for every tp_end x output_layer (+ vanilla); plots and best.yaml")
    p.add_argument("base", help="hub id, local folder, or packaged:<name> of the base LLM")
    scored_by = p.add_mutually_exclusive_group(required=True)
    scored_by.add_argument("--dev", help="STS-like dev TSV: score, sentence1, sentence2 (never a test set)")
    scored_by.add_argument("--transfer", metavar="TASK", help="SentEval's SST2 dev set, or a held-out fold of TREC/MRPC train")
    p.add_argument("--data", help="with --transfer: SentEval's data/downstream folder (e.g. ../shared/data/senteval)")
    p.add_argument("--layers", help="exit layers scored, a..b or a,b,c (default all; a transfer sweep keeps their states in memory)")
    p.add_argument("--prompt-method", default="prompteol", choices=methods, help="embedding prompt (default prompteol)")
    p.add_argument("--tp-start", type=int, default=1, help="first decoder layer that gets the <PST> overwrite (default 1)")
    p.add_argument("--tp-end", default="2..12", help="tp_end values: a range a..b or a list a,b,c (default 2..12)")
    p.add_argument("--metric", choices=["spearman", "pearson"], help="--dev's score (default spearman; --transfer: accuracy)")
    p.add_argument("--out", required=True, help="folder for grid.csv, heatmap.png, curves.png and best.yaml")
    p.add_argument("--batch-size", type=int, default=16, help="pairs per batch (--transfer: 2N sentences; default 16)")
    p.add_argument("--limit", type=int, help="first N dev pairs (--transfer: first N examples of each split)")
    p.add_argument("--sample", type=int, help="N dev pairs (--transfer: examples per split) drawn at random (seed 0)")
    p.add_argument("--dtype", default="auto", choices=DTYPES, help="weights dtype (default auto)")
    p.add_argument("--device", help="torch device: cpu, cuda, cuda:1, mps (default: the best available)")
    p.add_argument("--gguf-file", help="a GGUF file inside the BASE folder to read the model from")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("mteb", help="evaluate models on MTEB task sets (the paper's appendix) or local TSV data")
    p.add_argument("models", nargs="*", help="saved st_tp folders or any SentenceTransformer model")
    p.add_argument("--tasks", default="appendix", help="a task set (classification, pair-classification, reranking, "
                   "clustering, summarization, sts, appendix, retrieval) or comma-separated task names, mixed freely "
                   "(e.g. sts,Banking77Classification)")
    p.add_argument("--output-folder", default="mteb-results", help="results cache and summary.md go here (default mteb-results)")
    p.add_argument("--local-data", help="local data instead of the hub: <name>.test.tsv files, mteb/<task>/ folders")
    p.add_argument("--limit", type=int, help="with --local-data: first N test rows per task (clustering: N texts per set, "
                   "at random; summarization: N documents; reranking: N queries); summary.md marks the slice")
    p.add_argument("--batch-size", type=int, default=32, help="sentences per forward pass (default 32)")
    p.add_argument("--device", help="torch device: cpu, cuda, cuda:1, mps (default: the best available)")
    p.add_argument("--list", action="store_true", help="print the resolved task list and exit (no download)")
    p.set_defaults(func=cmd_mteb)

    p = sub.add_parser("senteval", help="SentEval transfer tasks (the paper's Table 5): accuracy per task, summary.md")
    p.add_argument("models", nargs="+", help="saved st_tp folders or any SentenceTransformer model")
    p.add_argument("--tasks", default="transfer", help="transfer (MR,CR,SUBJ,MPQA,SST2,TREC,MRPC) or task names, comma-separated")
    p.add_argument("--data", required=True, help="SentEval's data/downstream folder (e.g. ../shared/data/senteval)")
    p.add_argument("--output-folder", default="senteval-results", help="summary.md/json, predictions/, embeddings/ (cache)")
    p.add_argument("--sample", type=int, help="at most N examples per split, at random (seed 0); default: the full sets")
    p.add_argument("--classifier", default="auto", choices=["auto", "sklearn", "pytorch"], help="SentEval's logistic regression (sklearn) or the official test mode's (pytorch); auto: pytorch on CUDA")
    p.add_argument("--batch-size", type=int, default=16, help="sentences per forward pass (default 16)")
    p.add_argument("--device", help="torch device: cpu, cuda, cuda:1, mps (default: the best available)")
    p.set_defaults(func=cmd_senteval)

    p = sub.add_parser("cache", help="list the GGUF conversions in st_tp's cache with their sizes, or clear them")
    p.add_argument("action", nargs="?", default="list", choices=["list", "clear"],
                   help="list (default) or clear: remove every converted folder (a later build converts again)")
    p.set_defaults(func=cmd_cache)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, OSError) as error:  # configuration mistakes and hub/disk errors: one clear line, no traceback
        message = " ".join(str(error).split())  # transformers' hub errors span several lines
        print(f"st-tp: error: {flag_message(message)}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt as interrupt:  # Ctrl-C: one line (a corpus run says what it kept), the shell's 130
        print(f"\nst-tp: {interrupt if str(interrupt) else 'interrupted'}", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
