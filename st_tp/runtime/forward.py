"""The Token Prepending forward pass for any Hugging Face decoder whose base model has a `layers` list.

Nothing is copied from modeling files. Each decoder layer gets a pre-hook and a post-hook, installed once, that act
only while a TP pass is active in the current context (st_tp/runtime/pass_state.py).

Semantics (measured on the official code, ../shared/golden/README.md):
  * before decoder layer i, for each TP layer i (tp_start <= i < tp_end), the <PST> row of the layer's input is
    overwritten with the same sequence's last real token state;
  * output_layer indexes HF's hidden_states: 0 = embeddings, k = input of layer k, L (or -1) = final-normed
    output, -2 = input of the last layer; the embedding is the state of the last real token.
Early exit: the post-hook of layer k-1 records the state and stops the forward, so layers k.. never run.

Two speed mechanisms live in files of their own and can each be switched off (run_layers's `packed=False`,
`skip_unread_rows=False`) with identical results: st_tp/runtime/packing.py (padding is never computed) and
st_tp/runtime/row_skipping.py (rows never read are not computed). The TP runner (st_tp/runtime/runner.py) is the one
caller of `run_layers` outside this file.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from . import packing, row_skipping
from .config import tp_layer_range
from .decoder import embedding_scale, find_decoder, flat, last_token_positions, resolve_layer, take_rows
from .hf_compat import cache_kwargs, layer_hidden_states, layer_output_hidden_states, with_layer_hidden_states
from .packing import RowLayout
from .pass_state import PassState
from .row_skipping import RowSkipPlan, layers_before_tp

if TYPE_CHECKING:
    from .prefix_cache import PrefixKV


@dataclass
class _TPPass:
    """What the TP hooks need for one forward. Rows index the layers' hidden states flattened to [rows, H]."""

    tp_layers: frozenset[int]
    pst_rows: Tensor | None  # [B * n] rows of the <PST> slots; None = a vanilla prompt
    pst_sources: Tensor | None  # [B * n] the last-token row each <PST> slot takes
    last_rows: Tensor  # [B] row of each sequence's last real token
    capture_layers: frozenset[int]  # hidden_states indices (< L) whose last-token state we keep
    stop_after: int | None  # the forward stops once hidden_states[stop_after] is captured
    mask_pst_layer: int | None = None  # layer whose attention hides the <PST> keys (paper A.5)
    pst_positions: Tensor | None = None  # [B, n] columns of the <PST> slots (the A.5 mask works on columns)
    past: int = 0  # prefix-cache columns before the batch's own in the attention mask
    captured: dict[int, Tensor] = field(default_factory=dict)

    def capture(self, index: int, hidden: Tensor) -> None:
        if index in self.capture_layers:
            self.captured[index] = take_rows(hidden, self.last_rows)
            if self.stop_after == index:
                raise _EarlyExit


_TP: PassState[_TPPass] = PassState("tp")


class _EarlyExit(Exception):
    """Raised by a hook once the requested exit layer is captured; the layers after it never run."""


class _BeforeLayer:
    """Before decoder layer `index`: capture hidden_states[0], overwrite the <PST> rows (TP), hide the <PST> keys
    (the A.5 ablation's layer)."""

    def __init__(self, index: int) -> None:
        self.index = index

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict):
        tp = _TP.get()
        if tp is None:
            return None
        hidden = layer_hidden_states(args, kwargs)
        if self.index == 0:
            tp.capture(0, hidden)
        overwrite = tp.pst_rows is not None and self.index in tp.tp_layers
        mask = self.index == tp.mask_pst_layer and tp.pst_positions is not None
        if not (overwrite or mask):  # nothing to change: the layer's arguments pass through untouched
            return None
        if overwrite:
            # The Token Prepending rule: each <PST> row takes its sequence's last-token state (out of place, so
            # states captured or recorded earlier stay intact).
            hidden = flat(hidden).index_copy(0, tp.pst_rows, take_rows(hidden, tp.pst_sources)).view_as(hidden)
        if mask:
            kwargs = dict(kwargs, attention_mask=_mask_pst_keys(kwargs.get("attention_mask"), tp.pst_positions + tp.past, hidden))
        return with_layer_hidden_states(args, kwargs, hidden)


class _AfterLayer:
    """After decoder layer `index`: its output is hidden_states[index + 1]."""

    def __init__(self, index: int) -> None:
        self.index = index

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict, output):
        tp = _TP.get()
        if tp is not None:
            tp.capture(self.index + 1, layer_output_hidden_states(output))


def _install_tp(decoder: nn.Module) -> None:
    for index, layer in enumerate(decoder.layers):
        layer.register_forward_pre_hook(_BeforeLayer(index), with_kwargs=True)
        layer.register_forward_hook(_AfterLayer(index), with_kwargs=True)


def install_hooks(decoder: nn.Module) -> None:
    """Packing's hooks first (the TP hooks index rows of the packed layout), then TP's, then row skipping's."""
    packing.LAYOUT.install_once(decoder, packing.install)
    _TP.install_once(decoder, _install_tp)
    row_skipping.PLAN.install_once(decoder, row_skipping.install)


def _mask_pst_keys(mask, pst_columns: Tensor, hidden: Tensor):
    """A 4-D additive/boolean mask of this layer with the <PST> key columns hidden from every query but the <PST>
    itself (so no query row is left fully masked). `pst_columns` [B, n] count the prefix cache's columns too."""
    if mask is None:  # SDPA's implicit causal mask (no padding, so the rows are not packed: [B, S, H]): materialise it
        mask = torch.ones(hidden.shape[1], hidden.shape[1], dtype=torch.bool, device=hidden.device).tril()[None, None]
    if mask.dim() != 4:
        raise ValueError(
            "mask_pst_first_layer needs a 4-D attention mask (attn_implementation 'eager' or 'sdpa'); this model "
            f"passed {type(mask).__name__} to its layers. Load it with model_kwargs={{'attn_implementation': 'eager'}}."
        )
    batch, q_len, k_len, device = pst_columns.shape[0], mask.shape[-2], mask.shape[-1], pst_columns.device
    mask = mask.expand(batch, -1, -1, -1).clone()
    query_columns = torch.arange(k_len - q_len, k_len, device=device)  # queries are the last q_len key columns
    hide = query_columns[None, :, None] != pst_columns[:, None, :]
    blocked = torch.zeros_like(mask[:, 0], dtype=torch.bool).scatter(-1, pst_columns[:, None, :].expand(-1, q_len, -1), hide)
    if mask.dtype == torch.bool:
        return mask & ~blocked[:, None]
    return mask.masked_fill(blocked[:, None], torch.finfo(mask.dtype).min)


def _embed(decoder: nn.Module, input_ids: Tensor, pst_positions: Tensor | None, pst_embedding: Tensor | None) -> Tensor:
    """The input embeddings, with the <PST> slots (any id, even one outside the vocabulary) set to `pst_embedding`."""
    if pst_positions is None:
        return decoder.get_input_embeddings()(input_ids)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device).unsqueeze(1).expand_as(pst_positions)
    inputs_embeds = decoder.get_input_embeddings()(input_ids.index_put((rows, pst_positions), torch.zeros_like(pst_positions)))
    pst = torch.zeros(inputs_embeds.shape[-1]) if pst_embedding is None else pst_embedding
    pst = (pst.to(inputs_embeds.device, torch.float32) * embedding_scale(decoder)).to(inputs_embeds.dtype)
    return inputs_embeds.index_put((rows, pst_positions), pst.expand(*pst_positions.shape, -1))


def run_layers(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, pst_positions: Tensor | None, *,
    tp_layers: Collection[int], capture: Collection[int], pst_embedding: Tensor | None = None,
    prefix: PrefixKV | None = None, mask_pst_layer: int | None = None, total_layers: int | None = None,
    whole_inputs: Collection[int] = (), packed: bool = True, skip_unread_rows: bool = True,
) -> dict[int, Tensor]:
    """One TP forward; returns {hidden_states index: last-token states [B, H]} for every index in `capture`.

    Layers after the deepest captured index never run. `total_layers` is L of the *unpruned* model (default:
    len(layers)); index L is the final-normed output and needs every layer. `pst_positions` [B, n] (None = a vanilla
    prompt); `prefix` holds the keys/values of the columns before `input_ids`; `whole_inputs`: layers whose input a
    LayerRecorder reads in full. `packed` / `skip_unread_rows` switch the speed mechanisms (same results)."""
    decoder = find_decoder(model)
    install_hooks(decoder)
    total_layers, deepest = total_layers or len(decoder.layers), max(capture)
    if deepest > len(decoder.layers):  # hidden_states[k] needs layers 0..k-1; the final-normed output [L] needs all L
        raise ValueError(f"hidden_states[{deepest}] needs {deepest} layers; this (pruned) model has {len(decoder.layers)}.")
    needs_norm = deepest == total_layers  # hidden_states[L] is the final-normed output: every layer runs
    last_layer = len(decoder.layers) - 1 if needs_norm else deepest - 1
    pst_positions = None if pst_positions is None else pst_positions.reshape(input_ids.shape[0], -1)

    # Positions count real tokens only, so a row's result does not depend on the padding its batch needs.
    past = prefix.length if prefix is not None else 0
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0) + past
    layout = RowLayout.of(attention_mask, packed=packed and packing.supports_packing(decoder), past=past)
    last_rows = layout.rows_of(last_token_positions(attention_mask))
    pst_rows = None if pst_positions is None else layout.rows_of(pst_positions)
    tp = _TPPass(
        tp_layers=frozenset(tp_layers), pst_rows=pst_rows, last_rows=last_rows,
        pst_sources=None if pst_positions is None else last_rows.repeat_interleave(pst_positions.shape[1]),
        capture_layers=frozenset(k for k in capture if k < total_layers), stop_after=None if needs_norm else deepest,
        mask_pst_layer=mask_pst_layer, pst_positions=pst_positions, past=past,
    )
    before_tp = layers_before_tp(tp_layers, last_layer, whole_inputs) if pst_rows is not None else []
    plan = RowSkipPlan.of(layout.shape, last_layer, last_rows, before_tp, pst_rows) if skip_unread_rows else None
    cache, attention_mask = (None, attention_mask) if prefix is None else prefix.for_batch(attention_mask, layout.shape[0])

    inputs_embeds = _embed(decoder, input_ids, pst_positions, pst_embedding)
    with packing.LAYOUT.active(layout), row_skipping.PLAN.active(plan), _TP.active(tp):
        try:
            output = decoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                             **cache_kwargs(decoder, cache))
            tp.captured[total_layers] = take_rows(output.last_hidden_state, last_rows)
        except _EarlyExit:
            pass
    return tp.captured


def tp_forward(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    pst_positions: Tensor | None,
    *,
    tp_start: int,
    tp_end: int,
    output_layer: int,
    pst_embedding: Tensor | None = None,
) -> Tensor:
    """Token Prepending on token ids; returns the last real token's state at `output_layer`, shape [B, H].

    `model` is a Hugging Face causal LM or its base model. The rows at `pst_positions` (LongTensor [B] or
    [B, n]; None = no TP) are embedded as `pst_embedding` (zeros by default) whatever id they hold.
    """
    if input_ids.shape != attention_mask.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} differ in shape.")
    total_layers = len(find_decoder(model).layers)
    exit_layer = resolve_layer(output_layer, total_layers)
    tp_layers = tp_layer_range(tp_start, tp_end, None) if pst_positions is not None else []
    captured = run_layers(model, input_ids, attention_mask, pst_positions, tp_layers=tp_layers, capture=[exit_layer],
                          pst_embedding=pst_embedding)
    return captured[exit_layer]
