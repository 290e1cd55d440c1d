"""summary.md: one markdown table per category, the models side by side, the paper's Llama-2-7B figures beside the
tasks they may stand beside, and what was not run."""

from __future__ import annotations

from collections import defaultdict

from st_tp.evaluation.local_task import LOCAL_SUFFIX
from st_tp.evaluation.tasks import PAPER_SCORES, describe
from st_tp.runtime.identity import NAME_PREFIX

CATEGORY_ORDER = ["Classification", "PairClassification", "Reranking", "Retrieval", "Clustering", "Summarization", "STS"]


def mteb_name(label: str) -> str:
    """The model name MTEB files this label's results under (the prefix a loaded folder's name has too)."""
    return f"{NAME_PREFIX}/{label}"


def _note(task) -> str | None:
    """How a local copy differs from mteb's version (st_tp.evaluation.local_copies); None for mteb's own data."""
    copy = getattr(task, "local_copy", None)
    return None if copy is None or copy.comparable else f"differs from mteb: {copy.differs}"


def _paper(task) -> tuple[float, float] | None:
    """The paper's figures for `task`, if they may stand beside its score: mteb's data, or a copy of the same rows,
    scored in full."""
    if _note(task) or getattr(task, "slice_note", None):
        return None
    return PAPER_SCORES.get(task.metadata.name.removesuffix(LOCAL_SUFFIX))


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _category(category: str, tasks: list, scores: dict[str, dict[str, float]], labels: list[str],
              paper_columns: bool) -> list[str]:
    delta = len(labels) >= 2
    notes = [_note(task) for task in tasks]
    slices = {getattr(task, "slice_note", None) for task in tasks}
    words = next(iter(slices)) if len(slices) == 1 else None
    header = [f"Task ({words})" if words else "Task", "main score", *labels] + (["delta"] if delta else [])
    header += (["paper PromptEOL", "paper +TP"] if paper_columns else []) + (["note"] if any(notes) else [])
    lines = [f"## {category}", "", _row(header), "|" + "---|" * len(header)]

    def cells(values: list[float], paper: tuple[float, float] | None) -> list[str]:
        out = [f"{v:.2f}" for v in values] + ([f"{values[-1] - values[0]:+.2f}"] if delta else [])
        if paper_columns:
            out += [f"{paper[0]:.2f}", f"{paper[1]:.2f}"] if paper else ["-", "-"]
        return out

    scored, comparable = [], []  # per finished task: the models' scores (and the paper's, where it may stand)
    for task, note in zip(tasks, notes, strict=True):
        name = task.metadata.name
        if words is None and getattr(task, "slice_note", None):
            name += f" ({task.slice_note})"
        row = [name, task.metadata.main_score]
        if all(task.metadata.name in scores.get(label, {}) for label in labels):
            values = [100 * scores[label][task.metadata.name] for label in labels]
            paper = _paper(task)
            row += cells(values, paper)
            scored.append(values)
            if paper:
                comparable.append((values, paper))
        else:
            cell = {label: scores.get(label, {}).get(task.metadata.name) for label in labels}
            row += ["failed" if cell[label] is None else f"{100 * cell[label]:.2f}" for label in labels]
            row += ["-"] * (len(header) - len(row) - bool(any(notes)))
        lines.append(_row(row + ([note or ""] if any(notes) else [])))
    if scored:
        means = [_mean([values[i] for values in scored]) for i in range(len(labels))]
        all_comparable = len(comparable) == len(scored)
        paper = tuple(_mean([p[i] for _, p in comparable]) for i in range(2)) if all_comparable else None
        title = f"**Average ({len(scored)} of {len(tasks)})**" if len(scored) < len(tasks) else f"**Average ({len(scored)})**"
        lines.append(_row([title, "", *cells(means, paper)] + ([""] if any(notes) else [])))
        if comparable and not all_comparable:  # the paper's average only over the tasks it may stand beside
            means = [_mean([values[i] for values, _ in comparable]) for i in range(len(labels))]
            paper = tuple(_mean([p[i] for _, p in comparable]) for i in range(2))
            title = f"**Average of the {len(comparable)} comparable with the paper**"
            lines.append(_row([title, "", *cells(means, paper)] + ([""] if any(notes) else [])))
    return lines + [""]


def _slice_lines(tasks: list, limit: int | None) -> list[str]:
    clustering = any(t.metadata.type == "Clustering" and getattr(t, "slice_note", None) for t in tasks)
    if limit is not None:
        what = f"**A slice: the first {limit} test rows of each task (`limit={limit}`)"
        what += f"; clustering: {limit} texts drawn at random from each set, whose file is grouped by label,**" \
            if clustering else ",**"
    else:
        what = "**A slice: some tasks hold part of their data (the task column says which),**"
    return [what + " a quick check. Its scores are not comparable to full-set scores, so the paper's figures are "
            "left off. Main score x100 (mteb's main metric per task).", ""]


def summarize(scores: dict[str, dict[str, float]], labels: list[str], tasks: list,
              failures: list[tuple[str, str, str]] = (), revisions: dict[str, str] | None = None,
              limit: int | None = None, notes: list[str] = (), predictions: dict[str, str] | None = None,
              no_predictions: list[tuple[str, str]] = ()) -> str:
    """A markdown table per category: main score x100 per model, the delta (last - first), the paper's numbers
    beside the tasks they may stand beside (not beside a slice, nor a local copy that differs from mteb's data: such
    a task has a note saying how, and stays out of the paper's average); then the categories and folders that had
    no local data, the failed tasks, the model revisions and predictions folders (and the tasks scored from the
    results cache whose predictions file is not of this run), and the tasks as run."""
    by_category: dict[str, list] = defaultdict(list)
    for task in tasks:
        by_category[task.metadata.type].append(task)
    order = [c for c in CATEGORY_ORDER if c in by_category] + sorted(set(by_category) - set(CATEGORY_ORDER))
    sliced = limit is not None or any(getattr(task, "slice_note", None) for task in tasks)
    if not sliced:
        lines = ["# MTEB summary", "", "Main score x100 (mteb's main metric per task). Paper: Llama-2-7B PromptEOL / "
                 "PromptEOL+TP.", ""]
        if any(_note(task) for task in tasks):
            lines += ["A task with a note is a local copy that differs from mteb's version: its score is not the one "
                      "mteb reports for the hub data, so the paper's figures are left off for it and out of the "
                      "paper's average.", ""]
    else:
        lines = ["# MTEB summary (a slice)", "", *_slice_lines(tasks, limit)]
    for category in order:
        lines += _category(category, by_category[category], scores, labels, paper_columns=not sliced)
    if notes:
        lines += ["## Not run: no local data", "", *[f"- {note}" for note in notes], ""]
    if failures:
        lines += ["## Failures", "", "| model | task | error |", "|---|---|---|"]
        lines += [f"| {label} | {task} | {error.splitlines()[0][:300]} |" for label, task, error in failures] + [""]
    if revisions:
        predictions = predictions or {}
        lines += ["## Models", "", "| model | MTEB name | revision | predictions |", "|---|---|---|---|"]
        lines += [f"| {label} | {mteb_name(label)} | {revision} | {predictions.get(label, '-')} |"
                  for label, revision in revisions.items()] + [""]
    if no_predictions:
        lines += ["## Predictions not written", "", "Scored from the results cache, so not run: the predictions "
                  "folder holds no file of this model on this data for these (an earlier run wrote it elsewhere, or "
                  "a later slice replaced it). Run them into a new output folder to write them.", ""]
        lines += [f"- {label}: {task}" for label, task in no_predictions] + [""]
    lines += ["## Tasks as run", "", "```", *(describe(task) for task in tasks), "```", ""]
    return "\n".join(lines)
