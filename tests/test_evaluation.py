"""The MTEB runner end to end: mteb's mock tasks of every appendix kind, and local STS-B data."""

import json

import numpy as np
import pytest
from mteb.mocks.mock_tasks.classification import MockClassificationTask
from mteb.mocks.mock_tasks.clustering import MockClusteringTask
from mteb.mocks.mock_tasks.pair_classification import MockPairClassificationTask
from mteb.mocks.mock_tasks.reranking import MockRerankingTask
from mteb.mocks.mock_tasks.retrieval import MockRetrievalTask
from mteb.mocks.mock_tasks.sts import MockSTSTask
from mteb.mocks.mock_tasks.summarization import MockSummarizationTask
from scipy.stats import spearmanr
from sentence_transformers import SentenceTransformer

import st_tp
from st_tp.cli import main
from st_tp.data import read_pairs
from st_tp.evaluation import TASK_SETS, local_tasks, run_mteb


def test_mock_tasks_of_every_kind(tiny_llama, tmp_path):
    tasks = [MockClassificationTask(), MockPairClassificationTask(), MockClusteringTask(), MockRerankingTask(),
             MockSTSTask(), MockSummarizationTask()]
    vanilla = st_tp.build(tiny_llama, tp=False, output_layer=-1, device="cpu")
    vanilla.model_card_data.model_name = "vanilla"
    tp = st_tp.build(tiny_llama, tp_start=1, tp_end=3, output_layer=3, device="cpu")
    tp.model_card_data.model_name = "tp"
    run = run_mteb([vanilla, tp], tasks, tmp_path, batch_size=4, verbose=False)
    scores = run.scores
    assert set(scores) == {"vanilla", "tp"}
    for label in scores:
        assert set(scores[label]) == {t.metadata.name for t in tasks}
        assert all(np.isfinite(v) for v in scores[label].values())
        result_files = list((tmp_path / "results").rglob("*.json"))
        assert {p.stem for p in result_files} >= {t.metadata.name for t in tasks}
        # mteb's predictions of every kind, one folder per model, for significance tests
        assert run.predictions[label] == tmp_path / "predictions" / label
        written = {p.name for p in run.predictions[label].iterdir()}
        assert written >= {f"{t.metadata.name}_predictions.json" for t in tasks}, written
    summary = (tmp_path / "summary.md").read_text()
    for category in ["Classification", "PairClassification", "Clustering", "Reranking", "STS", "Summarization"]:
        assert f"## {category}" in summary
    sts_row = next(line for line in summary.splitlines() if line.startswith("| MockSTSTask"))
    cells = [c.strip() for c in sts_row.strip("|").split("|")]
    assert float(cells[2]) == pytest.approx(100 * scores["vanilla"]["MockSTSTask"], abs=0.006)
    assert float(cells[4]) == pytest.approx(100 * (scores["tp"]["MockSTSTask"] - scores["vanilla"]["MockSTSTask"]), abs=0.011)

    # resume: a second run finds every task in mteb's results cache and re-encodes nothing
    calls = []
    original = tp.encode
    tp.encode = lambda *a, **k: calls.append(1) or original(*a, **k)
    again_run = run_mteb([vanilla, tp], tasks, tmp_path, batch_size=4, verbose=False)
    again = again_run.scores
    assert not calls and not again_run.no_predictions  # the files on disk are the first run's, of the same models
    for label in scores:  # mteb stores scores rounded to 5 decimals
        assert again[label] == pytest.approx(scores[label], abs=1e-5)


def test_local_stsb_slice_matches_own_spearman(tmp_path, data_dir, golden_dir, capsys):
    model_dir = tmp_path / "golden-tp"
    main(["build", str(golden_dir / "llama" / "model"), "--out", str(model_dir), "--set", "tp_end=4",
          "--set", "output_layer=6", "--dtype", "float32", "--device", "cpu"])
    out = tmp_path / "results"
    main(["mteb", str(model_dir), "--tasks", "STSBenchmark", "--local-data", str(data_dir), "--limit", "120",
          "--output-folder", str(out), "--batch-size", "16", "--device", "cpu"])
    printed = capsys.readouterr().out
    assert f"Results (mteb's cache, one JSON per model and task): {out / 'results'}" in printed
    assert f"Summary: {out / 'summary.md'}" in printed
    result = json.loads(next(out.rglob("STSBenchmark-local.json")).read_text())
    reported = result["scores"]["test"][0]["main_score"]

    s1, s2, gold = read_pairs(data_dir / "raw" / "stsb.test.tsv", 120)
    model = SentenceTransformer(str(model_dir), trust_remote_code=True, device="cpu")
    a = model.encode(s1, normalize_embeddings=True)
    b = model.encode(s2, normalize_embeddings=True)
    own = spearmanr(gold, (a * b).sum(1)).statistic
    assert reported == pytest.approx(own, abs=1e-6)
    assert "STSBenchmark-local" in (out / "summary.md").read_text()


def test_appendix_list_needs_no_download(capsys):
    main(["mteb", "--tasks", "appendix", "--list"])
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == "39 tasks" and len(printed) == 40
    assert len(TASK_SETS["appendix"]) == 39
    assert any("STSBenchmark" in line and "STSBenchmark.v2" in line for line in printed)


def test_rebuilt_folder_is_evaluated_again_and_a_cached_one_is_not_loaded(tiny_llama, tmp_path, monkeypatch, data_dir):
    folder, out = tmp_path / "tp-model", tmp_path / "results"
    tasks = local_tasks(data_dir, ["STSBenchmark"], limit=60)
    st_tp.build(tiny_llama, tp_end=2, output_layer=3, device="cpu").save(str(folder))
    first = run_mteb([str(folder)], tasks, out, batch_size=8, verbose=False)
    # the same folder name, rebuilt with another tp_end: a new revision, so the runner evaluates it again
    st_tp.build(tiny_llama, tp_end=3, output_layer=3, device="cpu").save(str(folder))
    second = run_mteb([str(folder)], tasks, out, batch_size=8, verbose=False)
    assert first.revisions["tp-model"] != second.revisions["tp-model"]
    assert second.scores["tp-model"] != pytest.approx(first.scores["tp-model"], abs=1e-4)  # not the stale score
    own = SentenceTransformer(str(folder), trust_remote_code=True, device="cpu")
    fresh = run_mteb([own], tasks, tmp_path / "fresh", batch_size=8, verbose=False).scores
    assert second.scores["tp-model"] == pytest.approx(next(iter(fresh.values())), abs=1e-5)
    assert len(list(out.rglob("STSBenchmark-local.json"))) == 2  # one result file per revision, none overwritten
    meta = json.loads(next(out.rglob("model_meta.json")).read_text())
    assert meta["name"] == "st-tp/tp-model" and meta["adapted_from"] == tiny_llama and meta["embed_dim"] == 64
    assert meta["max_tokens"] == 512 and meta["n_parameters"] > 0 and meta["framework"] == ["Sentence Transformers", "PyTorch"]

    # every task cached: the model is not even loaded
    def no_load(*args, **kwargs):
        raise AssertionError("a model whose tasks are all cached must not be loaded")

    monkeypatch.setattr("st_tp.evaluation.runner.SentenceTransformer", no_load)
    third = run_mteb([str(folder)], tasks, out, batch_size=8, verbose=False)
    assert third.scores["tp-model"] == pytest.approx(second.scores["tp-model"], abs=1e-5) and not third.failures


class BrokenTask(MockSTSTask):
    def load_data(self, *args, **kwargs):
        raise RuntimeError("dataset unreachable")


def test_a_failing_task_does_not_stop_the_others(tiny_llama, tmp_path):
    model = st_tp.build(tiny_llama, tp_end=3, output_layer=3, device="cpu")
    name, prompts = model.model_card_data.model_name, dict(model.prompts)
    run = run_mteb([model], [BrokenTask(), MockClassificationTask()], tmp_path, batch_size=4, verbose=False)
    ((label, task, error),) = run.failures
    assert task == "MockSTSTask" and "dataset unreachable" in error
    assert np.isfinite(run.scores[label]["MockClassificationTask"])
    summary = run.summary_path.read_text()
    assert "## Failures" in summary and "dataset unreachable" in summary and "| MockSTSTask | cosine_spearman | failed |" in summary
    assert model.model_card_data.model_name == name and model.prompts == prompts  # the caller's model is untouched


def test_mock_retrieval_uses_the_query_and_document_templates(tiny_llama, tmp_path):
    query, document = 'Query <PST> "{text}" finds passages:"', 'Passage <PST> "{text}" means in one word:"'
    model = st_tp.build(tiny_llama, tp_end=3, output_layer=3, device="cpu", templates={"query": query, "document": document})
    module = model[0]
    used = []
    original = module.preprocess
    module.preprocess = lambda *a, **k: used.append(original(*a, **k)["templates"]) or original(*a, **k)
    run = run_mteb([model], [MockRetrievalTask()], tmp_path, batch_size=4, verbose=False)
    del module.preprocess
    assert not run.failures
    (scores,) = run.scores.values()
    assert 0 <= scores["MockRetrievalTask"] <= 1
    assert {(query,), (document,)} <= set(used)
    assert "## Retrieval" in run.summary_path.read_text()
    assert TASK_SETS["retrieval"] == ["SciFact", "NFCorpus", "ArguAna"]
