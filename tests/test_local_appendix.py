"""Local copies of the appendix tasks (issue 41): every category as a real mteb task from ../shared/data, scored by
mteb's own evaluators with the settings of the mteb task it stands for, its predictions saved, the copies that
differ from mteb's data marked and kept away from the paper's figures, and one-line errors for bad files."""

import json
import math
import shutil

import mteb
import pytest
from sklearn.metrics import average_precision_score, v_measure_score

import st_tp
from st_tp.cli import main
from st_tp.evaluation import find_local_tasks, local_tasks, run_mteb, task_selection
from st_tp.evaluation.local_task import SCORING_SETTINGS
from st_tp.evaluation.summary import summarize
from tests.conftest import ROOT

RERANKING_FIXTURE = ROOT / "tests" / "fixtures" / "reranking"
FOLDERS = ["AmazonCounterfactualClassification", "TwitterURLCorpus", "TwentyNewsgroupsClustering", "SummEval"]
DIFFERING = {"TwitterURLCorpus", "TwentyNewsgroupsClustering", "SummEval", "TweetSentimentExtractionClassification"}


@pytest.fixture(scope="module")
def tp_folder(tmp_path_factory, tiny_llama):
    folder = tmp_path_factory.mktemp("models") / "tiny-tp"
    st_tp.build(tiny_llama, tp_end=2, output_layer=3, device="cpu").save(str(folder))
    return folder


@pytest.fixture
def mirror(tmp_path, data_dir):
    """A local-data folder with one task of every category that has local data (the cheapest of each: the
    classification tasks embed up to n_experiments x samples_per_label training texts per label, whatever limit),
    and a task folder with no data."""
    root = tmp_path / "data"
    (root / "mteb" / "SciDocsRR").mkdir(parents=True)
    (root / "stsb.test.tsv").symlink_to(data_dir / "stsb.test.tsv")
    for name in FOLDERS:
        (root / "mteb" / name).symlink_to(data_dir / "mteb" / name)
    return root


def _row(summary: str, name: str) -> list[str]:
    line = next(line for line in summary.splitlines() if line.startswith(f"| {name} "))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_appendix_runs_every_category_with_local_data_and_names_the_rest(tp_folder, mirror, tmp_path, capsys):
    out = tmp_path / "out"
    main(["mteb", str(tp_folder), "--tasks", "appendix", "--local-data", str(mirror), "--limit", "10",
          "--output-folder", str(out), "--batch-size", "16", "--device", "cpu"])
    printed = capsys.readouterr().out
    no_data = [f"reranking: no local data in {mirror}",
               f"SciDocsRR: no data in {mirror / 'mteb' / 'SciDocsRR'} (expected test.tsv or test.jsonl)"]
    summary = (out / "summary.md").read_text()
    for line in no_data:
        assert line in printed.splitlines() and f"- {line}" in summary
    predictions = out / "predictions" / "tiny-tp"
    for name in [*FOLDERS, "STSBenchmark"]:
        task = f"{name}-local"
        (result_file,) = out.rglob(f"results/**/{task}.json")
        reported = json.loads(result_file.read_text())["scores"]["test"][0]["main_score"]
        assert math.isfinite(reported)
        assert float(_row(summary, task)[2]) == pytest.approx(100 * reported, abs=0.006)  # summary.md: mteb's score
        assert (predictions / f"{task}_predictions.json").is_file()  # for the paired bootstrap, every category
        assert _row(summary, task)[-1].startswith("differs from mteb: ") == (name in DIFFERING)
    for words in ["first 10 test texts", "first 10 pairs", "10 texts per set, drawn at random", "first 10 documents",
                  "first 10 rows"]:
        assert f"| Task ({words}) |" in summary
    assert "paper PromptEOL" not in summary and "70.83" not in summary  # a slice: no paper figures at all

    # the saved predictions are what mteb scored: its metric recomputed from them gives its reported score
    tasks = {t.metadata.name: t for t in find_local_tasks(mirror, ["TwitterURLCorpus", "TwentyNewsgroupsClustering"],
                                                          limit=10).tasks}
    for task in tasks.values():
        task.load_data()
    scores = {p.stem: json.loads(p.read_text())["scores"]["test"][0] for p in out.rglob("results/**/*-local.json")}
    pairs = json.loads((predictions / "TwitterURLCorpus-local_predictions.json").read_text())["default"]["test"]
    labels = tasks["TwitterURLCorpus-local"].dataset["test"]["labels"][0]
    assert average_precision_score(labels, pairs["cosine_scores"]) == pytest.approx(
        scores["TwitterURLCorpus-local"]["cosine_ap"], abs=1e-6)
    (clusters,) = json.loads((predictions / "TwentyNewsgroupsClustering-local_predictions.json").read_text())["default"]["test"]
    labels = tasks["TwentyNewsgroupsClustering-local"].dataset["test"]["labels"][0]
    assert len(clusters) == 10 and len(set(labels)) > 1  # drawn at random: not one label's first texts
    assert v_measure_score(labels, clusters) == pytest.approx(scores["TwentyNewsgroupsClustering-local"]["v_measure"], abs=1e-6)
    assert len(scores["AmazonCounterfactualClassification-local"]["scores_per_experiment"]) == 10  # mteb's n_experiments


def test_local_tasks_take_mteb_own_settings_and_list_shows_them(data_dir, capsys):
    main(["mteb", "--tasks", "appendix", "--local-data", str(data_dir), "--list"])
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == "17 tasks" and f"reranking: no local data in {data_dir}" in printed
    listed = {line.split()[0]: line for line in printed[:-2]}
    for name in [*FOLDERS, "EmotionClassification", "MassiveIntentClassification", "MassiveScenarioClassification",
                 "TweetSentimentExtractionClassification", "Banking77Classification", "STSBenchmark"]:
        assert ("(differs from mteb: " in listed[f"{name}-local"]) == (name in DIFFERING)

    for task in local_tasks(data_dir, [*FOLDERS, "EmotionClassification", "TweetSentimentExtractionClassification"]):
        own = mteb.get_task(task.metadata.name.removesuffix("-local"))
        assert isinstance(task, type(own).__mro__[1]) and task.metadata.main_score == own.metadata.main_score
        assert task.metadata.prompt == own.metadata.prompt and task.eval_splits == ["test"]
        settings = next(names for kind, names in SCORING_SETTINGS.items() if isinstance(task, kind))
        assert {s: getattr(task, s) for s in settings} == {s: getattr(own, s) for s in settings}
    (emotion,) = local_tasks(data_dir, ["EmotionClassification"], limit=3)
    emotion.load_data()
    assert emotion.samples_per_label == 16 and emotion.dataset["test"]["label"] == [0, 0, 0]  # sadness: mteb's id 0
    (summeval,) = local_tasks(data_dir, ["SummEval"], limit=2)
    assert (summeval.min_score, summeval.max_score, summeval.evaluator.__name__) == (0, 5, "DeprecatedSummarizationEvaluator")


def test_paper_figures_stand_only_beside_copies_of_mteb_data(data_dir):
    tasks = local_tasks(data_dir, ["AmazonCounterfactualClassification", "EmotionClassification",
                                   "TweetSentimentExtractionClassification", "TwitterURLCorpus"])
    scores = {"a": {t.metadata.name: 0.5 for t in tasks}, "b": {t.metadata.name: 0.6 for t in tasks}}
    summary = summarize(scores, ["a", "b"], tasks)
    assert "A task with a note is a local copy that differs from mteb's version" in summary
    assert _row(summary, "AmazonCounterfactualClassification-local")[5:8] == ["70.83", "71.71", ""]
    tweet = _row(summary, "TweetSentimentExtractionClassification-local")
    assert tweet[5:7] == ["-", "-"] and tweet[7].startswith("differs from mteb: train is 1 row short")
    assert _row(summary, "TwitterURLCorpus-local")[5:7] == ["-", "-"]
    assert _row(summary, "**Average (3)**")[5:7] == ["-", "-"]  # not every task comparable: no paper average here
    comparable = _row(summary, "**Average of the 2 comparable with the paper**")
    assert comparable[2:7] == ["50.00", "60.00", "+10.00", f"{(70.83 + 48.35) / 2:.2f}", f"{(71.71 + 51.05) / 2:.2f}"]
    assert "**Average of the" not in summary.split("## PairClassification")[1]  # nothing comparable there


def test_reranking_fixture_end_to_end(tiny_llama, tmp_path):
    model = st_tp.build(tiny_llama, tp_end=2, output_layer=3, device="cpu")
    model.model_card_data.model_name = "tiny"
    (task,) = local_tasks(RERANKING_FIXTURE)
    run = run_mteb([model], [task], tmp_path / "out", batch_size=8, verbose=False)
    assert not run.failures
    (result_file,) = (tmp_path / "out").rglob("DupQuestionsFixture-local.json")
    result = json.loads(result_file.read_text())["scores"]["test"][0]
    assert result["main_score"] == result["map_at_1000"] == pytest.approx(run.scores["tiny"]["DupQuestionsFixture-local"])
    assert 0 < result["main_score"] <= 1
    ranked = json.loads((run.predictions["tiny"] / "DupQuestionsFixture-local_predictions.json").read_text())
    # mteb's conversion of the classic format: the query without a negative is dropped, each query ranks its own
    # candidates, positives first in id order
    lines = [json.loads(line) for line in (RERANKING_FIXTURE / "mteb" / "DupQuestionsFixture" / "test.jsonl").open()]
    assert sorted(len(docs) for docs in ranked["default"]["test"].values()) == sorted(
        len(r["positive"]) + len(r["negative"]) for r in lines if r["negative"])

    # named after mteb's AskUbuntuDupQuestions, the set 'reranking' takes it, with mteb's metadata and a note
    shutil.copytree(RERANKING_FIXTURE / "mteb" / "DupQuestionsFixture", tmp_path / "data" / "mteb" / "AskUbuntuDupQuestions")
    selection = task_selection("reranking", tmp_path / "data", limit=2)
    (named,) = selection.tasks
    assert named.metadata.name == "AskUbuntuDupQuestions-local" and not selection.notes
    assert named.metadata.prompt == mteb.get_task("AskUbuntuDupQuestions").metadata.prompt and len(named.rows) == 2
    summary = summarize({"a": {named.metadata.name: 0.5}}, ["a"], [named])
    assert "57.02" not in summary and "differs from mteb: not a copy st_tp knows" in summary


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


BAD_INPUTS = {
    "tsv-fields": ("mteb/EmotionClassification/test.tsv", "label\ttext\njoy\tfine\nsadness\tnot\tfine\n",
                   "{path} line 3: 3 tab-separated fields, not 2; expected a TSV with the header line 'label<TAB>text'."),
    "tsv-empty-label": ("mteb/TwentyNewsgroupsClustering/test.tsv", "label\ttext\n0\tRe: a subject\n \tno label\n",
                        "{path} line 3: empty label; expected a TSV with the header line 'label<TAB>text', every "
                        "label filled."),
    "tsv-pair-label": ("mteb/TwitterURLCorpus/test.tsv", "label\tsentence1\tsentence2\n2\ta\tb\n",
                       "{path} line 2: label '2' is not one of 0, 1; expected a TSV with the header line "
                       "'label<TAB>sentence1<TAB>sentence2'."),
    "tsv-sts-score": ("stsb.test.tsv", "score\tsentence1\tsentence2\nfive\ta\tb\n",
                      "{path} line 2: score 'five' is not a number; expected a TSV with the header line "
                      "'score<TAB>sentence1<TAB>sentence2'."),
    "jsonl-not-json": ("mteb/SummEval/test.jsonl",
                       '{"text": "t", "human_summaries": ["h"], "machine_summaries": ["m"], "relevance": [3]}\n{"text": \n',
                       "{path} line 2: not JSON (Expecting value, column 10); expected one JSON object a line with "
                       "text (a string), human_summaries (a list of strings), machine_summaries (a list of strings), "
                       "relevance (a list of numbers)."),
    "jsonl-key": ("mteb/DupQuestions/test.jsonl",
                  '{"query": "q", "positive": ["p"], "negative": ["n"]}\n{"query": "q", "positive": ["p"]}\n',
                  "{path} line 2: no key 'negative'; expected one JSON object a line with query (a string), positive "
                  "(a list of strings), negative (a list of strings)."),
    "jsonl-scores": ("mteb/SummEval/test.jsonl",
                     '{"text": "t", "human_summaries": ["h"], "machine_summaries": ["m", "n"], "relevance": [3]}\n',
                     "{path} line 1: 1 relevance scores for 2 machine_summaries (one score per machine summary); "
                     "expected one JSON object a line with text (a string), human_summaries (a list of strings), "
                     "machine_summaries (a list of strings), relevance (a list of numbers)."),
    "tsv-label-of-mteb": ("mteb/EmotionClassification/test.tsv", "label\ttext\njoy\tfine\nhappy\tfine\n",
                          "{path} line 3: label 'happy' is not one of sadness, joy, love, anger, fear, surprise; "
                          "expected a TSV with the header line 'label<TAB>text'."),
    "tsv-no-rows": ("mteb/TwitterURLCorpus/test.tsv", "label\tsentence1\tsentence2\n\n",
                    "{path}: no rows after the header line; expected a TSV with the header line "
                    "'label<TAB>sentence1<TAB>sentence2'."),
    "missing-train": ("mteb/EmotionClassification/test.tsv", "label\ttext\njoy\tfine\n",
                      "{folder}/train.tsv: no such file; EmotionClassification is a classification task, and mteb "
                      "trains on train.tsv beside test.tsv (label<TAB>text)."),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_a_bad_file_is_one_line_naming_file_line_and_format(case, tmp_path):
    where, text, message = BAD_INPUTS[case]
    path = _write(tmp_path / where, text)
    with pytest.raises(ValueError) as error:
        find_local_tasks(tmp_path)
    assert str(error.value) == message.format(path=path, folder=path.parent)


def test_a_bad_file_ends_the_cli_in_one_line(tmp_path, capsys):
    path = _write(tmp_path / "mteb" / "SummEval" / "test.jsonl", '["not", "an", "object"]\n')
    with pytest.raises(SystemExit):
        main(["mteb", "--tasks", "summarization", "--local-data", str(tmp_path), "--list"])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (f"st-tp: error: {path} line 1: a JSON list, not an object; expected one JSON object a line with "
                    "query (a string), positive (a list of strings), negative (a list of strings) (reranking), or one "
                    "JSON object a line with text (a string), human_summaries (a list of strings), machine_summaries "
                    "(a list of strings), relevance (a list of numbers) (summarization).")


def test_cached_tasks_write_no_predictions_and_a_slice_is_never_served_for_another(tiny_llama, tmp_path, data_dir):
    model = st_tp.build(tiny_llama, tp_end=2, output_layer=3, device="cpu")
    model.model_card_data.model_name = "tiny"
    out = tmp_path / "out"

    def run(limit, folder=out):
        return run_mteb([model], local_tasks(data_dir, ["STSBenchmark"], limit=limit), folder, batch_size=8, verbose=False)

    first = run(20)
    saved = first.predictions["tiny"] / "STSBenchmark-local_predictions.json"
    stamp = saved.stat().st_mtime_ns
    again = run(20)  # every task cached: nothing runs, nothing is written, and the file on disk is this run's
    assert saved.stat().st_mtime_ns == stamp and not again.no_predictions
    assert again.scores["tiny"] == pytest.approx(first.scores["tiny"], abs=1e-5)  # mteb stores 5 decimals
    saved.unlink()
    gone = run(20)
    assert gone.no_predictions == [("tiny", "STSBenchmark-local")] and not saved.exists()
    assert "## Predictions not written" in gone.summary_path.read_text()

    larger = run(40)  # another slice of the same file: evaluated, not served the 20-row score from the cache
    assert larger.scores["tiny"] == pytest.approx(run(40, tmp_path / "fresh").scores["tiny"], abs=1e-9)
    assert larger.scores["tiny"] != pytest.approx(first.scores["tiny"], abs=1e-4)
    assert len(json.loads(saved.read_text())["default"]["test"]["cosine_scores"]) == 40
