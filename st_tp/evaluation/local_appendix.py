"""Local copies of the appendix tasks as real mteb tasks: classification, pair classification, clustering,
summarization and reranking, each a subclass of mteb's own abstract task, scored by mteb's own evaluator with the
settings of the mteb task it stands for (st_tp.evaluation.local_task).

A task is a folder `DIR/mteb/<mteb task name>/` (../shared/data/mteb/README.md); its kind comes from its files:
* test.tsv `label<TAB>sentence1<TAB>sentence2` (0/1): pair classification;
* test.tsv `label<TAB>text` with train.tsv beside it: classification (mteb draws its training texts from train);
* test.tsv `label<TAB>text` alone: clustering, one set (labels.txt, the label names, may sit beside it);
* test.jsonl with `query`, `positive`, `negative`: reranking (mteb's classic reranking format, one query a line);
* test.jsonl with `text`, `human_summaries`, `machine_summaries`, `relevance`: summarization (one document a line).
A folder named after an mteb task must hold data of that task's kind (a classification task's train.tsv missing is
an error); one named after no mteb task is scored with the defaults of mteb's abstract class.
"""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset, DatasetDict
from mteb.abstasks import AbsTask
from mteb.abstasks.classification import AbsTaskClassification
from mteb.abstasks.clustering_legacy import AbsTaskClusteringLegacy
from mteb.abstasks.pair_classification import AbsTaskPairClassification
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.text import reranking
from mteb.abstasks.text.summarization import AbsTaskSummarization

from st_tp.data import read_tsv_header
from st_tp.evaluation.local_copies import local_copy
from st_tp.evaluation.local_formats import first_keys, jsonl_format, read_jsonl, read_table
from st_tp.evaluation.local_task import LOCAL_SUFFIX, check_counterpart, local_metadata, make_task, mteb_task

FOLDER = "mteb"  # the appendix task folders sit in DIR/mteb/
TEXT_COLUMNS = ("label", "text")
PAIR_COLUMNS = ("label", "sentence1", "sentence2")
SUMMARY_KEYS = {"text": "text", "human_summaries": "texts", "machine_summaries": "texts", "relevance": "numbers"}
RERANKING_KEYS = {"query": "text", "positive": "texts", "negative": "texts"}
# What `limit` keeps, per kind, in the words summary.md uses.
SLICE_WORDS = {"STS": "first {n} rows", "Classification": "first {n} test texts", "PairClassification": "first {n} pairs",
               "Clustering": "{n} texts per set, drawn at random", "Summarization": "first {n} documents",
               "Reranking": "first {n} queries"}


def slice_words(kind: str, limit: int | None) -> str | None:
    return None if limit is None else SLICE_WORDS.get(kind, "first {n} rows").format(n=limit)


def _label_index(labels: list[str], order: tuple[str, ...] | None) -> dict[str, int]:
    """Label name -> integer id: mteb's own ids where the table of copies knows them, else the sorted names
    (numerically when every label is an integer, as mteb's ids are)."""
    if order is not None:
        return {label: i for i, label in enumerate(order)}
    numeric = all(label.lstrip("-").isdigit() for label in labels)
    return {label: i for i, label in enumerate(sorted(set(labels), key=int if numeric else None))}


def classification_task(test: Path, train: Path, name: str, limit: int | None,
                        sample: int | None = None) -> AbsTaskClassification:
    """`label<TAB>text` test and train files; the whole train file, whatever `limit` (mteb draws
    samples_per_label texts per label from it, n_experiments times)."""
    mteb_name = name.removesuffix(LOCAL_SUFFIX)
    like = check_counterpart(mteb_name, "Classification", AbsTaskClassification, test)
    copy = local_copy(mteb_name)
    labels = {"label": copy.label_ids} if copy.label_ids else None  # mteb's label names, where its ids are known
    test_rows = read_table(test, TEXT_COLUMNS, choices=labels, limit=limit, sample=sample)
    if not train.is_file():
        raise ValueError(f"{train}: no such file; {mteb_name} is a classification task, and mteb trains on "
                         f"{train.name} beside {test.name} (label<TAB>text).")
    train_rows = read_table(train, TEXT_COLUMNS, choices=labels)
    index = _label_index([r["label"] for r in train_rows + test_rows], copy.label_ids)

    def split(rows):
        return Dataset.from_dict({"text": [r["text"] for r in rows], "label": [index[r["label"]] for r in rows]})

    def dataset(task):
        task.dataset = DatasetDict({"train": split(train_rows), "test": split(test_rows)})

    taken = f"limit={limit},sample={sample}"
    words = slice_words("Classification", limit) if sample is None else f"{sample} test texts drawn at random"
    return make_task(AbsTaskClassification, local_metadata(name, "Classification", [test, train], taken, like),
                     dataset, like=like, copy=copy, slice_note=words)


def pair_classification_task(test: Path, name: str, limit: int | None,
                             sample: int | None = None) -> AbsTaskPairClassification:
    """`label<TAB>sentence1<TAB>sentence2`, label 0 or 1: the first `limit` pairs, or `sample` pairs drawn at random."""
    like = check_counterpart(name.removesuffix(LOCAL_SUFFIX), "PairClassification", AbsTaskPairClassification, test)
    rows = read_table(test, PAIR_COLUMNS, choices={"label": ("0", "1")}, limit=limit, sample=sample)

    def dataset(task):
        # mteb's own layout for text pair classification: one row holding the lists (the hub datasets' layout)
        columns = {"sentence1": [r["sentence1"] for r in rows], "sentence2": [r["sentence2"] for r in rows],
                   "labels": [int(r["label"]) for r in rows]}
        task.dataset = DatasetDict({"test": Dataset.from_dict({k: [v] for k, v in columns.items()})})

    metadata = local_metadata(name, "PairClassification", [test], f"limit={limit},sample={sample}", like)
    words = slice_words("PairClassification", limit) if sample is None else f"{sample} pairs drawn at random"
    return make_task(AbsTaskPairClassification, metadata, dataset, like=like, slice_note=words)


def clustering_task(test: Path, name: str, limit: int | None) -> AbsTaskClusteringLegacy:
    """`label<TAB>text`, one set. `limit` keeps N texts drawn at random (seed 0, file order kept): the file is
    grouped by label, so its first N texts would be one label."""
    like = check_counterpart(name.removesuffix(LOCAL_SUFFIX), "Clustering", AbsTaskClusteringLegacy, test)
    rows = read_table(test, TEXT_COLUMNS, sample=limit)
    index = _label_index([r["label"] for r in rows], None)

    def dataset(task):
        # the legacy layout mteb's TwentyNewsgroupsClustering has: one row per set, holding its texts and labels
        task.dataset = DatasetDict({"test": Dataset.from_dict(
            {"sentences": [[r["text"] for r in rows]], "labels": [[index[r["label"]] for r in rows]]})})

    metadata = local_metadata(name, "Clustering", [test], f"sample={limit},seed=0", like)
    return make_task(AbsTaskClusteringLegacy, metadata, dataset, like=like, slice_note=slice_words("Clustering", limit))


def _one_score_per_summary(row: dict) -> str | None:
    if len(row["relevance"]) != len(row["machine_summaries"]):
        return (f"{len(row['relevance'])} relevance scores for {len(row['machine_summaries'])} machine_summaries "
                "(one score per machine summary)")
    return None


def summarization_task(test: Path, name: str, limit: int | None) -> AbsTaskSummarization:
    """One document a line (text, human_summaries, machine_summaries, relevance): the first `limit` documents.
    mteb rescales relevance from the task's min_score..max_score (SummEval: 0-5) itself."""
    like = check_counterpart(name.removesuffix(LOCAL_SUFFIX), "Summarization", AbsTaskSummarization, test)
    rows = read_jsonl(test, SUMMARY_KEYS, check=_one_score_per_summary, limit=limit)

    def dataset(task):
        task.dataset = DatasetDict({"test": Dataset.from_dict({key: [r[key] for r in rows] for key in SUMMARY_KEYS})})

    # a summarization task that stands for no mteb task has no score range of its own: the file's
    scores = [score for r in rows for score in r["relevance"]]
    default_range = {"min_score": min(scores), "max_score": max(scores)} if like is None else {}
    metadata = local_metadata(name, "Summarization", [test], f"limit={limit}", like)
    return make_task(AbsTaskSummarization, metadata, dataset, like=like,
                     slice_note=slice_words("Summarization", limit), **default_range)


class LocalReranking(reranking.AbsTaskReranking):
    """mteb's AbsTaskReranking fed the classic format (query, positive list, negative list) by mteb's own
    conversion (transform_old_dataset_format: one document per listed text, positives first, queries without a
    positive or a negative dropped), then scored as mteb scores its reranking tasks (AbsTaskRetrieval)."""

    rows: list[dict]

    def load_data(self, num_proc: int | None = None, **kwargs) -> None:
        if self.data_loaded:
            return
        # mteb's documented switch for that conversion: the task's name in OLD_FORMAT_RERANKING_TASKS
        if self.metadata.name not in reranking.OLD_FORMAT_RERANKING_TASKS:
            reranking.OLD_FORMAT_RERANKING_TASKS.append(self.metadata.name)
        columns = {key: [r[key] for r in self.rows] for key in RERANKING_KEYS}
        self.transform_old_dataset_format(DatasetDict({"test": Dataset.from_dict(columns)}))


def reranking_task(test: Path, name: str, limit: int | None) -> LocalReranking:
    """One query a line (query, positive, negative): the first `limit` queries."""
    like = check_counterpart(name.removesuffix(LOCAL_SUFFIX), "Reranking", AbsTaskRetrieval, test)
    rows = read_jsonl(test, RERANKING_KEYS, limit=limit)
    metadata = local_metadata(name, "Reranking", [test], f"limit={limit}", like)
    return make_task(LocalReranking, metadata, None, like=like, slice_note=slice_words("Reranking", limit), rows=rows)


def folder_task(folder: Path, limit: int | None, sample: int | None = None) -> AbsTask | None:
    """The task in `folder` (its name: the folder's, plus -local), or None if it holds no test file. `sample` draws
    that many test rows at random (classification, pair classification) instead of the first `limit`."""
    name = folder.name + LOCAL_SUFFIX
    test_tsv, test_jsonl = folder / "test.tsv", folder / "test.jsonl"
    if test_jsonl.is_file():
        expected = f"{jsonl_format(RERANKING_KEYS)} (reranking), or {jsonl_format(SUMMARY_KEYS)} (summarization)"
        keys = first_keys(test_jsonl, expected)
        if set(RERANKING_KEYS) <= keys:
            return reranking_task(test_jsonl, name, limit)
        if set(SUMMARY_KEYS) <= keys:
            return summarization_task(test_jsonl, name, limit)
        raise ValueError(f"{test_jsonl} line 1: keys {', '.join(sorted(keys)) or 'none'}; expected {expected}.")
    if not test_tsv.is_file():
        return None
    header = tuple(read_tsv_header(test_tsv))
    if header == PAIR_COLUMNS:
        return pair_classification_task(test_tsv, name, limit, sample)
    if header == TEXT_COLUMNS:
        train, counterpart = folder / "train.tsv", mteb_task(folder.name)
        if train.is_file() or (counterpart is not None and counterpart.metadata.type == "Classification"):
            return classification_task(test_tsv, train, name, limit, sample)  # a missing train file is named there
        return clustering_task(test_tsv, name, limit)
    raise ValueError(f"{test_tsv} line 1: header '{'<TAB>'.join(header)}'; expected 'label<TAB>text' "
                     "(classification with train.tsv beside it, or clustering) or 'label<TAB>sentence1<TAB>sentence2' "
                     "(pair classification).")


def folder_tasks(root: Path, names: list[str] | None, limit: int | None,
                 sample: int | None = None) -> tuple[list[AbsTask], list[str]]:
    """The tasks of every folder in `root/mteb/` whose name is in `names` (None: every folder), and a line for each
    such folder that holds no data."""
    tasks, notes = [], []
    base = root / FOLDER
    for folder in sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []:
        if names is not None and folder.name not in names:
            continue
        task = folder_task(folder, limit, sample)
        if task is None:
            notes.append(f"{folder.name}: no data in {folder} (expected test.tsv or test.jsonl)")
        else:
            tasks.append(task)
    return tasks, notes
