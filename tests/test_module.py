"""The ST module: save/load through modules.json, encode options, configuration errors, edge inputs."""

import json

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

import st_tp
from st_tp.config import TPConfig, load_preset

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
    assert saved[0]["type"] == "st_tp.module.TokenPrepending"
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


def test_pst_init_options_are_deterministic(tiny_llama):
    vectors = {}
    for init in ["zeros", "ones", "normal", "normal:3", "uniform:5", "token:the"]:
        first = st_tp.build(tiny_llama, pst_init=init, tp_end=3, output_layer=3, device="cpu")[0].pst_embedding
        second = st_tp.build(tiny_llama, pst_init=init, tp_end=3, output_layer=3, device="cpu")[0].pst_embedding
        assert torch.equal(first, second), init
        vectors[init] = first
    assert not torch.equal(vectors["normal"], vectors["normal:3"])
    assert vectors["uniform:5"].min() >= 0 and vectors["uniform:5"].max() < 1
    with pytest.raises(ValueError, match="exactly one token"):
        st_tp.build(tiny_llama, pst_init="token:the quick brown fox", device="cpu")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(tp_start=3, tp_end=3), "tp_end .* must be greater than tp_start"),
        (dict(output_layer=9), "output_layer=9 is outside the model, which has 4 decoder layers. Allowed: -5..4"),
        (dict(template="no placeholder <PST>"), "has no '\\{text\\}' placeholder"),
        (dict(template='This sentence : "{text}" means'), "tp=True needs a '<PST>' marker"),
        (dict(prompt_method="eol"), "Unknown prompt_method 'eol'. Allowed:"),
        (dict(pst_init="gaussian"), "Unknown pst_init"),
        (dict(dtype="fp8"), "Unknown dtype"),
        (dict(tp_end="7"), "tp_end must be int"),
        (dict(temperature=1.0), "Unknown key\\(s\\) \\['temperature'\\]"),
    ],
)
def test_configuration_errors(tiny_llama, overrides, message):
    with pytest.raises(ValueError, match=message):
        st_tp.build(tiny_llama, device="cpu", **overrides)


def test_custom_template_and_vanilla_twin(tiny_llama):
    template = "Sentence <PST> '{text}' in a word:"
    tp = st_tp.build(tiny_llama, template=template, prompt_method="custom", tp_end=3, output_layer=3, device="cpu")
    vanilla = st_tp.build(tiny_llama, template=template, prompt_method="custom", tp=False, output_layer=3, device="cpu")
    assert tp[0].encoders[0].fill("x") == "Sentence <PST> 'x.' in a word:"
    assert vanilla[0].encoders[0].fill("x") == "Sentence 'x.' in a word:"
    assert not np.allclose(tp.encode("A cat."), vanilla.encode("A cat."))


def test_presets_load(tmp_path):
    from tests.conftest import ROOT

    names = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
    assert len(names) >= 15
    base, config = load_preset(ROOT / "configs" / "llama2-7b-prompteol-tp.yaml")
    assert base == "meta-llama/Llama-2-7b-hf"
    assert (config.prompt_method, config.tp_start, config.tp_end, config.output_layer) == ("prompteol", 1, 7, 27)
    for name in names:
        load_preset(ROOT / "configs" / name)
    bad = tmp_path / "bad.yaml"
    bad.write_text("tp_end: seven\n")
    with pytest.raises(ValueError, match="tp_end must be int"):
        load_preset(bad)
    assert TPConfig().to_dict()["pst_init"] == "zeros"


def test_cli_build_and_encode(tiny_llama, tmp_path):
    from st_tp.cli import main
    from tests.conftest import ROOT

    out = tmp_path / "model"
    main(["build", tiny_llama, "--config", str(ROOT / "configs" / "install-check.yaml"), "--out", str(out)])
    main(["encode", str(out), "--input", str(ROOT / "assets" / "sentences.txt"), "--output", str(tmp_path / "e.npy")])
    embeddings = np.load(tmp_path / "e.npy")
    assert embeddings.shape == (3, 64) and np.isfinite(embeddings).all()
    expected = SentenceTransformer(str(out), trust_remote_code=True, device="cpu").encode(
        (ROOT / "assets" / "sentences.txt").read_text().splitlines()
    )
    np.testing.assert_array_equal(embeddings, expected)
    with pytest.raises(SystemExit):
        main(["build", tiny_llama, "--out", str(out), "--set", "tp_end=0"])
