"""Run mteb's own tasks and evaluators on one or more models, resumably, and summarise them side by side."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import mteb
from sentence_transformers import SentenceTransformer

from st_tp.evaluation.local import LOCAL_SUFFIX, local_tasks
from st_tp.evaluation.tasks import PAPER_SCORES, describe, resolve_tasks, task_names

CATEGORY_ORDER = ["Classification", "PairClassification", "Reranking", "Clustering", "Summarization", "STS"]


def _label(model: str | SentenceTransformer, index: int) -> str:
    if isinstance(model, str):
        return Path(model.rstrip("/")).name or f"model{index}"
    name = model.model_card_data.model_name
    return name.split("/")[-1] if name else f"model{index}"  # idempotent: "st-tp/x" -> "x"


def select_tasks(tasks: str | list, local_data: str | Path | None = None, limit: int | None = None) -> list:
    """Task objects from set names / task names (hub tasks, or local TSV tasks with `local_data`); task objects
    pass through unchanged."""
    names = [tasks] if isinstance(tasks, str) else list(tasks)
    if not all(isinstance(name, str) for name in names):
        return names
    return local_tasks(local_data, task_names(names), limit) if local_data else resolve_tasks(names)


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
) -> dict[str, dict[str, float]]:
    """Evaluate every model on every task with mteb.evaluate; returns {model label: {task: main score}}.

    `tasks` is a set name ('appendix', 'sts', ...), task names, or mteb task objects. Results are cached in
    `output_folder/results` (mteb's ResultCache), so an interrupted run resumes without redoing finished tasks.
    """
    task_objects = select_tasks(tasks, local_data, limit)
    output_folder = Path(output_folder)
    cache = mteb.ResultCache(cache_path=output_folder)
    scores: dict[str, dict[str, float]] = defaultdict(dict)
    labels = []
    for index, spec in enumerate(models):
        label = _label(spec, index)
        labels.append(label)
        model = SentenceTransformer(spec, trust_remote_code=True, device=device) if isinstance(spec, str) else spec
        model.model_card_data.model_name = f"st-tp/{label}"  # names the results folder of this model
        for position, task in enumerate(task_objects, 1):
            name = task.metadata.name
            if verbose:
                print(f"[{position}/{len(task_objects)}] {label}: {name}", flush=True)
            result = mteb.evaluate(
                model, task, cache=cache, overwrite_strategy="only-missing",
                encode_kwargs={"batch_size": batch_size}, show_progress_bar=verbose,
            )
            scores[label][name] = float(result.task_results[0].get_score())
    summary = summarize(dict(scores), labels, task_objects)
    os.makedirs(output_folder, exist_ok=True)
    (output_folder / "summary.md").write_text(summary, encoding="utf-8")
    if verbose:
        print(summary)
        print(f"Results (mteb's cache, one JSON per model and task): {output_folder / 'results'}")
        print(f"Summary: {output_folder / 'summary.md'}")
    return dict(scores)


def summarize(scores: dict[str, dict[str, float]], labels: list[str], tasks: list) -> str:
    """A markdown table per category: main score x100 per model, the delta (last - first), the paper's numbers."""
    by_category: dict[str, list] = defaultdict(list)
    for task in tasks:
        by_category[task.metadata.type].append(task)
    order = [c for c in CATEGORY_ORDER if c in by_category] + sorted(set(by_category) - set(CATEGORY_ORDER))
    lines = ["# MTEB summary", "", "Main score x100 (mteb's main metric per task). Paper: Llama-2-7B PromptEOL / PromptEOL+TP.", ""]
    for category in order:
        cat_tasks = by_category[category]
        delta = len(labels) >= 2
        header = ["Task", "main score", *labels] + (["delta"] if delta else []) + ["paper PromptEOL", "paper +TP"]
        lines += [f"## {category}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        columns = defaultdict(list)
        for task in cat_tasks:
            name = task.metadata.name
            values = [100 * scores[label][name] for label in labels]
            paper = PAPER_SCORES.get(name.removesuffix(LOCAL_SUFFIX))
            row = [name, task.metadata.main_score, *[f"{v:.2f}" for v in values]]
            if delta:
                row.append(f"{values[-1] - values[0]:+.2f}")
            row += [f"{paper[0]:.2f}", f"{paper[1]:.2f}"] if paper else ["-", "-"]
            lines.append("| " + " | ".join(row) + " |")
            for label, value in zip(labels, values, strict=True):
                columns[label].append(value)
            if paper:
                columns["paper"].append(paper)
        means = [sum(columns[label]) / len(columns[label]) for label in labels]
        row = [f"**Average ({len(cat_tasks)})**", "", *[f"{m:.2f}" for m in means]]
        if delta:
            row.append(f"{means[-1] - means[0]:+.2f}")
        papers = columns.get("paper", [])
        if len(papers) == len(cat_tasks):
            row += [f"{sum(p[0] for p in papers) / len(papers):.2f}", f"{sum(p[1] for p in papers) / len(papers):.2f}"]
        else:
            row += ["-", "-"]
        lines += ["| " + " | ".join(row) + " |", ""]
    lines += ["## Tasks as run", "", "```", *(describe(task) for task in tasks), "```", ""]
    return "\n".join(lines)
