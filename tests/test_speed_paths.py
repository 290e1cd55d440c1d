"""The fast paths (prefix KV cache, early exit, pruning, multi-process) give the plain path's embeddings."""

import numpy as np
import pytest

import st_tp
from st_tp.runtime.prompts import PROMPTS

MIXED = ["Hi", "A man is playing a guitar.", "Is it going to rain tomorrow?", "",
         "After several hours of heated debate about the budget, the council voted to postpone its decision.",
         'She said "hello" to everyone in the room.', "Café owners in Zürich serve crème brûlée",
         '"We are ready," he said.']  # a leading quote merges with the vanilla prefix's '"': a shorter shared prefix
METHODS = sorted(set(PROMPTS) - {"pretended_cot", "knowledge"})


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("tp", [True, False])
def test_prefix_cache_and_early_exit_match_plain_path(golden_dir, method, tp):
    base = str(golden_dir / "llama" / "model")
    settings = dict(prompt_method=method, tp=tp, tp_start=1, tp_end=4, output_layer=6, dtype="float32", device="cpu")
    fast = st_tp.build(base, prefix_cache=True, **settings)  # prefix cache forced on, pruned to 6 layers, early exit
    assert len(fast[0].runner.model.layers) == 6
    plain = st_tp.build(base, prefix_cache=False, **settings)
    expected = np.stack([plain.encode([s], batch_size=1)[0] for s in MIXED])  # one at a time: no padding at all
    got = fast.encode(MIXED, batch_size=4)  # left padding, mixed lengths, cached prefix
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    if method != "none":
        assert fast[0].runner.prefix_caches.keys(), "the prefix cache should have been used"


def test_full_depth_readout_matches_unpruned_reference(golden_dir):
    """output_layer=-1 keeps every layer and the final norm; -2 drops the last layer."""
    base = str(golden_dir / "llama" / "model")
    last = st_tp.build(base, output_layer=-1, tp_end=4, dtype="float32", device="cpu")
    penultimate = st_tp.build(base, output_layer=-2, tp_end=4, dtype="float32", device="cpu")
    assert len(last[0].runner.model.layers) == 8 and len(penultimate[0].runner.model.layers) == 7


def test_multi_process_pool_on_cpu(tiny_llama):
    model = st_tp.build(tiny_llama, tp_start=1, tp_end=3, output_layer=3, device="cpu")
    sentences = [f"Sentence number {i} about topic {i % 5}." for i in range(24)]
    expected = model.encode(sentences, batch_size=4)
    pool = model.start_multi_process_pool(["cpu", "cpu"])
    try:
        got = model.encode(sentences, pool=pool, batch_size=4, chunk_size=6)
    finally:
        model.stop_multi_process_pool(pool)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_vanilla_prefix_runs_to_the_sentence_and_a_merged_token_uses_a_shorter_part(tiny_llama):
    """Vanilla caches up to the sentence ('... : "'); a sentence whose first character merges with that '"' shares
    one token less, and the batch then uses the cache's first tokens instead of dropping it."""
    fast = st_tp.build(tiny_llama, tp=False, output_layer=3, device="cpu", prefix_cache=True, dtype="float32")
    module = fast[0]
    prefix = module.encoders[0].prefix_ids
    assert module.tokenizer.convert_ids_to_tokens(prefix[-1:]) == ['▁"']
    texts = ['"We are ready," he said.', "A man is playing a guitar."]
    assert module.preprocess(texts)["prefix_lengths"].tolist() == [len(prefix) - 1]
    assert module.preprocess(texts[1:])["prefix_lengths"].tolist() == [len(prefix)]
    plain = st_tp.build(tiny_llama, tp=False, output_layer=3, device="cpu", prefix_cache=False, dtype="float32")
    np.testing.assert_allclose(fast.encode(texts), plain.encode(texts), atol=1e-5, rtol=0)
    assert [key[0] for key in module.runner.prefix_caches.keys()] == [tuple(prefix)], "one cache, computed once, serves both lengths"


# Windows shorter than the batch: Knowledge's 36-token prefix and MetaEOL's ~90-token prompts exceed them too.
SLIDING = {
    "mistral": dict(sliding_window=24),
    "gemma2": dict(sliding_window=24),
    "gemma3_text": dict(sliding_window=24),  # 5 sliding layers and 1 full one, as Gemma-3
    "qwen2": dict(use_sliding_window=True, sliding_window=24, max_window_layers=2),  # layers >= 2 slide
}
WINDOW_TEXTS = ["Hi", "A man is playing a guitar.", " ".join(["The quick brown fox jumps over the lazy dog again."] * 4)]


@pytest.fixture(scope="module")
def sliding_models(tmp_path_factory, tiny_llama):
    from tests.tiny_models import make_tiny

    root = tmp_path_factory.mktemp("sliding")
    return {arch: make_tiny(arch, root / arch, tiny_llama, **extra) for arch, extra in SLIDING.items()}


@pytest.mark.slow  # 30-100 s per architecture on a 2-core CPU: every prompt method, TP on and off
@pytest.mark.parametrize("arch", list(SLIDING))
def test_sliding_window_prefix_cache_is_batch_independent(sliding_models, arch):
    """A sentence alone (no cache, no padding) equals the same sentence in a mixed batch with the prefix cache on,
    when the batch is wider than the window: padding must never sit between the cached keys and a row's tokens."""
    for method in METHODS:
        for tp in (True, False):
            settings = dict(prompt_method=method, tp=tp, tp_start=1, tp_end=3, output_layer=-1, dtype="float32", device="cpu")
            fast = st_tp.build(sliding_models[arch], prefix_cache=True, **settings)
            plain = st_tp.build(sliding_models[arch], prefix_cache=False, **settings)
            alone = np.stack([plain.encode([t], batch_size=1)[0] for t in WINDOW_TEXTS])
            for order in (WINDOW_TEXTS, WINDOW_TEXTS[::-1]):
                got = fast.encode(order, batch_size=3)
                expected = alone if order is WINDOW_TEXTS else alone[::-1]
                np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0, err_msg=f"{arch} {method} tp={tp}")
