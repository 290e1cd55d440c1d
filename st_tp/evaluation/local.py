"""Local TSV files as real mteb tasks, for machines without the dataset hub.

Formats (../shared/data/SOURCES.md): STS-like `score<TAB>sentence1<TAB>sentence2` and classification
`label<TAB>text` with `<name>.train.tsv` beside `<name>.test.tsv`. Scores are rescaled by mteb itself
((x - min) / (max - min), from the task's min_score/max_score), exactly as for the hub versions.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict
from mteb.abstasks.classification import AbsTaskClassification
from mteb.abstasks.sts import AbsTaskSTS
from mteb.abstasks.task_metadata import TaskMetadata

from st_tp.data import read_tsv, read_tsv_header

# file stem -> (mteb task it stands for, score range of the original data)
KNOWN: dict[str, tuple[str, tuple[float, float] | None]] = {
    "sts12": ("STS12", (0, 5)), "sts13": ("STS13", (0, 5)), "sts14": ("STS14", (0, 5)), "sts15": ("STS15", (0, 5)),
    "sts16": ("STS16", (0, 5)), "stsb": ("STSBenchmark", (0, 5)), "sickr": ("SICK-R", (1, 5)),
    "biosses": ("BIOSSES", (0, 4)), "banking77": ("Banking77Classification", None),
}
LOCAL_SUFFIX = "-local"


def _metadata(name: str, kind: str, main_score: str, path: Path, subset: str = "") -> TaskMetadata:
    # The "revision" of a local file is its content and the rows taken from it, so mteb's results cache never
    # serves a slice's score for the whole file (or for another slice).
    digest = hashlib.sha256(path.read_bytes() + subset.encode()).hexdigest()[:12]
    return TaskMetadata(
        name=name,
        description=f"Local copy of {name.removesuffix(LOCAL_SUFFIX)} read from {path}.",
        reference=None,
        dataset={"path": str(path), "revision": digest},
        type=kind,
        category="t2t",
        modalities=["text"],
        eval_splits=["test"],
        eval_langs=["eng-Latn"],
        main_score=main_score,
        date=None,
        domains=None,
        task_subtypes=None,
        license=None,
        annotations_creators=None,
        dialect=None,
        sample_creation=None,
        bibtex_citation="",
    )


def _sts_task(path: Path, name: str, score_range: tuple[float, float] | None, limit: int | None,
              sample: int | None = None) -> AbsTaskSTS:
    rows = read_tsv(path, limit, sample)
    scores = [float(r["score"]) for r in rows]
    low, high = score_range or (min(scores), max(scores))

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        self.dataset = DatasetDict(
            {"test": Dataset.from_dict({
                "sentence1": [r["sentence1"] for r in rows], "sentence2": [r["sentence2"] for r in rows], "score": scores,
            })}
        )
        self.data_loaded = True

    cls = type(
        f"Local_{name}", (AbsTaskSTS,),
        {"metadata": _metadata(name, "STS", "cosine_spearman", path, f"limit={limit},sample={sample}"), "min_score": low, "max_score": high, "load_data": load_data},
    )
    return cls()


def _classification_task(test: Path, train: Path, name: str, limit: int | None,
                         sample: int | None = None) -> AbsTaskClassification:
    test_rows, train_rows = read_tsv(test, limit, sample), read_tsv(train)
    labels = sorted({r["label"] for r in train_rows + test_rows})
    index = {label: i for i, label in enumerate(labels)}

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        def split(rows):
            return Dataset.from_dict({"text": [r["text"] for r in rows], "label": [index[r["label"]] for r in rows]})

        self.dataset = DatasetDict({"train": split(train_rows), "test": split(test_rows)})
        self.data_loaded = True

    cls = type(f"Local_{name}", (AbsTaskClassification,), {"metadata": _metadata(name, "Classification", "accuracy", test, f"limit={limit},sample={sample}"), "load_data": load_data})
    return cls()


def local_tasks(folder: str | Path, names: list[str] | None = None, limit: int | None = None, raw: bool = True,
                sample: int | None = None) -> list:
    """Tasks for every `<stem>.test.tsv` in `folder` (text from `folder/raw/` when it exists and `raw`).

    `names` filters by the mteb name the file stands for (e.g. "STSBenchmark"); `limit` keeps the first N
    test rows (a slice for quick checks); `sample` keeps N test rows drawn at random (seed 0) from every genre.
    """
    folder = Path(folder)
    tasks = []
    for test in sorted(folder.glob("*.test.tsv")):
        stem = test.name.removesuffix(".test.tsv")
        mteb_name, score_range = KNOWN.get(stem, (stem, None))
        if names is not None and mteb_name not in names and stem not in names:
            continue
        text_file = folder / "raw" / test.name if raw and (folder / "raw" / test.name).exists() else test
        header = read_tsv_header(test)  # a file that is not UTF-8 ends in one line naming it and the fix
        name = mteb_name + LOCAL_SUFFIX
        if header == ["score", "sentence1", "sentence2"]:
            tasks.append(_sts_task(text_file, name, score_range, limit, sample))
        elif header == ["label", "text"]:
            train = text_file.with_name(f"{stem}.train.tsv")
            if not train.exists():
                raise ValueError(f"{test} is a classification file but {train} is missing; mteb needs train and test.")
            tasks.append(_classification_task(text_file, train, name, limit, sample))
        else:
            raise ValueError(f"{test}: unknown header {header}; expected 'score, sentence1, sentence2' or 'label, text'.")
    if not tasks:
        raise ValueError(f"No usable <name>.test.tsv in {folder} for tasks {names}.")
    return tasks
