import json

import pytest
from transformers import AutoTokenizer

from st_tp.runtime.prompts import PROMPTS, PromptEncoder, preprocess_sentence, remove_pst


@pytest.fixture(scope="module")
def golden(golden_dir):
    return json.loads((golden_dir / "golden.json").read_text())


@pytest.fixture(scope="module")
def tokenizer(golden_dir):
    return AutoTokenizer.from_pretrained(golden_dir / "llama" / "model")


def test_preprocessing_matches_reference():
    assert preprocess_sentence("Is it going to rain tomorrow?") == "Is it going to rain tomorrow."
    assert preprocess_sentence('He whispered, "I will be back."') == "He whispered, 'I will be back.'"
    assert preprocess_sentence("Hi") == "Hi."
    assert preprocess_sentence("'Quoted with single quotes'") == "'Quoted with single quotes'"
    assert preprocess_sentence("") == "."


def test_remove_pst_takes_one_space():
    assert remove_pst('This sentence : <PST> "{text}" x') == 'This sentence : "{text}" x'
    assert remove_pst('sentence : "<PST> {text}"') == 'sentence : "{text}"'
    assert remove_pst("the keyword <PST>, this") == "the keyword, this"
    assert remove_pst("<PST> <PST> {text}") == "{text}"


def test_prompt_strings_and_ids_match_official(golden, tokenizer):
    """Every golden case: the exact prompt strings and the exact token ids, <PST> slot included."""
    for case in golden:
        setting = case["setting"]
        tp = setting["plan"] == "tp"
        templates = PROMPTS[setting["prompt_method"]]
        expected_ids = case["input_ids"] if setting["prompt_method"] == "metaeol" else [case["input_ids"]]
        for template, text, ids in zip(templates, case["prompt_texts"], expected_ids, strict=True):
            encoder = PromptEncoder(tokenizer, template, tp=tp, placeholder_id=32000)
            assert encoder.fill(case["sentence"]) == text
            encoded = encoder.encode(case["sentence"])
            assert encoded.input_ids == ids
            shared = encoded.shared_prefix
            assert ids[:shared] == encoder.prefix_ids[:shared]
            # TP's prefix ends before <PST> and is always whole; vanilla's ends at '"', which a leading quote can merge.
            assert shared == len(encoder.prefix_ids) if tp else shared >= len(encoder.prefix_ids) - 1
            if tp:
                assert [ids[p] for p in encoded.pst_positions] == [32000]


def test_literal_pst_in_user_text_is_plain_text(tokenizer):
    encoder = PromptEncoder(tokenizer, PROMPTS["prompteol"][0], tp=True, placeholder_id=32000)
    encoded = encoder.encode("a <PST> b")
    assert encoded.input_ids.count(32000) == 1


def test_truncation_cuts_the_sentence_not_the_template(tokenizer):
    encoder = PromptEncoder(tokenizer, PROMPTS["prompteol"][0], tp=True, max_seq_length=40, placeholder_id=32000)
    encoded = encoder.encode("word " * 5000)
    assert len(encoded.input_ids) <= 40
    assert encoded.input_ids[-1] == 6160  # the prompt's closing ':"' survives
    assert encoded.input_ids[encoded.pst_positions[0]] == 32000
    short = PromptEncoder(tokenizer, PROMPTS["prompteol"][0], tp=True, max_seq_length=8)
    with pytest.raises(ValueError, match="shorter than the prompt template"):
        short.encode("anything")


def test_multiple_pst_slots(tokenizer):
    encoder = PromptEncoder(tokenizer, PROMPTS["prompteol"][0], tp=True, num_pst=2, placeholder_id=32000)
    encoded = encoder.encode("A man is playing a guitar.")
    assert encoded.pst_positions == [4, 5]
    assert encoded.input_ids[3:7] == [584, 32000, 32000, 376]
