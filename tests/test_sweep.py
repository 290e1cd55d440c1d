"""The tp_end x output_layer sweep, and the paper's ablation options (A.4-A.6)."""

import numpy as np
import pytest
import torch
import yaml
from scipy.stats import spearmanr

import st_tp
from st_tp.config import load_preset
from st_tp.data import read_pairs
from st_tp.forward import find_decoder, install_hooks
from st_tp.sweep import VANILLA, sweep, write_outputs


@pytest.fixture(scope="module")
def swept(golden_dir, data_dir, tmp_path_factory):
    base = str(golden_dir / "llama" / "model")
    dev = data_dir / "raw" / "stsb.dev.tsv"
    result = sweep(base, dev, tp_ends=[2, 3, 5], limit=60, batch_size=8, dtype="float32", device="cpu", show_progress_bar=False)
    out = tmp_path_factory.mktemp("sweep")
    write_outputs(result, out, base, "prompteol", str(dev))
    return base, dev, result, out


def _direct(base, dev, **settings):
    model = st_tp.build(base, dtype="float32", device="cpu", **settings)
    s1, s2, gold = read_pairs(dev, 60)
    a = model.encode(s1, normalize_embeddings=True)
    b = model.encode(s2, normalize_embeddings=True)
    return spearmanr(gold, (a * b).sum(1)).statistic


@pytest.mark.parametrize("tp_end, output_layer", [(3, 6), (2, 8), (5, 4)])
def test_sweep_cells_equal_direct_evaluation(swept, tp_end, output_layer):
    base, dev, result, _ = swept
    direct = _direct(base, dev, tp_end=tp_end, output_layer=-1 if output_layer == 8 else output_layer)
    assert result.scores[tp_end][output_layer] == pytest.approx(direct, abs=1e-6)


def test_sweep_vanilla_row(swept):
    base, dev, result, _ = swept
    assert result.scores[VANILLA][5] == pytest.approx(_direct(base, dev, tp=False, output_layer=5), abs=1e-6)


def test_sweep_outputs(swept):
    _, _, result, out = swept
    rows = (out / "grid.csv").read_text().splitlines()
    assert rows[0].split(",") == ["tp_end", *map(str, range(9))]
    assert [r.split(",")[0] for r in rows[1:]] == ["vanilla", "2", "3", "5"]
    base_model, config = load_preset(out / "best.yaml")
    best_e, best_k, best_v = result.best()
    assert (config.tp_end, config.output_layer if config.output_layer >= 0 else 8) == (best_e, best_k)
    assert np.isfinite(best_v) and best_v == max(v for e, r in result.scores.items() if e != VANILLA for v in r if np.isfinite(v))
    for png in ("heatmap.png", "curves.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_two_pst_tokens_are_both_overwritten(tiny_llama):
    model = st_tp.build(tiny_llama, num_pst=2, tp_start=1, tp_end=3, output_layer=3, device="cpu")
    features = model[0].preprocess(["A man is playing a guitar."])
    pst = features["pst_positions"][0]
    assert pst.tolist() == [4, 5]
    decoder = find_decoder(model[0].auto_model)
    install_hooks(decoder)
    seen = {}
    handle = decoder.layers[2].register_forward_pre_hook(lambda m, args, kw: seen.update(h=(args[0] if args else kw["hidden_states"]).clone()), with_kwargs=True)
    model[0].tp_config = model[0].tp_config.replace(prefix_cache=False)
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
        decoder = find_decoder(model[0].auto_model)
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
    model = st_tp.build(tiny_llama, tp_start=1, tp_end=2, tp_resume_layer=3, output_layer=4, device="cpu", prefix_cache=False)
    features = model[0].preprocess(["A man is playing a guitar."])
    with torch.inference_mode():
        got = model[0](dict(features))["sentence_embedding"][0]
        decoder = find_decoder(model[0].auto_model)
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
    assert yaml.safe_load(open(__file__.replace("test_sweep.py", "../configs/install-check.yaml")))["tp_end"] == 3
