"""Run mteb's own tasks and evaluators on one or more models, resumably, and summarise them side by side."""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import mteb
from mteb.models.sentence_transformer_wrapper import SentenceTransformerEncoderWrapper
from sentence_transformers import SentenceTransformer

from st_tp.evaluation.local import KNOWN, LOCAL_SUFFIX, find_local_tasks
from st_tp.evaluation.meta import folder_revision, lookup_meta, model_meta, model_revision, release_date
from st_tp.evaluation.predictions import PredictionsFolder
from st_tp.evaluation.summary import CATEGORY_ORDER, mteb_name, summarize
from st_tp.evaluation.tasks import TASK_SETS, resolve_tasks, task_names

__all__ = ["CATEGORY_ORDER", "MtebRun", "TaskSelection", "run_mteb", "select_tasks", "summarize", "task_selection"]


def _label(model: str | SentenceTransformer, index: int, taken: list[str]) -> str:
    """A short unique label: the folder's name, or the model card's model name (made path-safe)."""
    if isinstance(model, str):
        label = Path(model.rstrip("/")).name
    else:
        label = (model.model_card_data.model_name or "").split("/")[-1]
    label = re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-") or f"model{index}"
    return f"{label}-{index}" if label in taken else label


@dataclass
class TaskSelection:
    """The tasks to run, and a line for each task set or task folder that had no local data."""

    tasks: list
    notes: list[str] = field(default_factory=list)


def _set_parts(parts: list[str]) -> list[str]:
    """The task sets named in `parts`, 'appendix' as its categories."""
    sets = []
    for part in parts:
        for name in ([s for s in TASK_SETS if s not in ("appendix", "retrieval")] if part == "appendix" else [part]):
            if name in TASK_SETS and name not in sets:
                sets.append(name)
    return sets


def task_selection(tasks: str | list, local_data: str | Path | None = None, limit: int | None = None) -> TaskSelection:
    """Task objects from set names / task names (hub tasks, or local tasks with `local_data`); task objects pass
    through unchanged. With `local_data`, a task named on its own that has no local data is an error, and a set
    (such as 'sts', or each category of 'appendix') takes what it finds: a set that finds nothing is named in
    `notes` ('reranking: no local data in DIR'), as is a task folder that holds no data."""
    if not isinstance(tasks, str) and not all(isinstance(task, str) for task in tasks):
        return TaskSelection(list(tasks))
    names = task_names(tasks)  # 'sts,Banking77Classification': set names expand, commas split
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1 (rows per task), got {limit}.")
    if not local_data:
        if limit is not None:
            raise ValueError("limit slices local tasks only: give local_data as well, or drop limit.")
        return TaskSelection(resolve_tasks(names))
    found = find_local_tasks(local_data, names, limit)
    # A task named on its own (not through a set such as 'sts') that has no file is a mistake, not a task to skip.
    have = {task.metadata.name.removesuffix(LOCAL_SUFFIX) for task in found.tasks}
    parts = [part.strip() for part in (tasks.split(",") if isinstance(tasks, str) else tasks) if part.strip()]
    missing = [part for part in parts if part not in TASK_SETS and part not in have
               and KNOWN.get(part, ("",))[0] not in have]
    if missing:
        raise ValueError(f"no local file for task(s) {', '.join(missing)} in {local_data} (local tasks found: "
                         f"{', '.join(sorted(have)) or 'none'}); expected <name>.test.tsv, e.g. stsb.test.tsv for "
                         "STSBenchmark, or a folder mteb/<task>/ holding test.tsv or test.jsonl.")
    notes = [f"{name}: no local data in {local_data}" for name in _set_parts(parts)
             if not have & set(TASK_SETS[name])]
    notes += found.notes
    if not found.tasks:
        raise ValueError(f"no local data in {local_data} for tasks {', '.join(parts)}: expected <name>.test.tsv files "
                         "or mteb/<task>/ folders (docs/evaluation.md, 'Offline, from local files').")
    return TaskSelection(found.tasks, notes)


def select_tasks(tasks: str | list, local_data: str | Path | None = None, limit: int | None = None) -> list:
    """The tasks of `task_selection`."""
    return task_selection(tasks, local_data, limit).tasks


@dataclass
class MtebRun:
    """What `run_mteb` did: main scores per model label and task, the tasks that failed, and where it wrote."""

    scores: dict[str, dict[str, float]]
    failures: list[tuple[str, str, str]]  # (model label, task, error)
    revisions: dict[str, str]  # model label -> the revision its results are keyed by
    summary_path: Path
    results_path: Path
    # model label -> the folder mteb wrote its <task>_predictions.json files to (for significance tests)
    predictions: dict[str, Path] = field(default_factory=dict)
    # (model label, task) scored from the results cache whose predictions file is not this model's on this data
    # (written by an earlier run into another output folder, or since overwritten by another slice)
    no_predictions: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # task sets and folders with no local data


def _cached_result(cache: mteb.ResultCache, task, meta: mteb.ModelMeta):
    """The cached result of `task` for this model and revision, if it is of this task's data (mteb itself does not
    compare the dataset revision of a complete result, so a local slice's score would be served for another slice
    or the whole file) and covers every split and subset."""
    result = cache.load_task_result(task.metadata.name, meta)
    if result is None or result.dataset_revision != task.metadata.revision or result.get_missing_evaluations(task):
        return None
    return result


def _strategy(cache: mteb.ResultCache, task, meta: mteb.ModelMeta) -> str:
    """mteb's overwrite strategy for a task to run: resume a stored result of this task's data (its missing splits
    only), replace one of other data (another slice of a local file), which mteb would otherwise serve."""
    stored = cache.load_task_result(task.metadata.name, meta)
    return "always" if stored is not None and stored.dataset_revision != task.metadata.revision else "only-missing"


def run_mteb(
    models: list[str | SentenceTransformer],
    tasks: str | list,
    output_folder: str | Path,
    *,
    local_data: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 32,
    device: str | None = None,
    verbose: bool = True,
) -> MtebRun:
    """Evaluate every model on every task with mteb.evaluate, resumably, and write `summary.md`.

    `tasks` is a set name ('appendix', 'retrieval', 'sts', ...), task names, or mteb task objects. Each model is
    named `st-tp/<folder or model name>` and its results are keyed by a revision derived from its settings and
    weights (see `st_tp.evaluation.meta`), in `output_folder/results` (mteb's ResultCache): a finished task is never
    run twice, a model whose tasks are all cached is not even loaded, and a rebuilt model is evaluated afresh. A task
    that fails is listed (summary.md, `MtebRun.failures`) and the others still run. Models passed in are not changed.

    mteb writes each task's predictions to `output_folder/predictions/<label>/<task>_predictions.json`
    (`MtebRun.predictions`). A task scored from the results cache is not run, so it writes none: its file is the
    one the run that scored it wrote, and where that is not this model on this data, `MtebRun.no_predictions` and
    summary.md say so.
    """
    selection = task_selection(tasks, local_data, limit)
    task_objects = selection.tasks
    for note in selection.notes if verbose else []:
        print(note, flush=True)
    output_folder = Path(output_folder)
    cache = mteb.ResultCache(cache_path=output_folder)
    scores: dict[str, dict[str, float]] = defaultdict(dict)
    failures: list[tuple[str, str, str]] = []
    revisions: dict[str, str] = {}
    predictions: dict[str, Path] = {}
    no_predictions: list[tuple[str, str]] = []
    labels = []
    for index, spec in enumerate(models):
        label = _label(spec, index, labels)
        labels.append(label)
        name = mteb_name(label)
        if isinstance(spec, str):
            revision, released = folder_revision(spec, device), release_date(spec)
            lookup = lookup_meta(name, revision)
            cached = {task.metadata.name: r for task in task_objects if (r := _cached_result(cache, task, lookup))}
            model = None if len(cached) == len(task_objects) else SentenceTransformer(spec, trust_remote_code=True, device=device)
        else:
            model, revision, released, cached = spec, model_revision(spec), None, {}
        revisions[label] = revision
        predictions[label] = output_folder / "predictions" / label
        written = PredictionsFolder(predictions[label], revision)
        encoder = None
        if model is not None:
            encoder = SentenceTransformerEncoderWrapper(model)
            encoder.mteb_model_meta = model_meta(model, name, revision, released)
        for position, task in enumerate(task_objects, 1):
            task_name = task.metadata.name
            if verbose:
                print(f"[{position}/{len(task_objects)}] {label} ({revision}): {task_name}", flush=True)
            try:
                result = cached.get(task_name) or _cached_result(cache, task, encoder.mteb_model_meta)
                if result is None:
                    written.before_run(task)
                    result = mteb.evaluate(
                        encoder, task, cache=cache, overwrite_strategy=_strategy(cache, task, encoder.mteb_model_meta),
                        prediction_folder=predictions[label], encode_kwargs={"batch_size": batch_size},
                        show_progress_bar=verbose,
                    ).task_results[0]
                    written.written(task)
                elif not written.current(task):
                    no_predictions.append((label, task_name))
                # Only the task's own splits and subsets count (a cached file may hold more).
                scores[label][task_name] = float(result.validate_and_filter_scores(task).get_score())
            except Exception as error:  # one broken task must not cost the others
                failures.append((label, task_name, f"{type(error).__name__}: {error}"))
                if verbose:
                    print(f"  failed: {type(error).__name__}: {error}", flush=True)
    summary = summarize(dict(scores), labels, task_objects, failures, revisions, limit=limit if local_data else None,
                        notes=selection.notes, predictions={label: str(path) for label, path in predictions.items()},
                        no_predictions=no_predictions)
    os.makedirs(output_folder, exist_ok=True)
    summary_path = output_folder / "summary.md"
    summary_path.write_text(summary, encoding="utf-8")
    if verbose:
        print(summary)
        print(f"Results (mteb's cache, one JSON per model and task): {output_folder / 'results'}")
        print(f"Predictions (one folder per model): {output_folder / 'predictions'}")
        print(f"Summary: {summary_path}")
    return MtebRun(dict(scores), failures, revisions, summary_path, output_folder / "results", predictions,
                   no_predictions, selection.notes)
