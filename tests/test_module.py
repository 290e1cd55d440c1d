"""The ST module: save/load through modules.json, encode options, configuration errors, edge inputs."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

import st_tp

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
    assert saved[0]["type"] == "st_tp.runtime.module.TokenPrepending"
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
    assert len(model[0].auto_model.layers) == 2
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
    assert loaded[0].tp_config.prefix_cache is True and loaded[0].total_layers == 4
    expected = np.array(json.loads((fixtures / "saved-dd067b2-embeddings.json").read_text()), dtype=np.float32)
    np.testing.assert_allclose(loaded.encode(["A man is playing a guitar.", "Hi"]), expected, atol=1e-5)
