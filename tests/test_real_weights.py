"""Real models (SmolLM2-135M and Gemma-3-270M, from their GGUF packages): embeddings that mean something, real
tokenizers at the edges (truncation, special-token text), and a real sliding window (Gemma-3, 512 tokens)."""

import numpy as np
import pytest
from scipy.stats import spearmanr
from sentence_transformers import SentenceTransformer
from transformers import AutoTokenizer

import st_tp
from st_tp.base_model import PACKAGED, resolve_base_model
from st_tp.data import read_pairs
from st_tp.runtime.config import load_preset
from st_tp.runtime.prompts import PROMPTS, PromptEncoder
from tests.conftest import ROOT
from tests.test_base_model import require_package

PARAPHRASE = ("A man is playing a guitar.", "A man plays the guitar.")
UNRELATED = ("A man is playing a guitar.", "The stock market fell sharply on Monday.")
# Cosine Spearman on the first 200 STS-B dev pairs, measured (float32, CPU): TP preset 0.845, vanilla preset 0.820.
# Floors sit ~0.065 below, so float noise never trips them but a broken prompt, layer or cache does.
SPEARMAN_FLOORS = {"smollm2-135m-prompteol-tp": 0.78, "smollm2-135m-prompteol": 0.75}


@pytest.fixture(scope="module")
def smollm2() -> str:
    require_package(PACKAGED["smollm2-135m"])
    return resolve_base_model("packaged:smollm2-135m").path


@pytest.fixture(scope="module")
def gemma3() -> str:
    require_package(PACKAGED["gemma3-270m"])
    return resolve_base_model("packaged:gemma3-270m").path


def _cosine(a, b) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.slow
@pytest.mark.parametrize("preset", list(SPEARMAN_FLOORS))
def test_smollm2_embeddings_mean_something(smollm2, data_dir, preset, tmp_path):
    base, config = load_preset(ROOT / "configs" / f"{preset}.yaml")
    assert base == "packaged:smollm2-135m"
    model = st_tp.build(base, config, dtype="float32", device="cpu")
    s1, s2, gold = read_pairs(data_dir / "raw" / "stsb.dev.tsv", 200)
    a = model.encode(s1, batch_size=32, normalize_embeddings=True)
    b = model.encode(s2, batch_size=32, normalize_embeddings=True)
    spearman = spearmanr(gold, (a * b).sum(1)).statistic
    assert spearman > SPEARMAN_FLOORS[preset], spearman
    pair = model.encode([*PARAPHRASE, UNRELATED[1]])
    assert _cosine(pair[0], pair[1]) > _cosine(pair[0], pair[2])

    model.save(str(tmp_path))  # a real model round-trips bit-identically too
    loaded = SentenceTransformer(str(tmp_path), trust_remote_code=True, device="cpu")
    assert np.array_equal(loaded.encode(list(PARAPHRASE)), model.encode(list(PARAPHRASE)))


@pytest.mark.slow
@pytest.mark.parametrize("tp", [True, False])
def test_gemma3_inputs_longer_than_its_sliding_window(gemma3, tp):
    """A short sentence alone equals the same sentence batched with a 641-token prompt (window 512), cache on or off.
    Gemma's last-layer values reach ~26, so the bound is relative to the vector's largest entry (measured 8e-7)."""
    long = " ".join(["The committee reviewed the proposal in great detail before it reached any decision."] * 45)
    short = "A man is playing a guitar."
    settings = dict(tp=tp, tp_start=1, tp_end=3, output_layer=-1, max_seq_length=2048, dtype="float32", device="cpu")
    cached = st_tp.build(gemma3, prefix_cache=True, **settings)
    plain = st_tp.build(gemma3, prefix_cache=False, **settings)
    assert len(cached[0].encoders[0].encode(long).input_ids) > 600
    alone = plain.encode([short])[0]
    for model in (cached, plain):
        batched = model.encode([short, long], batch_size=2)
        assert np.abs(batched[0] - alone).max() <= 1e-5 * np.abs(alone).max()
        assert _cosine(batched[0], alone) > 0.999999
    np.testing.assert_allclose(cached.encode([long])[0], plain.encode([long])[0], rtol=0, atol=1e-5 * np.abs(alone).max())


LONG_TEXTS = {
    "quotes": ('"' * 40 + " hi ") * 300,
    "quotes only": '"' * 20000,
    "cjk": "中文句子，测试截断。" * 1500,
    "emoji": "🙂🎉👍🏽" * 2000,
    "digits": "1234567890 " * 2000,
}


@pytest.fixture(scope="module", params=["llama2", pytest.param("gemma3", marks=pytest.mark.slow)])
def real_tokenizer(request, tiny_llama):
    if request.param == "llama2":
        return AutoTokenizer.from_pretrained(tiny_llama)  # the real Llama-2 tokenizer
    return AutoTokenizer.from_pretrained(request.getfixturevalue("gemma3"))  # Gemma-3's, from its GGUF


@pytest.mark.parametrize("kind", list(LONG_TEXTS))
@pytest.mark.parametrize("tp", [True, False])
def test_truncation_keeps_the_sentence(real_tokenizer, kind, tp):
    """A long input fills max_seq_length with its own sentence (the template stays whole), whatever the sentence's
    characters do to the token count once preprocessed ('"' -> "'") and quoted."""
    encoder = PromptEncoder(real_tokenizer, PROMPTS["prompteol"][0], tp=tp, max_seq_length=512, placeholder_id=0)
    template_only = len(encoder.encode("").input_ids)
    ids = encoder.encode(LONG_TEXTS[kind]).input_ids
    assert 512 - 2 <= len(ids) <= 512, len(ids)
    assert len(ids) - template_only >= 512 - template_only - 2  # the sentence's own ids fill the rest
    assert ids[-3:] == encoder.encode("").input_ids[-3:]  # the prompt's closing tokens survive


def test_special_token_text_stays_text(real_tokenizer):
    specials = [t for t in real_tokenizer.all_special_tokens if t]
    sentence = "I love " + " and ".join(specials) + " and <start_of_turn> too"
    encoder = PromptEncoder(real_tokenizer, PROMPTS["prompteol"][0], tp=True, placeholder_id=0)
    ids = encoder.encode(sentence).input_ids
    control = set(real_tokenizer.all_special_ids) | set(real_tokenizer.convert_tokens_to_ids(["<start_of_turn>"]))
    body = ids[1:]  # after the BOS the tokenizer adds itself
    body.pop(encoder.encode(sentence).pst_positions[0] - 1)  # the <PST> slot holds the placeholder id
    assert not control & set(body), [i for i in body if i in control]
    official = PromptEncoder(real_tokenizer, PROMPTS["prompteol"][0], tp=True, placeholder_id=0, parse_special_tokens=True)
    assert set(real_tokenizer.all_special_ids) & set(official.encode(sentence).input_ids[1:]) - {0}
    with pytest.raises(ValueError, match="special-token text .* parse_special_tokens=True"):
        PromptEncoder(real_tokenizer, specials[0] + ' <PST> "{text}" means:"', tp=True)
