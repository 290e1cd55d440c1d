"""A saved TP folder works outside st_tp (issue 34): it carries its runtime and loads with only sentence-transformers
and transformers, it refuses the wrong model class, and a plain `mteb.evaluate` files each folder's results apart."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from importlib.metadata import metadata
from pathlib import Path

import mteb
import numpy as np
import pytest
import tomllib
from sentence_transformers import CrossEncoder, SentenceTransformer, SparseEncoder

import st_tp
from st_tp.evaluation import local_tasks
from st_tp.runtime.identity import folder_name, folder_revision
from st_tp.runtime.shipping import ENTRY_CLASS, runtime_files
from tests.conftest import ROOT

SENTENCES = ["A man is playing a guitar.", "Is it going to rain tomorrow?", "Hi", 'She said "hello".']
TOOLING = {path.name for path in (ROOT / "st_tp").glob("*.py")} - {"__init__.py"}  # cli, builder, corpus, sweep, ...


@pytest.fixture(scope="module")
def folders(tiny_llama, tmp_path_factory) -> dict[str, Path]:
    """A TP and a vanilla folder of the tiny Llama, saved once for the module."""
    root = tmp_path_factory.mktemp("portable")
    built = {"tp-model": dict(tp_start=1, tp_end=3, output_layer=3), "vanilla-model": dict(tp=False, output_layer=-1)}
    for name, settings in built.items():
        st_tp.build(tiny_llama, device="cpu", dtype="float32", **settings).save(str(root / name))
    return {name: root / name for name in built}


def test_the_folder_ships_the_runtime_and_nothing_else(folders):
    folder = folders["tp-model"]
    assert json.loads((folder / "modules.json").read_text())[0]["type"] == ENTRY_CLASS == "token_prepending.TokenPrepending"
    shipped = {path.name for path in folder.glob("*.py")}
    runtime = {path.name for path in (ROOT / "st_tp" / "runtime").glob("*.py")} - {"__init__.py"}
    # every runtime module is reachable from the entry file by transformers' rule (relative imports), so none is left
    # behind; and nothing of the tooling travels
    assert shipped == runtime == {path.name for path in runtime_files()}
    assert not shipped & (TOOLING - runtime) and not any((folder / name).exists() for name in TOOLING - runtime)
    for name in shipped:
        assert (folder / name).read_text() == (ROOT / "st_tp" / "runtime" / name).read_text()
    # HF's own file names stay untouched: config.json is the decoder's config, plus the CrossEncoder refusal
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {"AutoModelForSequenceClassification": "token_prepending.NotACrossEncoder"}


def test_installed_st_tp_wins_and_a_loaded_folder_has_a_name_and_revision(folders):
    folder = folders["tp-model"]
    model = SentenceTransformer(str(folder), trust_remote_code=True, device="cpu")
    assert type(model[0]).__module__ == "token_prepending" and isinstance(model[0], st_tp.TokenPrepending)
    card = model.model_card_data
    assert card.model_name == "st-tp/tp-model"
    # the revision `st-tp mteb` keys the same folder by (settings, weights, and the dtype it runs in)
    assert card.base_model_revision == folder_revision(folder, "cpu") and len(card.base_model_revision) == 16
    vanilla = SentenceTransformer(str(folders["vanilla-model"]), trust_remote_code=True, device="cpu")
    assert vanilla.model_card_data.base_model_revision != card.base_model_revision


def test_folder_name_of_a_hub_snapshot_is_its_repository(tmp_path):
    snapshot = tmp_path / "models--someone--tp-llama" / "snapshots" / ("0" * 40)
    assert folder_name(snapshot) == "someone/tp-llama"
    assert folder_name(tmp_path / "runs" / "smollm2-tp") == "st-tp/smollm2-tp"


def test_plain_mteb_evaluate_keeps_two_folders_apart_in_one_cache(folders, tmp_path):
    """Issue 34 item 1: before, both folders were `no_model_name/available` at `no_revision_available`, and the second
    one evaluated was handed the first one's score from the cache."""
    task = _sts_task(tmp_path / "data")

    def score(model: SentenceTransformer, cache) -> float:
        result = mteb.evaluate(model, task, cache=cache, show_progress_bar=False, encode_kwargs={"batch_size": 40})
        return result.task_results[0].get_score()

    models = {name: SentenceTransformer(str(folder), trust_remote_code=True, device="cpu") for name, folder in folders.items()}
    alone = {name: score(model, None) for name, model in models.items()}
    assert abs(alone["tp-model"] - alone["vanilla-model"]) > 1e-3, "the test needs two models that score differently"
    cache = mteb.ResultCache(cache_path=tmp_path / "cache")
    shared = {name: score(model, cache) for name, model in models.items()}
    assert shared == pytest.approx(alone, abs=1e-5)  # mteb stores scores rounded to 5 decimals
    stored = {path.parent.parent.name for path in (tmp_path / "cache").rglob("pairs-local.json")}
    assert stored == {"st-tp__tp-model", "st-tp__vanilla-model"}


def _sts_task(folder: Path):
    """An STS task of 40 made-up pairs with random gold scores (a local mteb task, no hub): enough pairs that two
    random tiny models get different Spearman scores."""
    rng = np.random.default_rng(0)
    words = "man woman child dog cat plays eats reads guitar piano apple book park river quickly slowly".split()
    rows = ["score\tsentence1\tsentence2"]
    for _ in range(40):
        a, b = (" ".join(rng.choice(words, size=int(rng.integers(3, 8)))) for _ in range(2))
        rows.append(f"{rng.uniform(0, 5):.2f}\t{a}\t{b}")
    folder.mkdir(parents=True)
    (folder / "pairs.test.tsv").write_text("\n".join(rows) + "\n")
    [task] = local_tasks(folder)
    return task


NO_ST_TP = """
import importlib.abc, json, sys
import numpy as np

class NoStTp(importlib.abc.MetaPathFinder):  # st_tp is installed in this venv: make it unimportable
    def find_spec(self, name, path=None, target=None):
        if name in ("st_tp", "token_prepending") or name.startswith("st_tp."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NoStTp())
try:
    import st_tp  # noqa: F401
    sys.exit("st_tp is still importable")
except ModuleNotFoundError:
    pass
from sentence_transformers import SentenceTransformer

folder, out = sys.argv[1], sys.argv[2]
try:
    SentenceTransformer(folder, device="cpu")
    untrusted = "loaded"
except ValueError as error:
    untrusted = str(error)
model = SentenceTransformer(folder, device="cpu", trust_remote_code=True)
np.save(out, model.encode(json.loads(sys.argv[3])))
json.dump({"untrusted": untrusted, "class": type(model[0]).__module__, "name": model.model_card_data.model_name,
           "revision": model.model_card_data.base_model_revision,
           "st_tp_loaded": sorted(m for m in sys.modules if m.startswith(("st_tp", "token_prepending")))},
          open(out + ".json", "w"))
"""


def test_a_folder_loads_and_embeds_the_same_where_st_tp_cannot_be_imported(folders, tmp_path):
    folder = folders["tp-model"]
    installed = SentenceTransformer(str(folder), trust_remote_code=True, device="cpu")
    expected = installed.encode(SENTENCES)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "hf-modules")  # transformers' copy of the folder's code, kept apart
    out = tmp_path / "embeddings.npy"
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(NO_ST_TP), str(folder), str(out), json.dumps(SENTENCES)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(Path(f"{out}.json").read_text())
    assert report["st_tp_loaded"] == []
    assert report["class"].startswith("transformers_modules.") and report["class"].endswith(".token_prepending")
    assert "trust_remote_code=True" in report["untrusted"] and "token_prepending.TokenPrepending" in report["untrusted"]
    got = np.load(out)
    cosines = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosines.min() >= 0.99999, cosines
    assert (report["name"], report["revision"]) == ("st-tp/tp-model", installed.model_card_data.base_model_revision)


def test_other_model_classes_refuse_the_folder_in_one_line(folders):
    folder = str(folders["tp-model"])
    wanted = "is a Token Prepending (st_tp) sentence embedding model, not a {}: load it with SentenceTransformer"
    with pytest.raises(ValueError, match=wanted.format("SparseEncoder").replace("(", r"\(").replace(")", r"\)")):
        SparseEncoder(folder, trust_remote_code=True, device="cpu")
    with pytest.raises(ValueError, match=wanted.format("CrossEncoder").replace("(", r"\(").replace(")", r"\)")):
        CrossEncoder(folder, trust_remote_code=True, device="cpu")


def test_a_folder_saved_before_the_runtime_shipped_loads_and_saves_again_portable(folders, tmp_path):
    """An older folder names `st_tp.module.TokenPrepending` and carries no code: with st_tp installed it loads (and is
    named for MTEB) as before, and saving it again writes a folder that loads without st_tp."""
    old = tmp_path / "old-folder"
    shutil.copytree(folders["tp-model"], old)
    for path in old.glob("*.py"):
        path.unlink()
    modules = json.loads((old / "modules.json").read_text())
    modules[0]["type"] = "st_tp.module.TokenPrepending"
    (old / "modules.json").write_text(json.dumps(modules))
    config = json.loads((old / "config.json").read_text())
    del config["auto_map"]
    (old / "config.json").write_text(json.dumps(config))
    model = SentenceTransformer(str(old), trust_remote_code=True, device="cpu")
    assert model.model_card_data.model_name == "st-tp/old-folder" and model.model_card_data.base_model_revision
    new = SentenceTransformer(str(folders["tp-model"]), trust_remote_code=True, device="cpu")
    np.testing.assert_array_equal(model.encode(SENTENCES), new.encode(SENTENCES))
    model.save(str(tmp_path / "saved-again"))
    assert json.loads((tmp_path / "saved-again" / "modules.json").read_text())[0]["type"] == ENTRY_CLASS
    assert {p.name for p in (tmp_path / "saved-again").glob("*.py")} == {p.name for p in runtime_files()}


def test_package_metadata_names_a_licence_and_a_project_url():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "MIT" and project["project"]["urls"]
    assert "token_prepending" in project["tool"]["setuptools"]["py-modules"]
    installed = metadata("st_tp")  # what pip built from pyproject (`pip install -e .`)
    assert installed["License-Expression"] == "MIT"
    assert [url.split(", ")[0] for url in installed.get_all("Project-URL")] == list(project["project"]["urls"])
    assert importlib.util.find_spec("token_prepending").origin == str(ROOT / "token_prepending.py")
