"""Where mteb's predictions go: one folder per model, `<task>_predictions.json` per task (what
`mteb.evaluate(..., prediction_folder=...)` writes: the raw scores a paired bootstrap resamples), and an index
beside them of the model revision and task data each file was written for, since mteb's file names hold neither."""

from __future__ import annotations

import json
from pathlib import Path

PREDICTIONS_INDEX = "predictions_index.json"


class PredictionsFolder:
    """One model's predictions folder: mteb writes <task>_predictions.json there for every task it runs, and the
    index beside them says which model revision and task data wrote each file."""

    def __init__(self, folder: Path, model_revision: str):
        self.folder, self.revision = folder, model_revision
        self.index_path = folder / PREDICTIONS_INDEX
        self.index = json.loads(self.index_path.read_text()) if self.index_path.is_file() else {}

    def _key(self, task) -> dict[str, str]:
        return {"model_revision": self.revision, "dataset_revision": task.metadata.revision}

    def before_run(self, task) -> None:
        # mteb adds to an existing file and keeps its header (another model's revision): start afresh
        (self.folder / task.prediction_file_name).unlink(missing_ok=True)
        self.index.pop(task.metadata.name, None)

    def written(self, task) -> None:
        """Record the file mteb just wrote for `task` as this model's on this task's data."""
        if (self.folder / task.prediction_file_name).is_file():
            self.index[task.metadata.name] = self._key(task)
            self.folder.mkdir(parents=True, exist_ok=True)
            self.index_path.write_text(json.dumps(self.index, indent=1, sort_keys=True), encoding="utf-8")

    def current(self, task) -> bool:
        """Whether the file for `task` is this model's on this task's data (a task served from the results cache
        writes none, so its file is whatever an earlier run left)."""
        return (self.index.get(task.metadata.name) == self._key(task)
                and (self.folder / task.prediction_file_name).is_file())
