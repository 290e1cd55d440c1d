"""Packing (st_tp/runtime/packing.py) and row skipping (st_tp/runtime/row_skipping.py) apart from TP: each switched off on its own
gives the same embeddings on every tiny architecture, and each does what it promises."""

import pytest
import torch
from transformers import AutoModel

from st_tp.runtime.decoder import find_decoder, last_token_positions
from st_tp.runtime.forward import install_hooks, run_layers
from st_tp.runtime.packing import RowLayout, pack, unpack
from st_tp.runtime.row_skipping import RowSkipPlan, layers_before_tp
from tests.tiny_models import ARCHS


def _batch(lengths=(11, 7, 15)):
    generator = torch.Generator().manual_seed(0)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):  # right padding, as TokenPrepending pads
        ids[row, :n] = torch.randint(3, 32000, (n,), generator=generator)
        mask[row, :n] = 1
    return ids, mask, torch.tensor([[3], [2], [4]])


@pytest.mark.parametrize("arch", list(ARCHS))
def test_switching_either_mechanism_off_changes_nothing(backbones, arch):
    model = AutoModel.from_pretrained(backbones[arch], dtype=torch.float32).eval()
    ids, mask, pst = _batch()
    results = {}
    for packed in (True, False):
        for skip in (True, False):
            with torch.inference_mode():
                results[packed, skip] = run_layers(model, ids, mask, pst, tp_layers=[1, 2], capture=[2, 4, 6],
                                                   packed=packed, skip_unread_rows=skip)
    for key, captured in results.items():
        for layer in (2, 4, 6):
            torch.testing.assert_close(captured[layer], results[False, False][layer], atol=1e-5, rtol=0, msg=f"{key} {layer}")


def test_pack_and_unpack_are_inverse_on_real_tokens():
    ids, mask, _ = _batch()
    layout = RowLayout.of(mask, packed=True)
    hidden = torch.randn(*ids.shape, 8)
    packed = pack(hidden, layout.real)
    assert packed.shape == (1, int(mask.sum()), 8) and layout.shape == (1, int(mask.sum()))
    restored = unpack(packed, layout.real, *ids.shape)
    torch.testing.assert_close(restored[mask.bool()], hidden[mask.bool()])
    assert (restored[~mask.bool()] == 0).all()
    # rows_of finds each sequence's last token in the packed rows
    last = layout.rows_of(last_token_positions(mask))
    torch.testing.assert_close(packed[0, last], hidden[torch.arange(3), mask.sum(1) - 1])


def test_a_batch_without_padding_is_not_packed():
    layout = RowLayout.of(torch.ones(2, 5, dtype=torch.long), packed=True)
    assert not layout.packed and layout.shape == (2, 5)


def test_row_skip_plan_reads_last_tokens_in_the_last_layer_and_skips_pst_rows_before_tp():
    assert layers_before_tp([1, 2, 3], last_layer=5) == [0, 1, 2]
    assert layers_before_tp([1, 2, 3], last_layer=5, whole_inputs=[2]) == [0, 2]
    assert layers_before_tp([1, 6], last_layer=3) == [0]
    plan = RowSkipPlan.of((1, 10), last_layer=3, last_rows=torch.tensor([4, 9]), before_tp=[0], pst_rows=torch.tensor([1, 6]))
    rows, spread = plan.read[0]
    assert rows.tolist() == [0, 2, 3, 4, 5, 7, 8, 9]
    assert spread[rows].tolist() == list(range(8))  # each read row takes itself
    assert plan.read[3][0].tolist() == [4, 9]


def test_row_skipping_runs_parts_on_read_rows_only(backbones):
    model = AutoModel.from_pretrained(backbones["llama"], dtype=torch.float32).eval()
    ids, mask, pst = _batch()
    seen = []
    install_hooks(find_decoder(model))  # st_tp's hooks first, so the probe below sees what the MLP computes
    handle = find_decoder(model).layers[-1].mlp.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    with torch.inference_mode():
        run_layers(model, ids, mask, pst, tp_layers=[1], capture=[6], skip_unread_rows=True)
        run_layers(model, ids, mask, pst, tp_layers=[1], capture=[6], skip_unread_rows=False)
    handle.remove()
    assert seen == [3, int(mask.sum())]  # the last layer's MLP: the 3 last tokens, or every packed row
