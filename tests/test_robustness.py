"""Hostile inputs, numeric safety, threads, offloading, the ST ecosystem, and loading security."""

import json
import threading

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sentence_transformers import SentenceTransformer, util
from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

import st_tp
from st_tp.data import read_pairs
from tests.tiny_models import make_tiny


@pytest.fixture(scope="module")
def model(tiny_llama):
    # float32: batch independence to 1e-4 is a float32 guarantee (bfloat16 rounds differently per batch shape; its
    # bound is test_bfloat16_batches_agree_in_cosine).
    return st_tp.build(tiny_llama, tp_start=1, tp_end=3, output_layer=3, device="cpu", max_seq_length=96, dtype="float32")


def test_bfloat16_batches_agree_in_cosine(tiny_llama):
    """dtype 'auto' is bfloat16 on CPUs that run it natively: a text alone and in a mixed batch agree in direction."""
    m = st_tp.build(tiny_llama, tp_start=1, tp_end=3, output_layer=3, device="cpu", dtype="bfloat16")
    texts = ["A man is playing a guitar.", "Hi", "x" * 300, "中文句子。", 'She said "hello".']
    batched = m.encode(texts, batch_size=5, normalize_embeddings=True)
    alone = np.stack([m.encode([t], normalize_embeddings=True)[0] for t in texts])
    assert np.isfinite(batched).all() and (batched * alone).sum(1).min() > 0.999


HOSTILE = st.text(
    alphabet=st.characters(codec="utf-8", categories=["L", "M", "N", "P", "S", "Z", "Cc", "Cf", "So"]), max_size=60
) | st.sampled_from(["", " ", "\t\n", '"', "'", "?", '""??', "\x00", "🙂" * 30, "中文句子。", "مرحبا بالعالم", "x" * 20000])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(HOSTILE, min_size=1, max_size=5))
def test_any_text_embeds_finite_deterministic_batch_independent(model, texts):
    together = model.encode(texts, batch_size=8)
    assert np.isfinite(together).all()
    again = model.encode(texts, batch_size=8)
    np.testing.assert_array_equal(together, again)
    alone = np.stack([model.encode([t], batch_size=1)[0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-4, rtol=0)
    mixed = model.encode(texts + ["A completely different, much longer companion sentence for the batch."], batch_size=8)
    np.testing.assert_allclose(mixed[: len(texts)], together, atol=1e-4, rtol=0)


def test_four_threads_get_what_sequential_calls_give(model):
    inputs = [[f"Thread {t} sentence {i} {'word ' * (i % 7)}" for i in range(12)] for t in range(4)]
    expected = [model.encode(batch, batch_size=4) for batch in inputs]
    results, errors = [None] * 4, []

    def work(t):
        try:
            for _ in range(3):
                results[t] = model.encode(inputs[t], batch_size=4)
                np.testing.assert_array_equal(results[t], expected[t])
        except Exception as error:  # noqa: BLE001 - surfaced below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


@pytest.fixture(scope="module")
def overflowing_gemma2(tmp_path_factory, tiny_llama):
    """A tiny Gemma2 scaled so its residual stream exceeds float16's range (65504), Gemma-2's known fp16 failure:
    embedding rows of ~1e4 fit in fp16, times Gemma's sqrt(hidden)=8 they do not."""
    path = make_tiny("gemma2", tmp_path_factory.mktemp("gemma2"), tiny_llama)
    from transformers import AutoModel

    model = AutoModel.from_pretrained(path)
    with torch.no_grad():
        model.embed_tokens.weight.mul_(1e5)
    model.save_pretrained(path)
    return path


def test_fp16_overflow_raises_a_clear_error(overflowing_gemma2):
    model = st_tp.build(overflowing_gemma2, dtype="float16", device="cpu", tp_end=3, output_layer=5)
    with pytest.raises(FloatingPointError, match="bfloat16"):
        model.encode(["A man is playing a guitar."])
    ok = st_tp.build(overflowing_gemma2, dtype="float32", device="cpu", tp_end=3, output_layer=5)
    assert np.isfinite(ok.encode(["A man is playing a guitar."])).all()


def test_fp16_overflow_falls_back_when_asked(overflowing_gemma2):
    model = st_tp.build(overflowing_gemma2, dtype="float16", device="cpu", tp_end=3, output_layer=5, on_nonfinite="float32")
    reference = st_tp.build(overflowing_gemma2, dtype="float32", device="cpu", tp_end=3, output_layer=5)
    with pytest.warns(RuntimeWarning, match="switching the model to float32"):
        got = model.encode(["A man is playing a guitar."])
    assert np.isfinite(got).all()
    # the weights were rounded to fp16 when loaded, so the float32 redo matches only to fp16 weight precision
    np.testing.assert_allclose(got, reference.encode(["A man is playing a guitar."]), rtol=2e-3, atol=0)


def test_offloaded_model_matches_plain_load(tiny_llama, tmp_path):
    plain = st_tp.build(tiny_llama, tp_end=3, output_layer=-1, device="cpu")
    device_map = {"embed_tokens": "cpu", "layers.0": "cpu", "layers.1": "disk", "layers.2": "disk", "layers.3": "cpu",
                  "norm": "cpu", "rotary_emb": "cpu"}
    offloaded = st_tp.build(tiny_llama, tp_end=3, output_layer=-1, device="cpu",
                            model_kwargs={"device_map": device_map, "offload_folder": str(tmp_path / "offload")})
    assert any(p.device.type == "meta" for p in offloaded[0].runner.model.parameters()), "layers should be offloaded"
    texts = ["A man is playing a guitar.", "Hi", "Is it going to rain tomorrow?"]
    np.testing.assert_allclose(offloaded.encode(texts), plain.encode(texts), atol=1e-5, rtol=0)


def test_sentence_transformers_ecosystem(model, data_dir, tmp_path):
    emb = model.encode(["A man plays guitar.", "A man is playing a guitar.", "The stock market fell."], convert_to_tensor=True)
    sim = model.similarity(emb, emb)
    assert sim.shape == (3, 3) and torch.allclose(sim.diagonal(), torch.ones(3), atol=1e-5)
    hits = util.semantic_search(emb[:1], emb, top_k=2)
    assert hits[0][0]["corpus_id"] == 0
    s1, s2, gold = read_pairs(data_dir / "raw" / "stsb.dev.tsv", 80)
    evaluator = EmbeddingSimilarityEvaluator(s1, s2, list(gold / 5), name="stsb-dev")
    result = evaluator(model)
    assert np.isfinite(result["stsb-dev_spearman_cosine"])

    model.save(str(tmp_path))
    card = (tmp_path / "README.md").read_text()
    assert "Token Prepending" in card and "| tp_end | `3` |" in card and "| output_layer | `3` |" in card
    assert "tiny-llama-install-check" in card  # the base model is named
    files = {p.name for p in tmp_path.iterdir()}
    assert {"modules.json", "config_sentence_transformers.json", "README.md", "st_tp_config.json",
            "pst_embedding.safetensors", "model.safetensors", "config.json", "tokenizer.json"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl", ".pth"))]


def test_tampered_saved_config_is_rejected(tiny_llama, tmp_path):
    st_tp.build(tiny_llama, tp_end=3, output_layer=3, device="cpu").save(str(tmp_path))
    path = tmp_path / "st_tp_config.json"
    good = json.loads(path.read_text())
    for bad, message in [({**good, "evil": 1}, "Unknown key"), ({**good, "tp_end": "3"}, "tp_end must be int"),
                         ({**good, "num_hidden_layers_base": "4"}, "num_hidden_layers_base must be an int")]:
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=message):
            SentenceTransformer(str(tmp_path), trust_remote_code=True, device="cpu")
