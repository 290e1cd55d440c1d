"""The ST module: save/load through modules.json, encode options, configuration errors, edge inputs."""

import ast
import hashlib
import inspect
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from sentence_transformers import SentenceTransformer

import st_tp
from st_tp.runtime import module as runtime_module
from st_tp.runtime.runner import TPRunner

SENTENCES = ["A man is playing a guitar.", "Is it going to rain tomorrow?", "", "Hi", 'She said "hello".']


@pytest.fixture(scope="module")
def tp_model(tiny_llama):
    return st_tp.build(tiny_llama, tp_start=1, tp_end=3, output_layer=3, device="cpu")


@pytest.mark.parametrize("settings", [dict(tp=True, tp_start=1, tp_end=3, output_layer=3, pst_init="normal:7"),
                                      dict(tp=False, output_layer=-1, prompt_method="metaeol")])
def test_round_trip_is_bit_identical(tiny_llama, tmp_path, settings):
    model = st_tp.build(tiny_llama, device="cpu", **settings)
    before = model.encode(SENTENCES, batch_size=2)
    model.save(str(tmp_path))
    saved = json.loads((tmp_path / "modules.json").read_text())
    assert saved[0]["type"] == "token_prepending.TokenPrepending"  # shipped beside the weights (tests/test_portable.py)
    assert (tmp_path / "pst_embedding.safetensors").exists() and (tmp_path / "st_tp_config.json").exists()
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.pt")), "weights must be safetensors only"
    with pytest.raises(ValueError, match="trust_remote_code"):
        SentenceTransformer(str(tmp_path))
    loaded = SentenceTransformer(str(tmp_path), trust_remote_code=True, device="cpu")
    after = loaded.encode(SENTENCES, batch_size=2)
    assert np.array_equal(before, after)
    assert loaded[0].tp_config == model[0].tp_config.replace(device=None)  # the device is not saved


def test_saved_model_holds_only_needed_layers(tiny_llama, tmp_path):
    model = st_tp.build(tiny_llama, tp_start=1, tp_end=2, output_layer=2, device="cpu")
    assert len(model[0].runner.model.layers) == 2
    model.save(str(tmp_path))
    assert json.loads((tmp_path / "config.json").read_text())["num_hidden_layers"] == 2
    assert json.loads((tmp_path / "st_tp_config.json").read_text())["num_hidden_layers_base"] == 4


def test_encode_options(tp_model):
    plain = tp_model.encode(SENTENCES, show_progress_bar=True)
    assert plain.shape == (5, 64) and plain.dtype == np.float32
    normed = tp_model.encode(SENTENCES, normalize_embeddings=True)
    np.testing.assert_allclose(np.linalg.norm(normed, axis=1), 1.0, atol=1e-5)
    tensor = tp_model.encode(SENTENCES, convert_to_tensor=True)
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (5, 64)
    single = tp_model.encode(SENTENCES[0])
    np.testing.assert_allclose(single, plain[0], atol=1e-5)
    assert tp_model.get_embedding_dimension() == 64


def test_empty_and_very_long_inputs(tp_model):
    tp_model.max_seq_length = 64
    texts = ["", "   ", "?", '"', "word " * 20000, "token" * 5000]
    embeddings = tp_model.encode(texts, batch_size=3)
    assert np.isfinite(embeddings).all()
    tp_model.max_seq_length = 512


def test_custom_template_and_vanilla_twin(tiny_llama):
    template = "Sentence <PST> '{text}' in a word:"
    tp = st_tp.build(tiny_llama, template=template, prompt_method="custom", tp_end=3, output_layer=3, device="cpu")
    vanilla = st_tp.build(tiny_llama, template=template, prompt_method="custom", tp=False, output_layer=3, device="cpu")
    assert tp[0].encoders[0].fill("x") == "Sentence <PST> 'x.' in a word:"
    assert vanilla[0].encoders[0].fill("x") == "Sentence 'x.' in a word:"
    assert not np.allclose(tp.encode("A cat."), vanilla.encode("A cat."))


def test_a_folder_saved_by_the_previous_release_loads_and_embeds_the_same(tiny_llama, tmp_path):
    """tests/fixtures/saved-dd067b2-*: the st_tp_config.json that release dd067b2 wrote for this model (prefix_cache
    "auto", the module keys of its own layout), and the float32 embeddings it computed. The weights and tokenizer are the
    tiny model's, as that release saved them."""
    fixtures = Path(__file__).parent / "fixtures"
    st_tp.build(tiny_llama, tp_end=3, output_layer=3, pst_init="normal:7", dtype="float32", device="cpu").save(str(tmp_path))
    (tmp_path / "st_tp_config.json").write_text((fixtures / "saved-dd067b2-st_tp_config.json").read_text())
    loaded = SentenceTransformer(str(tmp_path), trust_remote_code=True, device="cpu", model_kwargs={"dtype": torch.float32})
    assert loaded[0].tp_config.prefix_cache is True and loaded[0].runner.total_layers == 4
    expected = np.array(json.loads((fixtures / "saved-dd067b2-embeddings.json").read_text()), dtype=np.float32)
    np.testing.assert_allclose(loaded.encode(["A man is playing a guitar.", "Hi"]), expected, atol=1e-5)


def test_a_folder_saved_by_main_1adc571_loads_and_embeds_the_same(tiny_llama, tmp_path):
    """tests/fixtures/saved-1adc571/: a KE + TP model (tp_end 3, exit 3 of 4, pst_init normal:7, float32) that main
    1adc571 built from assets/tiny-llama-install-check and saved, with the embeddings that code computed
    (saved-1adc571-expected.json). Its modules.json names the class where it lived then, st_tp.module.TokenPrepending.
    Left out to keep the fixture small and put back here: tokenizer.json (identical to the asset's) and
    model.safetensors (the asset's tensors of layers 0..2, checked against the saved file's per-tensor sha256)."""
    fixtures = Path(__file__).parent / "fixtures"
    folder = tmp_path / "saved"
    shutil.copytree(fixtures / "saved-1adc571", folder)
    shutil.copy(Path(tiny_llama) / "tokenizer.json", folder)
    expected = json.loads((fixtures / "saved-1adc571-expected.json").read_text())
    kept = json.loads((folder / "config.json").read_text())["num_hidden_layers"]
    weights = {name: tensor for name, tensor in load_file(str(Path(tiny_llama) / "model.safetensors")).items()
               if not name.startswith("layers.") or int(name.split(".")[1]) < kept}
    digests = {name: hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest() for name, tensor in weights.items()}
    assert digests == expected["model_safetensors_sha256"], "the rebuilt weights must be the ones 1adc571 saved"
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    assert json.loads((folder / "modules.json").read_text())[0]["type"] == "st_tp.module.TokenPrepending"

    loaded = SentenceTransformer(str(folder), trust_remote_code=True, device="cpu")
    got = loaded.encode(expected["sentences"], batch_size=2)
    want = np.array(expected["embeddings"], dtype=np.float32)
    cosines = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cosines.min() >= 0.99999, cosines
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_the_module_runs_tp_through_its_runner(tp_model):
    """TokenPrepending keeps the ST contract; the pass and what it needs (decoder, TP layers, <PST>, prefix cache)
    live in one TPRunner, which takes features or template batches alike."""
    module = tp_model[0]
    assert isinstance(module.runner, TPRunner)
    for internal in ("auto_model", "tp_layers", "pst_embedding", "total_layers", "exit_layer", "last_token_states",
                     "template_batches", "prefix_caches"):
        assert not hasattr(module, internal), f"TokenPrepending.{internal} belongs to the runner"
    runner, features = module.runner, module.preprocess(SENTENCES)
    with torch.inference_mode():
        by_features = runner.last_token_states(features, [runner.exit_layer])[runner.exit_layer]
        by_batches = runner.last_token_states(runner.template_batches(features), [runner.exit_layer])[runner.exit_layer]
        embedded = module(dict(features))["sentence_embedding"]
    torch.testing.assert_close(by_features, by_batches, rtol=0, atol=0)
    torch.testing.assert_close(embedded, by_features, rtol=0, atol=0)


def test_token_prepending_class_stays_small():
    """The ST contract and little else (the pass is the runner's, loading and the dtype rule loading's, template
    choice the prompts')."""
    tree = ast.parse(inspect.getsource(runtime_module))
    (cls,) = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "TokenPrepending"]
    assert cls.end_lineno - cls.lineno + 1 <= 200
