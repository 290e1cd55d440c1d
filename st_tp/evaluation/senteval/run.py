"""`run_senteval`: the paper's Table 5 for any SentenceTransformer models (`st-tp senteval`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .cache import EmbeddingStore, task_key, texts_digest, write_json
from .classifiers import PYTORCH, SKLEARN, ClassifierSettings
from .embedding import EMBEDDING_RECIPE, SentenceEmbedder
from .evaluate import TaskResult, parts, score_task
from .models import ModelRef, model_refs
from .readers import TaskDataError
from .table import Summary
from .tasks import INNER_KFOLD, Split, TransferTask, prepare, resolve_tasks


@dataclass
class SentEvalRun:
    """What `run_senteval` scored and wrote. `embedded` and `classified` list the (model, task) pairs this run
    computed; the others came from the output folder's cache."""

    summary: Summary
    paths: dict[str, Path]
    embedded: list[tuple[str, str]] = field(default_factory=list)
    classified: list[tuple[str, str]] = field(default_factory=list)

    @property
    def results(self) -> dict[str, dict[str, TaskResult]]:
        return self.summary.results

    @property
    def failures(self) -> dict[str, str]:
        return self.summary.failures

    def report(self) -> str:
        """What `st-tp senteval` prints: the table, then where it went."""
        return (f"{self.summary.markdown().rstrip()}\nwrote {self.paths['summary.md']}, summary.json and per-item "
                f"predictions under {self.paths['predictions']}/ ({len(self.embedded)} model x task embeddings computed, "
                "the others read from the cache)")


def _classifier(classifier: str | ClassifierSettings, device: str | None) -> ClassifierSettings:
    if isinstance(classifier, ClassifierSettings):
        return classifier
    if classifier == "auto":  # the official test mode's PyTorch classifier where it ran (a GPU); else deterministic
        from st_tp.runtime.config import resolve_device

        where = resolve_device(device)
        return ClassifierSettings(PYTORCH, device=where) if where.startswith("cuda") else ClassifierSettings(SKLEARN)
    return ClassifierSettings(classifier)


def _read(task: TransferTask, data: str | Path, sample: int | None) -> dict[str, Split]:
    return {name: prepare(raw, sample) for name, raw in task.read(data).items()}


def run_senteval(
    models: list,
    tasks: str | list[str] = "transfer",
    data: str | Path = "../shared/data/senteval",
    output_folder: str | Path = "senteval-results",
    *,
    sample: int | None = None,
    classifier: str | ClassifierSettings = "auto",
    batch_size: int = 16,
    device: str | None = None,
    show_progress_bar: bool = True,
) -> SentEvalRun:
    """Score `models` (saved st_tp folders, any SentenceTransformer name or object) on SentEval's transfer tasks, as
    the official TP code runs SentEval (see docs/transfer.md), and write OUTPUT/summary.md, summary.json and each
    model's per-item predictions under OUTPUT/predictions/.

    Args:
        tasks: 'transfer' (MR, CR, SUBJ, MPQA, SST2, TREC, MRPC) or task names.
        data: SentEval's data/downstream folder (MR/, CR/, ..., SST/binary/, TREC/, MRPC/).
        sample: at most this many examples per split, drawn at random (seed 0); None: the full sets.
        classifier: 'sklearn' (SentEval's usepytorch=False logistic regression; deterministic), 'pytorch' (the
            official test mode's: nhid 0, adam, batch 64, tenacity 5, epoch_size 4), or 'auto': 'pytorch' on the
            GPU when the models run on CUDA, else 'sklearn'. A ClassifierSettings sets every detail.
        batch_size: sentences per forward pass (the official test mode's 16).
    A task whose data is missing or malformed is listed in `failures` (and summary.md); the others still run.
    """
    if sample is not None and (type(sample) is not int or sample < 1):
        raise ValueError(f"sample must be a positive int (examples per split), got {sample!r}.")
    if isinstance(models, (str, Path)) or not isinstance(models, (list, tuple)):
        models = [models]  # one model, named or given
    if not models:
        raise ValueError("models is empty: give at least one saved st_tp folder or SentenceTransformer model.")
    if not Path(data).is_dir():
        raise ValueError(f"data {data}: no such folder; give SentEval's data/downstream folder (MR/, CR/, SUBJ/, MPQA/, "
                         "SST/binary/, TREC/, MRPC/), e.g. ../shared/data/senteval.")
    chosen_tasks = resolve_tasks(tasks)
    settings = _classifier(classifier, device)
    out = Path(output_folder)
    summary = Summary({}, [t.name for t in chosen_tasks], settings.describe(), sample)
    run = SentEvalRun(summary, {"summary.md": out / "summary.md", "summary.json": out / "summary.json",
                                "predictions": out / "predictions"})
    data_of: dict[str, dict[str, Split]] = {}
    for task in chosen_tasks:  # read once, shared by every model; a bad task is named and the others go on
        try:
            data_of[task.name] = _read(task, data, sample)
        except TaskDataError as error:
            summary.failures[task.name] = str(error)
    for ref in model_refs(list(models), device):
        summary.results[ref.label] = {}
        summary.revisions[ref.label] = ref.revision
        for task in (t for t in chosen_tasks if t.name in data_of):
            try:
                summary.results[ref.label][task.name] = _model_task(ref, task, data_of[task.name], settings, out, sample,
                                                                    batch_size, show_progress_bar, run)
            except TaskDataError as error:  # too few examples to cross-validate: this task only
                summary.failures[task.name] = str(error)
        ref.release()
    out.mkdir(parents=True, exist_ok=True)
    run.paths["summary.md"].write_text(summary.markdown())
    write_json(run.paths["summary.json"], summary.to_json())
    return run


def _model_task(ref: ModelRef, task: TransferTask, splits: dict[str, Split], settings: ClassifierSettings,
                out: Path, sample: int | None, batch_size: int, show_progress_bar: bool, run: SentEvalRun) -> TaskResult:
    """One model on one task: its cached result, else its cached embeddings scored, else embedded and scored."""
    key = task_key(task.name, sample)
    texts = parts(task, splits)
    # The embeddings are of these texts as the embedder turns and batches them: its recipe is part of the key.
    recipe = f"{EMBEDDING_RECIPE}, batch_size={batch_size}"
    digests = {name: texts_digest([recipe, *t]) for name, t in texts.items()}
    predictions = out / "predictions" / ref.folder_name / f"{key}.{settings.kind}.json"
    about = {"task": task.name, "model": ref.label, "revision": ref.revision, "sample": sample,
             "classifier": settings.describe(), "settings": repr(settings), "embeddings": digests}
    if ref.revision is not None and predictions.is_file():
        cached = json.loads(predictions.read_text())
        if {k: cached.get(k) for k in about} == about:
            return TaskResult.from_json(cached["result"])
    store = EmbeddingStore(out, ref.folder_name, ref.revision)
    embeddings = store.load(key, digests)
    if embeddings is None:
        embedder = SentenceEmbedder(ref.load(), batch_size, show_progress_bar)
        embeddings = embedder.embed(texts, desc=f"{ref.label} {task.name}")
        store.save(key, embeddings, digests, {"task": task.name, "model": ref.label, "sample": sample,
                                              "text_rules": embedder.text_rules})
        run.embedded.append((ref.label, task.name))
    try:
        result = score_task(task, splits, embeddings, settings)
    except ValueError as error:  # scikit-learn's StratifiedKFold on a small sample: every class under kfold members
        if "n_splits" not in str(error):
            raise
        raise TaskDataError(task.name, f"too few examples for SentEval's {settings.kfold}-fold cross-validation "
                                       f"({error}); take more examples (a larger sample)") from None
    run.classified.append((ref.label, task.name))
    rows_are = ("row in the task's files, concatenated in SentEval's order (first file first)" if task.protocol == INNER_KFOLD
                else "line of the test file (0-based; MRPC: after its header)")
    write_json(predictions, {**about, "scored": result.scored, "source_rows_are": rows_are, "result": result.to_json()})
    return result
