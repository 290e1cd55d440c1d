"""Reading the evaluation TSV files (../shared/data/SOURCES.md): a header line, tab-separated, no quoting."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def read_tsv(path: str | Path, limit: int | None = None, sample: int | None = None, seed: int = 0) -> list[dict[str, str]]:
    """Rows as dicts keyed by the header; quotes are text (STS sentences contain unbalanced ones).

    `limit` keeps the first N rows. `sample` keeps N rows drawn at random (seeded), in file order: the STS files
    are grouped by source, so their first rows are one genre only."""
    if not Path(path).is_file():
        raise ValueError(f"No such data file: {path}. Give a TSV with a header line (see ../shared/data/SOURCES.md).")
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if sample is not None and sample < len(rows):
        keep = np.sort(np.random.default_rng(seed).choice(len(rows), size=sample, replace=False))
        rows = [rows[i] for i in keep]
    return rows[:limit] if limit else rows


def read_pairs(
    path: str | Path, limit: int | None = None, sample: int | None = None, seed: int = 0
) -> tuple[list[str], list[str], np.ndarray]:
    """An STS-like TSV (score, sentence1, sentence2): the two sides and the gold scores."""
    rows = read_tsv(path, limit, sample, seed)
    if not rows or not {"score", "sentence1", "sentence2"} <= set(rows[0]):
        raise ValueError(f"{path} must be a TSV with columns score, sentence1, sentence2.")
    return [r["sentence1"] for r in rows], [r["sentence2"] for r in rows], np.array([float(r["score"]) for r in rows])
