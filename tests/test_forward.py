"""The TP forward on every supported backbone, against the naive official-style reference; the paper's ablation
options (A.4-A.6) at the layer inputs."""

import ast
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModel, BertConfig, BertModel

import st_tp
from st_tp.reference import naive_tp_forward
from st_tp.runtime.decoder import find_decoder, last_token_positions, resolve_layer
from st_tp.runtime.forward import install_hooks, tp_forward
from tests.tiny_models import ARCHS


def _batch(seed=0, lengths=(11, 7, 15)):
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):  # left padding, as st_tp pads
        ids[row, width - n :] = torch.randint(3, 32000, (n,), generator=generator)
        mask[row, width - n :] = 1
    pst = torch.tensor([width - n + 3 for n in lengths])
    return ids, mask, pst


@pytest.mark.parametrize("arch", list(ARCHS))
def test_backbone_matches_reference(backbones, arch):
    model = AutoModel.from_pretrained(backbones[arch], dtype=torch.float32)
    ids, mask, pst = _batch()
    for tp_start, tp_end, output_layer in [(1, 4, 5), (0, 3, -1), (2, 99, -2)]:
        with torch.inference_mode():
            fast = tp_forward(model, ids, mask, pst, tp_start=tp_start, tp_end=tp_end, output_layer=output_layer)
            vanilla = tp_forward(model, ids, mask, None, tp_start=tp_start, tp_end=tp_end, output_layer=output_layer)
            # the reference has no padding-aware positions, so compare row by row without padding
            for row in range(len(ids)):
                real = mask[row].bool()
                ref = naive_tp_forward(
                    model, ids[row : row + 1, real], mask[row : row + 1, real], pst[row : row + 1] - (~real).sum(),
                    tp_layers=list(range(tp_start, tp_end)), output_layer=output_layer,
                )
                torch.testing.assert_close(fast[row], ref[0], atol=1e-5, rtol=0)
        assert (fast - vanilla).abs().max() > 1e-3, "TP must change the embedding"


def test_right_padding_and_batch_independence(backbones):
    model = AutoModel.from_pretrained(backbones["llama"], dtype=torch.float32)
    ids, mask, pst = _batch()
    with torch.inference_mode():
        left = tp_forward(model, ids, mask, pst, tp_start=1, tp_end=4, output_layer=5)
        # the same rows right-padded
        lengths = mask.sum(1)
        right_ids, right_mask = torch.zeros_like(ids), torch.zeros_like(mask)
        for row, n in enumerate(lengths):
            right_ids[row, :n] = ids[row, -n:]
            right_mask[row, :n] = 1
        right = tp_forward(model, right_ids, right_mask, pst - (ids.shape[1] - lengths), tp_start=1, tp_end=4, output_layer=5)
        alone = torch.cat([tp_forward(model, ids[r : r + 1, -n:], mask[r : r + 1, -n:], pst[r : r + 1] - (ids.shape[1] - n),
                                      tp_start=1, tp_end=4, output_layer=5) for r, n in enumerate(lengths)])
    torch.testing.assert_close(left, right, atol=1e-5, rtol=0)
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=0)


def test_early_exit_skips_later_layers(backbones):
    model = AutoModel.from_pretrained(backbones["llama"], dtype=torch.float32)
    ran = []
    handles = [layer.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, layer in enumerate(model.layers)]
    ids, mask, pst = _batch()
    with torch.inference_mode():
        tp_forward(model, ids, mask, pst, tp_start=1, tp_end=3, output_layer=3)
    for handle in handles:
        handle.remove()
    assert ran == [0, 1, 2]


def test_causal_lm_and_hooks_are_inert_outside_a_pass(backbones):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(backbones["qwen2"], dtype=torch.float32)
    ids, mask, _ = _batch()
    with torch.inference_mode():
        before = model(input_ids=ids, attention_mask=mask).logits
        tp_forward(model, ids, mask, None, tp_start=1, tp_end=3, output_layer=3)  # installs the hooks
        after = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(before, after, atol=0, rtol=0)


def _row_counts(model, run) -> dict[str, list[tuple]]:
    """Input shapes (without the hidden size) seen by each layer's MLP and q/k projections during `run()`."""
    seen: dict[str, list[tuple]] = {"mlp": [], "q_proj": [], "k_proj": []}
    install_hooks(model)  # ours first, so the shapes recorded below are what the modules really compute on
    handles = [part.register_forward_pre_hook(lambda m, args, name=name: seen[name].append(tuple(args[0].shape[:-1])))
               for layer in model.layers for name, part in
               [("mlp", layer.mlp), ("q_proj", layer.self_attn.q_proj), ("k_proj", layer.self_attn.k_proj)]]
    with torch.inference_mode():
        out = run()
    for handle in handles:
        handle.remove()
    return seen, out


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_layers_run_packed_on_real_tokens(backbones, implementation):
    """Padding is never computed: with 'sdpa' or 'eager' every row-wise part sees the real tokens only. Rows never read
    are skipped too: the last layer that runs reads the last tokens only, and a layer before a TP layer skips the
    <PST> rows that the TP layer overwrites. The embeddings equal each row run alone."""
    model = AutoModel.from_pretrained(backbones["llama"], dtype=torch.float32, attn_implementation=implementation)
    ids, mask, pst = _batch(lengths=(11, 7, 15))
    seen, got = _row_counts(model, lambda: tp_forward(model, ids, mask, pst, tp_start=1, tp_end=3, output_layer=4))
    real = int(mask.sum())  # 33 real tokens, 3 of them <PST>
    # layers 0 and 1 come before the TP layers 1 and 2: their <PST> outputs are overwritten, so never computed
    assert seen["mlp"] == [(1, real - 3)] * 2 + [(1, real), (1, 3)]  # layer 3, the last, on the 3 last tokens
    assert seen["q_proj"] == [(1, real - 3)] * 2 + [(1, real), (1, 3)]
    assert seen["k_proj"] == [(1, real)] * 4  # every key is read
    assert model.config._attn_implementation == f"st_tp_padded_{implementation}"
    with torch.inference_mode():
        alone = torch.cat([tp_forward(model, ids[r : r + 1, mask[r].bool()], mask[r : r + 1, mask[r].bool()],
                                      pst[r : r + 1] - (~mask[r].bool()).sum(), tp_start=1, tp_end=3, output_layer=4)
                           for r in range(3)])
    torch.testing.assert_close(got, alone, atol=1e-5, rtol=0)


def test_other_attention_implementations_run_padded(backbones):
    """An implementation the packing wrapper does not cover (flash, flex, a user's own) runs on the padded batch, with
    the same embeddings."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register("my_attention", sdpa_attention_forward)
    AttentionMaskInterface.register("my_attention", sdpa_mask)
    model = AutoModel.from_pretrained(backbones["llama"], dtype=torch.float32)
    ids, mask, pst = _batch(lengths=(11, 7, 15))
    with torch.inference_mode():
        packed = tp_forward(model, ids, mask, pst, tp_start=1, tp_end=3, output_layer=4)
    model.config._attn_implementation = "my_attention"
    seen, padded = _row_counts(model, lambda: tp_forward(model, ids, mask, pst, tp_start=1, tp_end=3, output_layer=4))
    assert seen["mlp"] == [(1, 45 - 3)] * 2 + [(3, 15), (1, 3)]  # padded slots, the <PST> ones skipped before TP
    assert model.config._attn_implementation == "my_attention"
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=0)


def test_saved_model_keeps_its_own_attention_implementation(tiny_llama, tmp_path):
    model = st_tp.build(tiny_llama, tp_end=3, output_layer=4, device="cpu")
    model.encode(["A man is playing a guitar.", "Hi"])  # a packed pass: the wrapper is in use
    assert find_decoder(model[0].runner.model).config._attn_implementation == "st_tp_padded_sdpa"
    model.save(str(tmp_path / "saved"))
    assert "st_tp_padded" not in (tmp_path / "saved" / "config.json").read_text()


def test_layer_resolution_and_errors():
    assert resolve_layer(-1, 8) == 8 and resolve_layer(-2, 8) == 7 and resolve_layer(0, 8) == 0
    with pytest.raises(ValueError, match="outside the model"):
        resolve_layer(9, 8)
    with pytest.raises(ValueError, match="outside the model"):
        resolve_layer(-10, 8)
    assert last_token_positions(torch.tensor([[0, 1, 1], [1, 1, 0], [1, 0, 0]])).tolist() == [2, 1, 0]


def test_unsupported_model_is_named():
    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
    ids = torch.ones(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="BertModel is not a supported decoder-only model.*`.layers`"):
        tp_forward(bert, ids, ids, None, tp_start=1, tp_end=2, output_layer=1)
    with pytest.raises(ValueError, match="not a supported"):
        tp_forward(nn.Linear(2, 2), ids, ids, None, tp_start=1, tp_end=2, output_layer=1)


# ---- ablations (paper A.4-A.6) ----
def test_two_pst_tokens_are_both_overwritten(tiny_llama):
    model = st_tp.build(tiny_llama, num_pst=2, tp_start=1, tp_end=3, output_layer=3, device="cpu")
    features = model[0].preprocess(["A man is playing a guitar."])
    pst = features["pst_positions"][0]
    assert pst.tolist() == [4, 5]
    decoder = find_decoder(model[0].runner.model)
    install_hooks(decoder)
    seen = {}
    handle = decoder.layers[2].register_forward_pre_hook(lambda m, args, kw: seen.update(h=(args[0] if args else kw["hidden_states"]).clone()), with_kwargs=True)
    model[0].runner.prefix_cache = False  # the rows keep their columns (a cached prefix drops the first)
    with torch.inference_mode():
        model[0](dict(features))
    handle.remove()
    hidden = seen["h"][0]
    torch.testing.assert_close(hidden[4], hidden[-1], rtol=0, atol=0)
    torch.testing.assert_close(hidden[5], hidden[-1], rtol=0, atol=0)


def test_masking_pst_changes_only_the_first_layer(tiny_llama):
    """A.5: with mask_pst_first_layer, layer 0's mask hides the <PST> key from other queries; nothing else changes."""
    masks = {}
    for masked in (False, True):
        model = st_tp.build(tiny_llama, mask_pst_first_layer=masked, tp_end=3, output_layer=-1, device="cpu", prefix_cache=False)
        decoder = find_decoder(model[0].runner.model)
        install_hooks(decoder)
        handles = [layer.register_forward_pre_hook(lambda m, a, kw, i=i, masked=masked: masks.__setitem__((masked, i), kw["attention_mask"]), with_kwargs=True)
                   for i, layer in enumerate(decoder.layers)]
        features = model[0].preprocess(["A man is playing a guitar.", "Hi"])
        with torch.inference_mode():
            model[0](dict(features))
        for h in handles:
            h.remove()
    pst = features["pst_positions"][:, 0]
    first = masks[(True, 0)]
    assert first is not None and first.dim() == 4
    for row in range(2):
        column = first[row, 0, :, pst[row]]
        allowed = column if first.dtype == torch.bool else column == 0
        assert allowed.sum() == 1 and bool(allowed[pst[row]])  # only <PST> itself still sees <PST>
    for i in range(1, 4):
        a, b = masks[(False, i)], masks[(True, i)]
        assert (a is None and b is None) or torch.equal(a, b)


def test_resume_tp_matches_hand_written_loop(tiny_llama):
    """A.6: TP on layers 1..2, off, then on again from layer 3 until the output."""
    model = st_tp.build(tiny_llama, tp_start=1, tp_end=2, tp_resume_layer=3, output_layer=4, device="cpu", prefix_cache=False,
                        dtype="float32")  # compared with a float32 hand-written loop
    features = model[0].preprocess(["A man is playing a guitar."])
    with torch.inference_mode():
        got = model[0](dict(features))["sentence_embedding"][0]
        decoder = find_decoder(model[0].runner.model)
        ids, pst = features["input_ids"], int(features["pst_positions"][0, 0])
        h = decoder.embed_tokens(ids).clone()
        h[0, pst] = 0
        positions = torch.arange(ids.shape[1])[None]
        rotary = decoder.rotary_emb(h, positions)
        for i, layer in enumerate(decoder.layers):
            if i in (1, 3):  # tp layers: [1, 2) and resumed [3, L)
                h[0, pst] = h[0, -1]
            h = layer(h, attention_mask=None, position_ids=positions, position_embeddings=rotary)
        expected = decoder.norm(h)[0, -1]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_run_layers_has_one_caller_outside_forward():
    """Everything that runs TP (the ST module, the sweep, the benchmarks) goes through the TP runner."""
    root = Path(__file__).resolve().parents[1]
    callers = []
    for path in sorted([*(root / "st_tp").rglob("*.py"), *(root / "benchmarks").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and "run_layers" in (getattr(node.func, "id", None), getattr(node.func, "attr", None)):
                callers.append(str(path.relative_to(root)))
    assert [c for c in callers if c != "st_tp/runtime/forward.py"] == ["st_tp/runtime/runner.py"]


def test_a_pruned_runner_refuses_layers_it_does_not_hold(tiny_llama):
    """A model built with exit 2 holds layers 0..1: asking it for hidden_states[3], or for the final-normed output
    hidden_states[4] (which needs every layer), names the problem instead of norming layer 1's output."""
    module = st_tp.build(tiny_llama, tp_end=2, output_layer=2, dtype="float32", device="cpu")[0]
    runner, features = module.runner, module.preprocess(["A man is playing a guitar."])
    assert len(runner.model.layers) == 2 and runner.total_layers == 4
    for layer in (3, 4):
        with pytest.raises(ValueError, match=rf"hidden_states\[{layer}\] needs {layer} layers; this \(pruned\) model has 2"):
            runner.last_token_states(features, [layer])
    assert runner.last_token_states(features, [0, 1, 2]).keys() == {0, 1, 2}
