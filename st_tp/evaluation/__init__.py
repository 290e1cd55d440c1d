"""MTEB evaluation of TP models: the paper's appendix task sets, local TSV data, side-by-side summaries."""

from st_tp.evaluation.local import local_tasks
from st_tp.evaluation.runner import MtebRun, run_mteb, select_tasks
from st_tp.evaluation.tasks import TASK_SETS, resolve_tasks

__all__ = ["MtebRun", "TASK_SETS", "local_tasks", "resolve_tasks", "run_mteb", "select_tasks"]
