"""summary.md and summary.json: a table shaped like the paper's Table 5 (one row per model, each task's SentEval
metric x100, Avg.), with the paper's Llama-2-7B PromptEOL and PromptEOL + TP rows beside it, quoted exactly."""

from __future__ import annotations

from dataclasses import dataclass, field

from .evaluate import TaskResult
from .tasks import TRANSFER

# Table 5 of the paper (../shared/paper/token-prepending-paper.txt): accuracy x100, Llama-2-7B, SentEval's full sets.
PAPER_TABLE5 = {
    "PromptEOL": "90.63 92.87 96.32 91.19 95.00 95.40 75.19 90.94",
    "PromptEOL + TP": "90.90 93.35 96.58 91.51 95.50 96.00 76.12 91.42",
}
PAPER_NOTE = "the paper's Table 5 (Llama-2-7B, 7B parameters; SentEval's full sets), quoted"


def paper_rows() -> dict[str, dict[str, str]]:
    return {name: dict(zip([*TRANSFER, "Avg."], row.split(), strict=True)) for name, row in PAPER_TABLE5.items()}


@dataclass
class Summary:
    """What one run scored: results[model][task], the failures, and how it was run."""

    results: dict[str, dict[str, TaskResult]]
    tasks: list[str]
    classifier: str
    sample: int | None
    failures: dict[str, str] = field(default_factory=dict)  # task -> its one-line message (which names the task)
    revisions: dict[str, str | None] = field(default_factory=dict)

    @property
    def title(self) -> str:
        scope = ("full sets" if self.sample is None
                 else f"a sample of at most {self.sample} examples per split (seed 0), not comparable to full-set figures")
        return f"SentEval transfer tasks (accuracy x100; MRPC: accuracy, F1 in summary.json): {scope}"

    def average(self, model: str) -> float | None:
        scores = [self.results[model][t].acc for t in self.tasks if t in self.results[model]]
        return sum(scores) / len(scores) if scores else None

    def markdown(self) -> str:
        head = ["model", *self.tasks, "Avg."]
        lines = [f"# {self.title}", "", f"Classifier: {self.classifier}.", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for model, by_task in self.results.items():
            cells = [f"{by_task[t].acc:.2f}" if t in by_task else "—" for t in self.tasks]
            average = self.average(model)
            complete = all(t in by_task for t in self.tasks)
            avg = "—" if average is None else f"{average:.2f}" + ("" if complete else "*")
            lines.append(f"| {model} | " + " | ".join(cells) + f" | {avg} |")
        for name, row in paper_rows().items():
            if self.tasks == list(TRANSFER):
                avg = row["Avg."]
            else:  # the paper's own figures, averaged over the tasks of this table
                avg = f"{sum(float(row[t]) for t in self.tasks) / len(self.tasks):.2f}"
            lines.append(f"| {name} (paper) | " + " | ".join(row[t] for t in self.tasks) + f" | {avg} |")
        lines += ["", f"The (paper) rows are {PAPER_NOTE}"
                  + ("" if self.tasks == list(TRANSFER) else "; their Avg. is over this table's tasks")
                  + ". Avg. is the mean of a row's tasks" + (" (* where some failed)." if self.failures else ".")]
        if self.failures:
            lines += ["", "## Failures", ""] + [f"- {message}" for message in self.failures.values()]
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict:
        models = {}
        for model, by_task in self.results.items():
            models[model] = {
                "revision": self.revisions.get(model),
                "average": self.average(model),
                "tasks": {t: {k: getattr(r, k) for k in ("acc", "devacc", "f1", "ndev", "ntest", "chosen")}
                          for t, r in by_task.items()},
            }
        return {"title": self.title, "classifier": self.classifier, "sample": self.sample, "tasks": self.tasks,
                "models": models, "paper": {"note": PAPER_NOTE, "rows": paper_rows()}, "failures": self.failures}
