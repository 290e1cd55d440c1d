"""Reading the evaluation TSV files (../shared/data/SOURCES.md): a header line, tab-separated, no quoting."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def read_tsv(path: str | Path, limit: int | None = None) -> list[dict[str, str]]:
    """Rows as dicts keyed by the header; quotes are text (STS sentences contain unbalanced ones)."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return rows[:limit] if limit else rows


def read_pairs(path: str | Path, limit: int | None = None) -> tuple[list[str], list[str], np.ndarray]:
    """An STS-like TSV (score, sentence1, sentence2): the two sides and the gold scores."""
    rows = read_tsv(path, limit)
    if not rows or not {"score", "sentence1", "sentence2"} <= set(rows[0]):
        raise ValueError(f"{path} must be a TSV with columns score, sentence1, sentence2.")
    return [r["sentence1"] for r in rows], [r["sentence2"] for r in rows], np.array([float(r["score"]) for r in rows])
