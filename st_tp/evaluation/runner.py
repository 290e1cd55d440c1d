"""Run mteb's own tasks and evaluators on one or more models, resumably, and summarise them side by side."""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import mteb
from mteb.models.sentence_transformer_wrapper import SentenceTransformerEncoderWrapper
from sentence_transformers import SentenceTransformer

from st_tp.evaluation.local import KNOWN, LOCAL_SUFFIX, local_tasks
from st_tp.evaluation.meta import folder_revision, lookup_meta, model_meta, model_revision, release_date
from st_tp.evaluation.tasks import PAPER_SCORES, TASK_SETS, describe, resolve_tasks, task_names
from st_tp.runtime.identity import NAME_PREFIX


def _cell(scores: dict[str, dict[str, float]], label: str, task: str) -> str:
    value = scores.get(label, {}).get(task)
    return "failed" if value is None else f"{100 * value:.2f}"


CATEGORY_ORDER = ["Classification", "PairClassification", "Reranking", "Retrieval", "Clustering", "Summarization", "STS"]


def _label(model: str | SentenceTransformer, index: int, taken: list[str]) -> str:
    """A short unique label: the folder's name, or the model card's model name (made path-safe)."""
    if isinstance(model, str):
        label = Path(model.rstrip("/")).name
    else:
        label = (model.model_card_data.model_name or "").split("/")[-1]
    label = re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-") or f"model{index}"
    return f"{label}-{index}" if label in taken else label


def _mteb_name(label: str) -> str:
    """The model name MTEB files this label's results under (the prefix a loaded folder's name has too)."""
    return f"{NAME_PREFIX}/{label}"


def select_tasks(tasks: str | list, local_data: str | Path | None = None, limit: int | None = None) -> list:
    """Task objects from set names / task names (hub tasks, or local TSV tasks with `local_data`); task objects
    pass through unchanged."""
    if not isinstance(tasks, str) and not all(isinstance(task, str) for task in tasks):
        return list(tasks)
    names = task_names(tasks)  # 'sts,Banking77Classification': set names expand, commas split
    if not local_data:
        if limit is not None:
            raise ValueError("limit slices local TSV tasks only: give local_data as well, or drop limit.")
        return resolve_tasks(names)
    found = local_tasks(local_data, names, limit)
    # A task named on its own (not through a set such as 'sts') that has no file is a mistake, not a task to skip.
    have = {task.metadata.name.removesuffix(LOCAL_SUFFIX) for task in found}
    parts = [part.strip() for part in (tasks.split(",") if isinstance(tasks, str) else tasks)]
    missing = [part for part in parts if part and part not in TASK_SETS and part not in have
               and KNOWN.get(part, ("",))[0] not in have]
    if missing:
        raise ValueError(f"no local file for task(s) {', '.join(missing)} in {local_data} (local tasks found: "
                         f"{', '.join(sorted(have))}); expected <name>.test.tsv, e.g. stsb.test.tsv for STSBenchmark.")
    return found


@dataclass
class MtebRun:
    """What `run_mteb` did: main scores per model label and task, the tasks that failed, and where it wrote."""

    scores: dict[str, dict[str, float]]
    failures: list[tuple[str, str, str]]  # (model label, task, error)
    revisions: dict[str, str]  # model label -> the revision its results are keyed by
    summary_path: Path
    results_path: Path


def _complete_result(cache: mteb.ResultCache, task, meta: mteb.ModelMeta):
    """The cached result of `task` for this model and revision, if it covers every split and subset."""
    result = cache.load_task_result(task.metadata.name, meta)
    return result if result is not None and not result.get_missing_evaluations(task) else None


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
    """
    task_objects = select_tasks(tasks, local_data, limit)
    output_folder = Path(output_folder)
    cache = mteb.ResultCache(cache_path=output_folder)
    scores: dict[str, dict[str, float]] = defaultdict(dict)
    failures: list[tuple[str, str, str]] = []
    revisions: dict[str, str] = {}
    labels = []
    for index, spec in enumerate(models):
        label = _label(spec, index, labels)
        labels.append(label)
        name = _mteb_name(label)
        if isinstance(spec, str):
            revision, released = folder_revision(spec, device), release_date(spec)
            lookup = lookup_meta(name, revision)
            cached = {task.metadata.name: r for task in task_objects if (r := _complete_result(cache, task, lookup))}
            model = None if len(cached) == len(task_objects) else SentenceTransformer(spec, trust_remote_code=True, device=device)
        else:
            model, revision, released, cached = spec, model_revision(spec), None, {}
        revisions[label] = revision
        encoder = None
        if model is not None:
            encoder = SentenceTransformerEncoderWrapper(model)
            encoder.mteb_model_meta = model_meta(model, name, revision, released)
        for position, task in enumerate(task_objects, 1):
            task_name = task.metadata.name
            if verbose:
                print(f"[{position}/{len(task_objects)}] {label} ({revision}): {task_name}", flush=True)
            try:
                result = cached.get(task_name) or mteb.evaluate(
                    encoder, task, cache=cache, overwrite_strategy="only-missing",
                    encode_kwargs={"batch_size": batch_size}, show_progress_bar=verbose,
                ).task_results[0]
                # Only the task's own splits and subsets count (a cached file may hold more).
                scores[label][task_name] = float(result.validate_and_filter_scores(task).get_score())
            except Exception as error:  # one broken task must not cost the others
                failures.append((label, task_name, f"{type(error).__name__}: {error}"))
                if verbose:
                    print(f"  failed: {type(error).__name__}: {error}", flush=True)
    summary = summarize(dict(scores), labels, task_objects, failures, revisions, limit=limit if local_data else None)
    os.makedirs(output_folder, exist_ok=True)
    summary_path = output_folder / "summary.md"
    summary_path.write_text(summary, encoding="utf-8")
    if verbose:
        print(summary)
        print(f"Results (mteb's cache, one JSON per model and task): {output_folder / 'results'}")
        print(f"Summary: {summary_path}")
    return MtebRun(dict(scores), failures, revisions, summary_path, output_folder / "results")


def summarize(scores: dict[str, dict[str, float]], labels: list[str], tasks: list,
              failures: list[tuple[str, str, str]] = (), revisions: dict[str, str] | None = None,
              limit: int | None = None) -> str:
    """A markdown table per category: main score x100 per model, the delta (last - first), the paper's numbers;
    then the failed tasks, the model revisions and the tasks as run. With `limit` (the first N test rows of each
    task) the tables say they hold a slice, and the paper's full-set figures are left off: they are not comparable."""
    by_category: dict[str, list] = defaultdict(list)
    for task in tasks:
        by_category[task.metadata.type].append(task)
    order = [c for c in CATEGORY_ORDER if c in by_category] + sorted(set(by_category) - set(CATEGORY_ORDER))
    if limit is None:
        lines = ["# MTEB summary", "", "Main score x100 (mteb's main metric per task). Paper: Llama-2-7B PromptEOL / PromptEOL+TP.", ""]
    else:
        lines = ["# MTEB summary (a slice)", "", f"**A slice: the first {limit} test rows of each task (`limit={limit}`),** "
                 "a quick check. Its scores are not comparable to full-set scores, so the paper's figures are left off. "
                 "Main score x100 (mteb's main metric per task).", ""]
    paper_columns = ["paper PromptEOL", "paper +TP"] if limit is None else []
    for category in order:
        cat_tasks = by_category[category]
        delta = len(labels) >= 2
        task_column = "Task" if limit is None else f"Task (first {limit} rows)"
        header = [task_column, "main score", *labels] + (["delta"] if delta else []) + paper_columns
        lines += [f"## {category}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        columns = defaultdict(list)
        for task in cat_tasks:
            name = task.metadata.name
            if not all(name in scores.get(label, {}) for label in labels):
                row = [name, task.metadata.main_score, *[_cell(scores, label, name) for label in labels]]
                lines.append("| " + " | ".join(row + ["-"] * (len(header) - len(row))) + " |")
                continue
            values = [100 * scores[label][name] for label in labels]
            paper = PAPER_SCORES.get(name.removesuffix(LOCAL_SUFFIX)) if limit is None else None
            row = [name, task.metadata.main_score, *[f"{v:.2f}" for v in values]]
            if delta:
                row.append(f"{values[-1] - values[0]:+.2f}")
            row += [f"{paper[0]:.2f}", f"{paper[1]:.2f}"] if paper else ["-"] * len(paper_columns)
            lines.append("| " + " | ".join(row) + " |")
            for label, value in zip(labels, values, strict=True):
                columns[label].append(value)
            if paper:
                columns["paper"].append(paper)
        scored = len(columns[labels[0]]) if labels else 0  # tasks every model finished
        if not scored:
            lines.append("")
            continue
        means = [sum(columns[label]) / scored for label in labels]
        row = [f"**Average ({scored} of {len(cat_tasks)})**" if scored < len(cat_tasks) else f"**Average ({scored})**",
               "", *[f"{m:.2f}" for m in means]]
        if delta:
            row.append(f"{means[-1] - means[0]:+.2f}")
        papers = columns.get("paper", [])
        if paper_columns and len(papers) == scored:
            row += [f"{sum(p[0] for p in papers) / len(papers):.2f}", f"{sum(p[1] for p in papers) / len(papers):.2f}"]
        else:
            row += ["-"] * len(paper_columns)
        lines += ["| " + " | ".join(row) + " |", ""]
    if failures:
        lines += ["## Failures", "", "| model | task | error |", "|---|---|---|"]
        lines += [f"| {label} | {task} | {error.splitlines()[0][:300]} |" for label, task, error in failures] + [""]
    if revisions:
        lines += ["## Models", "", "| model | MTEB name | revision |", "|---|---|---|"]
        lines += [f"| {label} | {_mteb_name(label)} | {revision} |" for label, revision in revisions.items()] + [""]
    lines += ["## Tasks as run", "", "```", *(describe(task) for task in tasks), "```", ""]
    return "\n".join(lines)
