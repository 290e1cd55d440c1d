"""Local data as real mteb tasks, for machines without the dataset hub: discovery, and the TSV files at the top of
the folder (STS-like and Banking77 classification).

Formats (../shared/data/SOURCES.md): STS-like `score<TAB>sentence1<TAB>sentence2` and classification
`label<TAB>text` with `<name>.train.tsv` beside `<name>.test.tsv`. Scores are rescaled by mteb itself
((x - min) / (max - min), from the task's min_score/max_score), exactly as for the hub versions. The appendix
tasks in `DIR/mteb/<task>/` folders are built by st_tp.evaluation.local_appendix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset, DatasetDict
from mteb.abstasks import AbsTask
from mteb.abstasks.sts import AbsTaskSTS

from st_tp.data import read_tsv_header
from st_tp.evaluation.local_appendix import TEXT_COLUMNS, classification_task, folder_tasks
from st_tp.evaluation.local_formats import read_table
from st_tp.evaluation.local_task import LOCAL_SUFFIX, check_counterpart, local_metadata, make_task

__all__ = ["KNOWN", "LOCAL_SUFFIX", "LocalTasks", "find_local_tasks", "local_tasks"]

# file stem -> (mteb task it stands for, score range of the original data)
KNOWN: dict[str, tuple[str, tuple[float, float] | None]] = {
    "sts12": ("STS12", (0, 5)), "sts13": ("STS13", (0, 5)), "sts14": ("STS14", (0, 5)), "sts15": ("STS15", (0, 5)),
    "sts16": ("STS16", (0, 5)), "stsb": ("STSBenchmark", (0, 5)), "sickr": ("SICK-R", (1, 5)),
    "biosses": ("BIOSSES", (0, 4)), "banking77": ("Banking77Classification", None),
}
STS_COLUMNS = ("score", "sentence1", "sentence2")


def _sts_task(path: Path, name: str, score_range: tuple[float, float] | None, limit: int | None,
              sample: int | None = None) -> AbsTaskSTS:
    rows = read_table(path, STS_COLUMNS, filled=("score",), numeric=("score",), limit=limit, sample=sample)
    scores = [float(r["score"]) for r in rows]
    low, high = score_range or (min(scores), max(scores))
    like = check_counterpart(name.removesuffix(LOCAL_SUFFIX), "STS", AbsTaskSTS, path)

    def dataset(task):
        task.dataset = DatasetDict({"test": Dataset.from_dict({
            "sentence1": [r["sentence1"] for r in rows], "sentence2": [r["sentence2"] for r in rows], "score": scores,
        })})

    drawn = f"{sample} rows drawn at random" if sample is not None else None
    words = (f"{drawn}, the first {limit} of them" if drawn else f"first {limit} rows") if limit else drawn
    metadata = local_metadata(name, "STS", [path], f"limit={limit},sample={sample}", like)
    return make_task(AbsTaskSTS, metadata, dataset, like=like, slice_note=words, min_score=low, max_score=high)


def _tsv_tasks(folder: Path, names: list[str] | None, limit: int | None, raw: bool,
               sample: int | None) -> list[AbsTask]:
    """A task for every `<stem>.test.tsv` at the top of `folder`."""
    tasks = []
    for test in sorted(folder.glob("*.test.tsv")):
        stem = test.name.removesuffix(".test.tsv")
        mteb_name, score_range = KNOWN.get(stem, (stem, None))
        if names is not None and mteb_name not in names and stem not in names:
            continue
        text_file = folder / "raw" / test.name if raw and (folder / "raw" / test.name).exists() else test
        header = tuple(read_tsv_header(test))  # a file that is not UTF-8 ends in one line naming it and the fix
        name = mteb_name + LOCAL_SUFFIX
        if header == STS_COLUMNS:
            tasks.append(_sts_task(text_file, name, score_range, limit, sample))
        elif header == TEXT_COLUMNS:
            tasks.append(classification_task(text_file, text_file.with_name(f"{stem}.train.tsv"), name, limit, sample))
        else:
            raise ValueError(f"{test} line 1: header '{'<TAB>'.join(header)}'; expected 'score<TAB>sentence1<TAB>"
                             "sentence2' (STS) or 'label<TAB>text' (classification, with a .train.tsv beside it).")
    return tasks


@dataclass
class LocalTasks:
    """The local tasks found, and a line for each task folder that holds no data."""

    tasks: list[AbsTask]
    notes: list[str] = field(default_factory=list)


def find_local_tasks(folder: str | Path, names: list[str] | None = None, limit: int | None = None, raw: bool = True,
                     sample: int | None = None) -> LocalTasks:
    """Tasks for every `<stem>.test.tsv` in `folder` (text from `folder/raw/` when it exists and `raw`) and every
    task folder in `folder/mteb/` (st_tp.evaluation.local_appendix); an empty result is not an error here.

    `names` filters by the mteb name a file or folder stands for (e.g. "STSBenchmark", "SummEval"); `limit` keeps
    the first N test rows (a slice for quick checks; clustering: N texts drawn at random from each set;
    summarization: the first N documents; reranking: the first N queries); `sample` keeps N test rows drawn at random (seed 0) of the
    STS, classification and pair-classification files (from every genre, every label). A malformed file raises ValueError naming its line."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"local data {folder}: no such folder.")
    tasks = _tsv_tasks(folder, names, limit, raw, sample)
    more, notes = folder_tasks(folder, names, limit, sample)
    return LocalTasks(tasks + more, notes)


def local_tasks(folder: str | Path, names: list[str] | None = None, limit: int | None = None, raw: bool = True,
                sample: int | None = None) -> list[AbsTask]:
    """The tasks of `find_local_tasks`; none at all is an error."""
    found = find_local_tasks(folder, names, limit, raw, sample)
    if not found.tasks:
        raise ValueError(f"No usable local data in {folder} for tasks {names}: expected <name>.test.tsv files or "
                         "mteb/<task>/ folders (docs/evaluation.md, 'Offline, from local files').")
    return found.tasks
