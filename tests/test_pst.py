"""The <PST> input vector: every init is deterministic; the grammar has one home."""

import pytest
import torch

import st_tp
from st_tp.runtime.pst import parse_pst_init


def test_pst_init_options_are_deterministic(tiny_llama):
    vectors = {}
    for init in ["zeros", "ones", "normal", "normal:3", "uniform:5", "token:the"]:
        first = st_tp.build(tiny_llama, pst_init=init, tp_end=3, output_layer=3, device="cpu")[0].runner.pst_embedding
        second = st_tp.build(tiny_llama, pst_init=init, tp_end=3, output_layer=3, device="cpu")[0].runner.pst_embedding
        assert torch.equal(first, second), init
        vectors[init] = first
    assert not torch.equal(vectors["normal"], vectors["normal:3"])
    assert vectors["uniform:5"].min() >= 0 and vectors["uniform:5"].max() < 1
    with pytest.raises(ValueError, match="exactly one token"):
        st_tp.build(tiny_llama, pst_init="token:the quick brown fox", tp_end=3, device="cpu")


def test_pst_init_grammar():
    assert parse_pst_init("normal:3") == ("normal", "3") and parse_pst_init("token:the") == ("token", "the")
    for bad in ["gaussian", "normal:x", "zeros:1", "token:"]:
        with pytest.raises(ValueError, match="Unknown pst_init"):
            parse_pst_init(bad)
