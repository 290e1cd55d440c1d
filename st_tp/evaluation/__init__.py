"""MTEB evaluation of TP models: the paper's appendix task sets, local data, side-by-side summaries."""

from st_tp.evaluation.local import find_local_tasks, local_tasks
from st_tp.evaluation.runner import MtebRun, TaskSelection, run_mteb, select_tasks, task_selection
from st_tp.evaluation.senteval import run_senteval  # SentEval transfer tasks (docs/transfer.md)
from st_tp.evaluation.tasks import TASK_SETS, resolve_tasks

__all__ = ["MtebRun", "TASK_SETS", "TaskSelection", "find_local_tasks", "local_tasks", "resolve_tasks", "run_mteb",
           "run_senteval", "select_tasks", "task_selection"]
