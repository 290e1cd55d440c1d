"""The paired bootstrap over mteb's saved predictions: it reproduces mteb's scores, pairs the resamples, and finds a
real difference while finding none between a model and itself."""

import json

import mteb
import numpy as np
import pytest
from mteb.mocks.mock_tasks.classification import MockClassificationTask
from mteb.mocks.mock_tasks.clustering import MockClusteringTask
from mteb.mocks.mock_tasks.pair_classification import MockPairClassificationTask
from mteb.mocks.mock_tasks.summarization import MockSummarizationTask
from mteb.models.sentence_transformer_wrapper import SentenceTransformerEncoderWrapper
from scipy.stats import spearmanr

import st_tp
from st_tp.evaluation import local_tasks
from st_tp.evaluation.significance import paired_bootstrap, read_predictions, significance_table


@pytest.fixture(scope="module")
def evaluated(tiny_llama, data_dir, tmp_path_factory):
    """Vanilla and TP on mteb's mock tasks of four kinds and 80 local STS-B test pairs, predictions saved."""
    tasks = [MockClassificationTask(), MockClusteringTask(), MockPairClassificationTask(), MockSummarizationTask(),
             *local_tasks(data_dir, names=["STSBenchmark"], limit=80)]
    root = tmp_path_factory.mktemp("predictions")
    reported = {}
    for label, settings in (("vanilla", dict(tp=False)), ("tp", dict(tp_end=3))):
        model = st_tp.build(tiny_llama, output_layer=3, device="cpu", **settings)
        result = mteb.evaluate(SentenceTransformerEncoderWrapper(model), tasks, cache=None,
                               prediction_folder=root / label, show_progress_bar=False)
        reported[label] = {r.task_name: r.get_score() for r in result.task_results}
    return tasks, root, reported


def test_each_task_reproduces_mtebs_score_and_the_table_reads_it(evaluated):
    tasks, root, reported = evaluated
    rows, average = paired_bootstrap(tasks, root / "vanilla", root / "tp", reported_a=reported["vanilla"],
                                     reported_b=reported["tp"], resamples=100)
    assert [r.name for r in rows] == [t.metadata.name for t in tasks]
    for row in rows:  # the full-sample scores are mteb's (paired_bootstrap checks them to 1e-4 before it resamples)
        assert row.score_a == pytest.approx(reported["vanilla"][row.name], abs=1e-4)
        assert row.delta == pytest.approx(row.score_b - row.score_a)
    sts = rows[-1]
    assert sts.items == "80 pairs" and sts.low < sts.high and 0 <= sts.p_value <= 1
    assert average.delta == pytest.approx(np.mean([r.delta for r in rows]))
    table = significance_table(rows, average, "vanilla", "tp", 100)
    assert table[0].startswith("| Task | items | vanilla | tp | delta | 95% interval (100 paired resamples) | p |")
    assert f"| {100 * sts.delta:+.2f} | [{100 * sts.low:+.2f}, {100 * sts.high:+.2f}] |" in table[-2]


def test_a_model_against_itself_differs_by_nothing(evaluated):
    tasks, root, reported = evaluated
    rows, average = paired_bootstrap(tasks, root / "tp", root / "tp", reported_a=reported["tp"],
                                     reported_b=reported["tp"], resamples=50)
    for row in [*rows, average]:
        assert row.delta == 0 and row.p_value == 1.0
        assert np.isnan(row.low) or row.low == row.high == 0


def test_resamples_are_paired_items(evaluated, tmp_path):
    """Each resample scores both models on the same pairs: re-derived here with scipy on the saved cosines."""
    tasks, root, reported = evaluated
    sts = tasks[-1]
    gold = np.array([sts._normalize(x) for x in sts.dataset["test"]["score"]])
    cosines = [np.array(read_predictions(root / label, sts)["cosine_scores"]) for label in ("vanilla", "tp")]
    rows, _ = paired_bootstrap([sts], root / "vanilla", root / "tp", reported_a=reported["vanilla"],
                               reported_b=reported["tp"], resamples=200, seed=7)
    rng = np.random.default_rng(7)
    deltas = []
    for _ in range(200):
        idx = rng.integers(0, len(gold), len(gold))
        deltas.append(spearmanr(gold[idx], cosines[1][idx]).statistic - spearmanr(gold[idx], cosines[0][idx]).statistic)
    low, high = np.percentile(deltas, [2.5, 97.5])
    assert (rows[0].low, rows[0].high) == pytest.approx((low, high), abs=1e-12)


def test_a_real_difference_is_found_and_stale_predictions_are_refused(evaluated, tmp_path):
    tasks, root, reported = evaluated
    sts = tasks[-1]
    gold = np.array([sts._normalize(x) for x in sts.dataset["test"]["score"]])
    rng = np.random.default_rng(0)
    scores = {}
    for label, signal in (("weak", 0.0), ("strong", 1.0)):  # cosines that track the gold scores, or do not
        cos = (signal * gold + rng.normal(0, 0.3, len(gold))).tolist()
        saved = {"default": {"test": {"cosine_scores": cos, "manhattan_distances": cos, "euclidean_distances": cos,
                                      "similarity_scores": cos}}}
        (tmp_path / label).mkdir()
        (tmp_path / label / f"{sts.metadata.name}_predictions.json").write_text(json.dumps(saved))
        scores[label] = {sts.metadata.name: spearmanr(gold, cos).statistic}
    (row,), _ = paired_bootstrap([sts], tmp_path / "weak", tmp_path / "strong", reported_a=scores["weak"],
                                 reported_b=scores["strong"], resamples=200)
    assert row.delta > 0.3 and row.low > 0 and row.p_value < 0.01
    with pytest.raises(ValueError, match=r"model A's saved predictions give .* mteb reported 0\.500000; the predictions "
                                         r"are from another run"):
        paired_bootstrap([sts], tmp_path / "weak", tmp_path / "strong", reported_a={sts.metadata.name: 0.5},
                         reported_b=scores["strong"], resamples=10)
    with pytest.raises(ValueError, match=r"no predictions for STSBenchmark-local in .*nowhere \(expected "
                                         r"STSBenchmark-local_predictions\.json"):
        paired_bootstrap([sts], tmp_path / "nowhere", tmp_path / "strong", reported_a=scores["weak"],
                         reported_b=scores["strong"])


def test_transfer_items_are_matched_by_row_and_a_real_gain_found():
    from st_tp.evaluation.significance import transfer_bootstrap

    rng = np.random.default_rng(1)
    gold = rng.integers(0, 2, 400)
    rows = rng.permutation(1000)[:400]
    weak = np.where(rng.random(400) < 0.6, gold, 1 - gold)  # 60% right
    strong = np.where(rng.random(400) < 0.9, gold, 1 - gold)  # 90% right
    a = {"MR": {"gold": gold.tolist(), "predictions": weak.tolist(), "source_rows": rows.tolist()}}
    order = np.argsort(rows)  # model B's file lists the same items in another order
    b = {"MR": {"gold": gold[order].tolist(), "predictions": strong[order].tolist(), "source_rows": rows[order].tolist()}}
    (row,), average = transfer_bootstrap(a, b, resamples=500)
    assert row.score_a == pytest.approx(np.mean(weak == gold)) and row.score_b == pytest.approx(np.mean(strong == gold))
    assert row.low > 0.2 and row.p_value < 0.01 and average.delta == pytest.approx(row.delta)
    (same,), _ = transfer_bootstrap(a, a, resamples=50)
    assert same.delta == 0 and same.low == same.high == 0 and same.p_value == 1.0
    b["MR"]["source_rows"][0] = 5000
    with pytest.raises(ValueError, match="MR: the two models' predictions cover different items"):
        transfer_bootstrap(a, b)
