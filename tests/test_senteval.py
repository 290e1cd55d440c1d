"""SentEval's transfer tasks (the paper's Table 5): st_tp's reimplementation reads, sorts and scores exactly as
SentEval's own code does, on the shared data; `run_senteval` embeds once per model and task, resumes, and writes a
Table-5-shaped summary; the transfer sweep scores each cell as a direct evaluation of that cell would.

The equality with SentEval rests on tests/fixtures/senteval-reference.json: numbers produced by running SentEval's
own code (not st_tp's) on the first lines of each shared file, embedded by a fixed recipe (`recipe_embedding`), with
both classifier settings; and the sha256 of every text and label SentEval's batcher and classifiers receive from the
full shared files.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from st_tp.evaluation.senteval import TASKS, TRANSFER, ClassifierSettings, TaskDataError, prepare, run_senteval
from st_tp.evaluation.senteval.embedding import SentenceEmbedder, official_text
from st_tp.evaluation.senteval.evaluate import parts, score_task
from st_tp.evaluation.senteval.protocol import select_on_dev
from st_tp.evaluation.senteval.table import PAPER_TABLE5
from tests.conftest import ROOT

REFERENCE = json.loads((ROOT / "tests" / "fixtures" / "senteval-reference.json").read_text())
PYTORCH_QUICK = ["CR", "SST2", "TREC", "MRPC"]  # one of each protocol; the other three CV tasks take ~6 s each


@pytest.fixture(scope="session")
def senteval_data(data_dir) -> Path:
    return data_dir / "senteval"


@pytest.fixture(scope="session")
def reference_subset(senteval_data, tmp_path_factory) -> Path:
    """The first lines of each shared file, as the reference run cut them (bytes, line ends kept)."""
    root = tmp_path_factory.mktemp("senteval-subset")
    for rel, n in REFERENCE["subset_lines"].items():
        lines = (senteval_data / rel).read_bytes().splitlines(keepends=True)
        out = root / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(b"".join(lines[: n + 1] if rel.startswith("MRPC") else lines[:n]))
    return root


def recipe_embedding(text: str, dim: int = REFERENCE["embedding"]["dim"]) -> np.ndarray:
    """The fixture's embedding (its `embedding.recipe`): the mean of one seeded random vector per word."""
    words = text.split()
    vector = np.zeros(dim)
    for word in words:
        seed = int.from_bytes(hashlib.sha256(word.encode("utf-8")).digest()[:8], "little")
        vector += np.random.default_rng(seed).standard_normal(dim)
    return (vector / max(1, len(words))).astype(np.float32)


def _settings(kind: str) -> ClassifierSettings:
    params = REFERENCE[kind]["params"]
    extra = {} if kind == "sklearn" else params["classifier"]
    return ClassifierSettings(kind, kfold=params["kfold"], **extra)


# ---- reading ----------------------------------------------------------------------------------------------------
SOURCES_COUNTS = {  # ../shared/data/SOURCES.md, "SentEval transfer tasks"
    "MR": {"all": (10662, 5331)}, "CR": {"all": (3775, 2407)}, "SUBJ": {"all": (10000, 5000)},
    "MPQA": {"all": (10606, 3312)}, "SST2": {"train": 67349, "dev": 872, "test": 1821},
    "TREC": {"train": 5452, "test": 500}, "MRPC": {"train": 4076, "test": 1725},
}


def test_readers_count_what_sources_md_says(senteval_data):
    for name, expected in SOURCES_COUNTS.items():
        raw = TASKS[name].read(senteval_data)
        for split, count in expected.items():
            if isinstance(count, tuple):  # (all, of which label 1: the first file)
                assert (len(raw[split]), sum(raw[split].labels)) == count, name
            else:
                assert len(raw[split]) == count, (name, split)
    trec = TASKS["TREC"].read(senteval_data)["train"]
    assert sorted(set(trec.labels)) == list(range(6)) and trec.examples[0] == ("How did serfdom develop in and then leave Russia ?".split(),)
    mrpc = TASKS["MRPC"].read(senteval_data)["train"]
    assert len(mrpc.examples[0]) == 2 and mrpc.examples[0][0][0] == "Amrozi", "the BOM header line is dropped, not a pair"


@pytest.mark.parametrize("name", TRANSFER)
def test_texts_and_labels_are_what_senteval_hands_its_batcher_and_classifier(senteval_data, name):
    """Encodings, line splitting, token joining, the stable length sort and the labels, on the full files."""
    expected = REFERENCE["reading"][name]
    task = TASKS[name]
    splits = {split: prepare(raw) for split, raw in task.read(senteval_data).items()}
    texts = [text for side in parts(task, splits).values() for text in side]
    labels = ",".join(str(int(v)) for split in splits.values() for v in split.labels)
    assert len(texts) == expected["texts"] and sum(1 for t in texts if not t) == expected["empty_texts"]
    assert hashlib.sha256("\n".join(texts).encode()).hexdigest() == expected["texts_sha256"]
    assert hashlib.sha256(labels.encode()).hexdigest() == expected["labels_sha256"]


# ---- the protocol and classifiers against SentEval's own results ------------------------------------------------------
CASES = [("sklearn", name) for name in TRANSFER] + [
    pytest.param("pytorch", name, marks=[] if name in PYTORCH_QUICK else [pytest.mark.slow]) for name in TRANSFER]


@pytest.mark.parametrize("kind, name", CASES)
def test_scores_equal_senteval_on_the_fixture(reference_subset, kind, name):
    """Exactly SentEval's devacc, acc, ndev, ntest (and MRPC's F1), both classifiers: same folds and seeds, same C or
    weight-decay grid, same rounding, the PyTorch classifier's shuffles, batches and early stopping."""
    task = TASKS[name]
    splits = {split: prepare(raw) for split, raw in task.read(reference_subset).items()}
    embeddings = {part: np.vstack([recipe_embedding(t) for t in texts]) for part, texts in parts(task, splits).items()}
    result = score_task(task, splits, embeddings, _settings(kind))
    got = {"devacc": result.devacc, "acc": result.acc, "ndev": result.ndev, "ntest": result.ntest}
    if result.f1 is not None:
        got["f1"] = result.f1
    assert got == REFERENCE[kind]["results"][name]
    assert len(result.predictions) == len(result.gold) == result.ntest


def test_the_pytorch_classifier_leaves_the_callers_rng_alone(reference_subset):
    import torch

    task = TASKS["SST2"]
    splits = {split: prepare(raw) for split, raw in task.read(reference_subset).items()}
    embeddings = {part: np.vstack([recipe_embedding(t) for t in texts]) for part, texts in parts(task, splits).items()}
    expected_numpy = np.random.RandomState(5).randint(1 << 30)
    expected_torch = torch.rand(3, generator=torch.Generator().manual_seed(5))
    np.random.seed(5)
    torch.manual_seed(5)
    score_task(task, splits, embeddings, _settings("pytorch"))
    assert np.random.randint(1 << 30) == expected_numpy and torch.equal(torch.rand(3), expected_torch)


# ---- the batcher's text rules ---------------------------------------------------------------------------------------
def test_text_rules_are_the_official_batchers(tiny_llama):
    """st_tp's preprocessing equals the official batcher's on every text but the empty one (CR and MPQA hold 7), which
    the batcher leaves empty: the embedder applies the batcher's rules and restores the model's own afterwards."""
    import st_tp
    from st_tp.runtime.prompts import preprocess_sentence

    for text in ['a b', 'is it ?', 'say "hi"', "x .", "it's", "?"]:
        assert official_text(text) == preprocess_sentence(text)
    assert official_text("") == "" != preprocess_sentence("")
    model = st_tp.build(tiny_llama, "install-check", dtype="float32", device="cpu")
    embedder = SentenceEmbedder(model, show_progress_bar=False)
    got = embedder.embed({"x": ["", "a man plays ?"]}, desc="x")["x"]
    plain = st_tp.build(tiny_llama, "install-check", dtype="float32", device="cpu", preprocess=False)
    np.testing.assert_allclose(got, plain.encode(["", "a man plays ."]), rtol=1e-6, atol=1e-6)
    assert model[0].tp_config.preprocess and not np.allclose(got[0], model.encode([""])[0], atol=1e-4)


# ---- run_senteval end to end ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_folder(tiny_llama, tmp_path_factory) -> Path:
    import st_tp

    folder = tmp_path_factory.mktemp("senteval-model") / "tiny-tp"
    st_tp.build(tiny_llama, "install-check", dtype="float32", device="cpu").save(str(folder))
    return folder


@pytest.fixture(scope="module")
def full_run(tiny_folder, senteval_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("senteval-run")
    run = run_senteval([str(tiny_folder)], "transfer", senteval_data, out, sample=60, device="cpu", show_progress_bar=False)
    return run, out


def test_run_writes_a_table5_shaped_summary_and_predictions(full_run):
    run, out = full_run
    assert run.embedded == run.classified == [("tiny-tp", name) for name in TRANSFER] and not run.failures
    table = [line for line in (out / "summary.md").read_text().splitlines() if line.startswith("|")]
    assert table[0] == "| model | MR | CR | SUBJ | MPQA | SST2 | TREC | MRPC | Avg. |"
    row = table[2].split(" | ")
    scores = [run.results["tiny-tp"][name].acc for name in TRANSFER]
    assert row[0] == "| tiny-tp" and row[1:8] == [f"{s:.2f}" for s in scores] and row[8] == f"{np.mean(scores):.2f} |"
    for line, (name, quoted) in zip(table[3:], PAPER_TABLE5.items(), strict=True):  # the paper's rows, verbatim
        assert line == f"| {name} (paper) | " + " | ".join(quoted.split()) + " |"
    text = (out / "summary.md").read_text()
    assert "a sample of at most 60 examples per split" in text and "Llama-2-7B" in text and "full sets" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sample"] == 60 and summary["models"]["tiny-tp"]["tasks"]["MRPC"]["f1"] is not None
    for name in TRANSFER:
        saved = json.loads((out / "predictions" / f"tiny-tp-{run.summary.revisions['tiny-tp']}" / f"{name}.sample60.sklearn.json").read_text())
        result = saved["result"]
        assert len(result["predictions"]) == len(result["gold"]) == len(result["source_rows"]) == result["ntest"]
        accuracy = 100 * np.mean(np.array(result["predictions"]) == np.array(result["gold"]))
        # test-set tasks: acc is the predictions' accuracy; CV tasks: the mean of ten equal folds' (each rounded)
        assert accuracy == pytest.approx(result["acc"], abs=0.01 if saved["scored"] == "test" else 0.06), name


def test_a_second_run_embeds_and_classifies_nothing(full_run, tiny_folder, senteval_data):
    run, out = full_run
    again = run_senteval([str(tiny_folder)], "transfer", senteval_data, out, sample=60, device="cpu", show_progress_bar=False)
    assert again.embedded == again.classified == []
    assert {n: r.acc for n, r in again.results["tiny-tp"].items()} == {n: r.acc for n, r in run.results["tiny-tp"].items()}


def test_an_interrupted_run_resumes_at_the_next_task(tiny_folder, senteval_data, tmp_path, monkeypatch):
    """Stopped while embedding its second task, a run keeps the first; the next run embeds from the second on. A
    changed classifier reuses the cached embeddings."""
    real, calls = SentenceEmbedder.embed, []

    def stop_at_second(self, parts_, desc):
        calls.append(desc)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, parts_, desc)

    tasks, common = "SST2,TREC,MRPC", dict(sample=60, device="cpu", show_progress_bar=False)
    monkeypatch.setattr(SentenceEmbedder, "embed", stop_at_second)
    with pytest.raises(KeyboardInterrupt):
        run_senteval([str(tiny_folder)], tasks, senteval_data, tmp_path, **common)
    monkeypatch.setattr(SentenceEmbedder, "embed", real)
    resumed = run_senteval([str(tiny_folder)], tasks, senteval_data, tmp_path, **common)
    assert resumed.embedded == [("tiny-tp", "TREC"), ("tiny-tp", "MRPC")]
    assert resumed.classified == [("tiny-tp", "TREC"), ("tiny-tp", "MRPC")]  # SST2's result was written before the stop
    other = run_senteval([str(tiny_folder)], "SST2", senteval_data, tmp_path, classifier="pytorch", **common)
    assert other.embedded == [] and other.classified == [("tiny-tp", "SST2")]


# ---- bad input ------------------------------------------------------------------------------------------------------------
def _copy(senteval_data: Path, tmp: Path, folder: str) -> Path:
    shutil.copytree(senteval_data / folder, tmp / folder)
    return tmp / folder


@pytest.mark.parametrize("folder, file, line, bad, expected", [
    ("SST", "binary/sentiment-dev", 3, b"no tab here\n", "'sentence<TAB>label' with label 0 or 1"),
    ("SST", "binary/sentiment-dev", 2, b"a fine film\t7\n", "label '7'; expected 'sentence<TAB>label' with label 0 or 1"),
    ("SST", "binary/sentiment-test", 4, b"caf\xe9 au lait\t1\n", "not UTF-8"),
    ("TREC", "TREC_10.label", 5, b"WHAT:x Is this a question ?\n", "class 'WHAT'; expected 'COARSE:fine question' with COARSE one of ABBR"),
    ("MRPC", "msr_paraphrase_test.txt", 6, b"1\t12\t13\tonly one sentence\n", "4 fields; expected 5 tab-separated fields"),
    ("MRPC", "msr_paraphrase_test.txt", 1, b"1\t12\t13\ta\tb\n", "no header line"),
])
def test_a_malformed_file_is_named_with_its_line_and_format(senteval_data, tmp_path, folder, file, line, bad, expected):
    path = _copy(senteval_data, tmp_path, folder) / file
    lines = path.read_bytes().splitlines(keepends=True)
    lines[line - 1] = bad
    path.write_bytes(b"".join(lines))
    name = {"SST": "SST2"}.get(folder, folder)
    with pytest.raises(TaskDataError) as error:
        TASKS[name].read(tmp_path)
    message = str(error.value)
    assert message.startswith(f"{name}: {path} line {line}") and expected in message and "\n" not in message


def test_a_task_without_data_is_named_and_the_others_still_run(tiny_folder, senteval_data, tmp_path, capsys):
    from st_tp.cli import main

    data = tmp_path / "data"
    _copy(senteval_data, data, "TREC")
    args = [str(tiny_folder), "--tasks", "MR,TREC", "--data", str(data), "--sample", "60", "--device", "cpu"]
    with pytest.raises(SystemExit) as exit_info:
        main(["senteval", *args, "--output-folder", str(tmp_path / "out")])
    (message,) = str(exit_info.value.code).splitlines()
    assert message == f"st-tp: error: MR: no folder {data / 'MR'} (expected SentEval's data/downstream layout: " \
                      "MR/rt-polarity.pos and MR/rt-polarity.neg, one sentence a line)"
    printed = capsys.readouterr().out
    assert "| tiny-tp | — | " in printed and "## Failures" in printed
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert list(summary["models"]["tiny-tp"]["tasks"]) == ["TREC"] and list(summary["failures"]) == ["MR"]
    with pytest.raises(ValueError, match=r"unknown SentEval transfer task 'SST-5'\. Did you mean SST2\?"):
        run_senteval([str(tiny_folder)], "SST-5", data, tmp_path / "out")
    with pytest.raises(ValueError, match=r"^data .*nowhere: no such folder"):
        run_senteval([str(tiny_folder)], "MR", tmp_path / "nowhere", tmp_path / "out")


# ---- the transfer sweep -----------------------------------------------------------------------------------------------------
def _direct_dev_accuracy(base, task, data, sample, **settings):
    """A cell evaluated directly: a model built with its settings, model.encode, SentEval's SplitClassifier choice on
    the dev split (SST2's dev set)."""
    import st_tp

    model = st_tp.build(base, dtype="float32", device="cpu", **settings)
    raw = TASKS[task].read(data, ("train", "dev"))
    split = {name: prepare(raw[name], sample) for name in ("train", "dev")}
    X = {name: model.encode(s.sides[0], convert_to_numpy=True) for name, s in split.items()}
    devacc, _ = select_on_dev((X["train"], split["train"].labels), (X["dev"], split["dev"].labels),
                              ClassifierSettings("sklearn"), nclasses=2)
    return devacc / 100


def test_transfer_sweep_cells_equal_a_direct_evaluation(tiny_llama, senteval_data, tmp_path):
    """Every checked cell equals a model built with its settings and scored on SST-2 dev; the test file is absent, so
    the sweep never read it; the best cell, rebuilt, scores its grid value."""
    from st_tp.sweep import VANILLA, sweep_transfer, write_outputs

    data = tmp_path / "data"
    _copy(senteval_data, data, "SST")
    (data / "SST" / "binary" / "sentiment-test").unlink()
    result = sweep_transfer(tiny_llama, "SST2", data, tp_ends=[2, 3], sample=80, dtype="float32", device="cpu",
                            show_progress_bar=False)
    assert result.metric == "accuracy" and list(result.scores) == [VANILLA, 2, 3]
    assert np.isnan(result.scores[2][0]) and all(np.isfinite(result.scores[3][1:]))
    for row, k, settings in [(2, 2, dict(tp_end=2, output_layer=2)), (3, 4, dict(tp_end=3, output_layer=-1)),
                             (VANILLA, 3, dict(tp=False, output_layer=3))]:
        assert result.scores[row][k] == _direct_dev_accuracy(tiny_llama, "SST2", data, 80, **settings), (row, k)
    assert result.best_rebuilt is not None and not result.rebuilt_differs()
    write_outputs(result, tmp_path / "out", tiny_llama, "prompteol", "SST2 dev")
    assert (tmp_path / "out" / "best.yaml").read_text().count("accuracy") == 1


def test_transfer_sweep_on_a_held_out_fold_and_what_it_refuses(tiny_llama, senteval_data, tmp_path):
    """MRPC: a held-out fold of train (the test file absent: never read), bfloat16-held states rounded alike in the
    rebuilt check; CV-only tasks are refused, as a setting chosen on them would be chosen on their test data."""
    from st_tp.sweep import sweep_transfer

    data = tmp_path / "data"
    _copy(senteval_data, data, "MRPC")
    (data / "MRPC" / "msr_paraphrase_test.txt").unlink()
    result = sweep_transfer(tiny_llama, "MRPC", data, tp_ends=[2], layers=[2, -1], sample=100, feature_dtype="bfloat16",
                            dtype="float32", device="cpu", show_progress_bar=False, include_vanilla=False)
    assert [k for k, v in enumerate(result.scores[2]) if np.isfinite(v)] == [2, 4] and not result.rebuilt_differs()
    with pytest.raises(ValueError, match="^MR has no split apart from the data SentEval cross-validates it on"):
        sweep_transfer(tiny_llama, "MR", senteval_data, tp_ends=[2], device="cpu")
