"""How a local mteb task object is made: a subclass of mteb's own abstract task, its metadata and scoring settings
copied from the mteb task it stands for (so mteb's evaluator scores it exactly as it scores the hub version), and a
revision that is the content of the files read and the rows taken."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import mteb
from mteb.abstasks import AbsTask
from mteb.abstasks.classification import AbsTaskClassification
from mteb.abstasks.clustering_legacy import AbsTaskClusteringLegacy
from mteb.abstasks.pair_classification import AbsTaskPairClassification
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.sts import AbsTaskSTS
from mteb.abstasks.task_metadata import TaskMetadata
from mteb.abstasks.text.summarization import AbsTaskSummarization

from st_tp.evaluation.local_copies import LocalCopy, local_copy

LOCAL_SUFFIX = "-local"

# The class attributes that decide how mteb scores a task of each abstract kind (read in each class's evaluate):
# a local task takes them from the mteb task it stands for, e.g. EmotionClassification's samples_per_label = 16,
# SummEval's DeprecatedSummarizationEvaluator and its 0-5 score range.
SCORING_SETTINGS: dict[type[AbsTask], tuple[str, ...]] = {
    AbsTaskClassification: ("evaluator", "evaluator_model", "samples_per_label", "n_experiments",
                            "is_cross_validation", "n_splits"),
    AbsTaskPairClassification: ("input1_prompt_type", "input2_prompt_type"),
    AbsTaskClusteringLegacy: ("evaluator",),
    AbsTaskSummarization: ("evaluator", "min_score", "max_score"),
    AbsTaskRetrieval: ("k_values", "ignore_identical_ids", "skip_first_result"),  # reranking
    AbsTaskSTS: ("input1_prompt_type", "input2_prompt_type"),
}

# Main scores for a local task that stands for no mteb task: those of the appendix tasks of its kind.
DEFAULT_MAIN_SCORE = {"Classification": "accuracy", "PairClassification": "max_ap", "Clustering": "v_measure",
                      "Summarization": "cosine_spearman", "Reranking": "map_at_1000", "STS": "cosine_spearman"}


def mteb_task(name: str) -> AbsTask | None:
    """mteb's own task of that name (metadata only: nothing is downloaded), or None if mteb has none."""
    try:
        return mteb.get_task(name)
    except KeyError:
        return None


def check_counterpart(name: str, kind: str, scored_as: type[AbsTask], where: Path) -> AbsTask | None:
    """mteb's task `name`, if any, after checking that `where` holds data of its kind and that mteb scores it with
    `scored_as`, the abstract class the local task builds on (e.g. TwentyNewsgroupsClustering with
    AbsTaskClusteringLegacy, not .v2's AbsTaskClustering; reranking with AbsTaskRetrieval, which AbsTaskReranking
    extends)."""
    task = mteb_task(name)
    if task is None:
        return None
    if task.metadata.type != kind:
        raise ValueError(f"{where} holds {kind} data, but mteb's {name} is a {task.metadata.type} task; name the "
                         f"folder after an mteb {kind} task, or after no mteb task.")
    if not isinstance(task, scored_as):
        scorer = next(c.__name__ for c in type(task).__mro__ if c.__module__.startswith("mteb.abstasks"))
        raise ValueError(f"mteb scores {name} with {scorer}; local {kind} data is scored as {scored_as.__name__}, "
                         "as the paper's appendix tasks of that kind are.")
    return task


def local_metadata(name: str, kind: str, files: Sequence[Path], rows_taken: str,
                   like: AbsTask | None = None) -> TaskMetadata:
    """The metadata of a local task: mteb's task `like` with its name, dataset and splits replaced (main score,
    type, category and prompt stay mteb's), or built afresh for data that stands for no mteb task.

    The dataset "revision" is the content of the files read and the rows taken, so a rebuilt file or another
    slice gets a revision of its own (the runner never serves a result of another revision)."""
    digest = hashlib.sha256(b"".join(Path(f).read_bytes() for f in files) + rows_taken.encode()).hexdigest()[:12]
    mteb_name = name.removesuffix(LOCAL_SUFFIX)
    own = dict(name=name, description=f"Local copy of {mteb_name} read from {files[0]}.",
               dataset={"path": str(files[0]), "revision": digest}, eval_splits=["test"], eval_langs=["eng-Latn"])
    if like is not None:
        fields = like.metadata.model_dump()
        fields.update(own, superseded_by=None, adapted_from=None)
        return TaskMetadata(**fields)
    return TaskMetadata(
        **own, reference=None, type=kind, category="t2t", modalities=["text"], main_score=DEFAULT_MAIN_SCORE[kind],
        date=None, domains=None, task_subtypes=None, license=None, annotations_creators=None, dialect=None,
        sample_creation=None, bibtex_citation="",
    )


def scoring_settings(base: type[AbsTask], like: AbsTask | None) -> dict[str, Any]:
    """The scoring attributes of mteb's task `like` (SCORING_SETTINGS), to set on a local task of class `base`."""
    if like is None:
        return {}
    names = next(attributes for kind, attributes in SCORING_SETTINGS.items() if issubclass(base, kind))
    return {attribute: getattr(type(like), attribute) for attribute in names}


def make_task(base: type[AbsTask], metadata: TaskMetadata, dataset: Callable[[AbsTask], None] | None, *,
              like: AbsTask | None = None, copy: LocalCopy | None = None, slice_note: str | None = None,
              **attributes: Any) -> AbsTask:
    """An instance of a new subclass of `base` whose load_data calls `dataset(task)` (which sets task.dataset;
    None: `base` loads its data itself).

    Besides mteb's attributes it carries `local_copy` (what is known of the copy: st_tp.evaluation.local_copies)
    and `slice_note` (the rows a limit took, in words; None for the whole file), which summary.md reads."""
    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        dataset(self)
        self.data_loaded = True

    namespace = {"metadata": metadata, **scoring_settings(base, like), **attributes,
                 "local_copy": copy or local_copy(metadata.name.removesuffix(LOCAL_SUFFIX)), "slice_note": slice_note}
    if dataset is not None:
        namespace["load_data"] = load_data
    return type(f"Local_{metadata.name}", (base,), namespace)()
