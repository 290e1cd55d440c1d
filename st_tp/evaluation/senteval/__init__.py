"""SentEval's transfer tasks (the paper's Table 5), reimplemented from SentEval's protocol as the official TP code
runs it: `run_senteval` (`st-tp senteval`), and the parts the transfer sweep reuses (docs/transfer.md)."""

from st_tp.evaluation.senteval.classifiers import PYTORCH, SKLEARN, ClassifierSettings
from st_tp.evaluation.senteval.evaluate import TaskResult, score_task
from st_tp.evaluation.senteval.readers import TaskDataError
from st_tp.evaluation.senteval.run import SentEvalRun, run_senteval
from st_tp.evaluation.senteval.table import Summary
from st_tp.evaluation.senteval.tasks import TASKS, TRANSFER, TransferTask, prepare, resolve_tasks

__all__ = ["PYTORCH", "SKLEARN", "TASKS", "TRANSFER", "ClassifierSettings", "SentEvalRun", "Summary", "TaskDataError",
           "TaskResult", "TransferTask", "prepare", "resolve_tasks", "run_senteval", "score_task"]
