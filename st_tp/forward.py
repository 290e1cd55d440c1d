"""The Token Prepending forward pass for any Hugging Face decoder whose base model has a `layers` list.

Nothing is copied from modeling files. Each decoder layer gets one pre-hook and one post-hook, installed once;
they act only while a TP pass is active in the *current context* (a ContextVar), so concurrent forwards in
other threads never see each other's positions, and the stock model keeps working as before.

Semantics (measured on the official code, ../shared/golden/README.md):
  * before decoder layer i, for each i in the TP layers (tp_start <= i < tp_end), the <PST> row of the
    layer's input is overwritten with the same sequence's last real token state;
  * output_layer indexes HF's hidden_states: 0 = embeddings, k = input of layer k, L (or -1) = final-normed
    output, -2 = input of the last layer; the embedding is the state of the last real token.
Early exit: the post-hook of layer k-1 records the state and stops the forward, so layers k.. never run.

Packed rows: padding is never computed. HF builds its masks and rotary embeddings for the padded batch [B, S]; the
layers' pre-hooks pack the hidden states and the per-token layer inputs into the real tokens [1, N], so norms,
projections, MLPs and residuals run on real tokens only. Only the attention kernel needs the padded batch:
the model's attention implementation ('sdpa' or 'eager') is wrapped through transformers' AttentionInterface
(`_padded_attention`) to lay q/k/v out as that batch, call the original kernel with HF's padded mask, and pack its
output. Other implementations (flash, flex) run padded.
Rows never read are not computed either (`_ReadRowsOnly`): the query and output projections and the MLP of the last
layer that runs see its last tokens only, and those of a layer before a TP layer skip the <PST> rows it overwrites.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Collection, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from st_tp.config import check_tp_range

if TYPE_CHECKING:
    from st_tp.prefix_cache import PrefixKV


@dataclass
class _ActivePass:
    """What the layer hooks need for one forward call. Lives in a ContextVar, never on the model.

    Row indices (`last_rows`, `pst_rows`) index the layers' hidden states flattened to [rows, H]: the packed real
    tokens when `packed` is set, the padded batch [B * S] otherwise."""

    batch: int
    seq_len: int
    packed: Tensor | None  # flat [B * S] indices of the real tokens when the layers run packed; None = padded
    padded_to_packed: Tensor | None  # [B * S] packed row of each padded slot (a padding slot: a neighbouring token's)
    last_rows: Tensor  # [B] row of each sequence's last real token
    pst_rows: Tensor | None  # [B * n] rows of the <PST> slots (with `pst_sources`, their last tokens); None = no TP
    pst_sources: Tensor | None
    tp_layers: frozenset[int]
    capture_layers: frozenset[int]  # hidden_states indices (< L) whose last-token state we keep
    stop_after: int | None  # the forward stops once hidden_states[stop_after] is captured
    read_rows: dict[int, tuple[Tensor, Tensor]]  # layer -> (rows read later, `_spread`): see _ReadRowsOnly
    mask_pst_layer: int | None = None  # layer whose attention hides the <PST> keys (paper A.5)
    pst_positions: Tensor | None = None  # [B, n] columns of the <PST> slots (the A.5 mask works on columns)
    packed_inputs: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)  # id -> (padded, packed) per input
    unpack_indices: dict[int, Tensor] = field(default_factory=dict)  # prefix length -> `_unpack_index`
    captured: dict[int, Tensor] = field(default_factory=dict)

    @property
    def layout(self) -> tuple[int, int]:
        """The layers' hidden states are [*layout, H]: (1, N) packed, (B, S) padded."""
        return (1, self.packed.numel()) if self.packed is not None else (self.batch, self.seq_len)


_ACTIVE: ContextVar[_ActivePass | None] = ContextVar("st_tp_active_pass", default=None)
_INSTALL_LOCK = threading.Lock()
_PACKED_IMPLEMENTATIONS = ("sdpa", "eager")  # attention implementations whose kernel st_tp wraps (see _padded_attention)
_WRAPPED = "st_tp_padded_"  # + the original implementation's name


class _EarlyExit(Exception):
    """Raised by a post-hook once the requested exit layer is captured; the layers after it never run."""


def _hidden(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _flat(hidden: Tensor) -> Tensor:
    return hidden.reshape(-1, hidden.shape[-1])


def _take_rows(hidden: Tensor, rows: Tensor) -> Tensor:
    """[rows, H] from hidden states flattened to [B * S, H] (index_select: ~4x `[rows]` on CPU)."""
    return _flat(hidden).index_select(0, rows)


def real_token_indices(attention_mask: Tensor) -> Tensor:
    """Flat [B * S] indices of the real tokens of a [B, S] mask, in order: what `pack` keeps."""
    return attention_mask.reshape(-1).nonzero().squeeze(1)


def pack(padded: Tensor, real: Tensor) -> Tensor:
    """[B, S, ...] -> [1, N, ...]: the real tokens (flat indices `real` into B * S), in order."""
    return padded.reshape(-1, *padded.shape[2:]).index_select(0, real).unsqueeze(0)  # index_select: ~4x `[real]` on CPU


def unpack(packed: Tensor, real: Tensor, batch: int, seq_len: int) -> Tensor:
    """[1, N, ...] -> [B, S, ...], zeros at padding (finite: masked keys must not hold NaN or inf)."""
    rows = packed[0]
    full = rows.new_zeros(batch * seq_len, *rows.shape[1:]).index_copy_(0, real, rows)
    return full.view(batch, seq_len, *rows.shape[1:])


class _PreHook:
    """Runs before decoder layer `index`: packs the layer's inputs, overwrites <PST> rows (TP), captures
    hidden_states[0], and hides the <PST> keys in the A.5 ablation's layer."""

    def __init__(self, index: int) -> None:
        self.index = index

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict):
        active = _ACTIVE.get()
        if active is None:
            return None
        hidden = _hidden(args, kwargs)
        changed = False
        if active.packed is not None:  # HF hands every layer the padded batch's rotary embeddings and position ids
            if tuple(hidden.shape[:2]) == (active.batch, active.seq_len):  # the first layer: hidden states too
                hidden = pack(hidden, active.packed)
            rest, kwargs = _packed_layer_inputs(args[1:], kwargs, active)
            args, changed = args[:1] + rest, True
        if self.index == 0 and 0 in active.capture_layers:
            active.captured[0] = _take_rows(hidden, active.last_rows)
            if active.stop_after == 0:
                raise _EarlyExit
        if active.pst_rows is not None and self.index in active.tp_layers:
            flat = _flat(hidden)  # out of place, so stored states stay intact
            hidden = flat.index_copy(0, active.pst_rows, _take_rows(hidden, active.pst_sources)).view_as(hidden)
            changed = True
        if active.mask_pst_layer == self.index and active.pst_positions is not None:
            kwargs = dict(kwargs, attention_mask=_mask_pst_keys(kwargs.get("attention_mask"), hidden, active))
            changed = True
        if not changed:
            return None
        if args:
            return (hidden, *args[1:]), kwargs
        return args, dict(kwargs, hidden_states=hidden)


def _packed_layer_inputs(args: tuple, kwargs: dict, active: _ActivePass) -> tuple[tuple, dict]:
    """The layer's other per-token inputs (rotary embeddings, position ids: any tensor, or tuple of tensors, laid out
    [B, S, ...]) packed like the hidden states; the mask stays padded for the attention kernel. New containers, so
    what HF passed stays as it was. Each padded tensor is packed once per pass: every layer gets the same one."""

    def packed(value):
        if isinstance(value, tuple):
            return tuple(packed(v) for v in value)
        if not isinstance(value, Tensor) or value.dim() < 2 or tuple(value.shape[:2]) != (active.batch, active.seq_len):
            return value
        if id(value) not in active.packed_inputs:  # the padded tensor is kept too, so its id is never reused
            active.packed_inputs[id(value)] = (value, pack(value, active.packed))
        return active.packed_inputs[id(value)][1]

    kwargs = {name: value if name in ("attention_mask", "hidden_states") else packed(value) for name, value in kwargs.items()}
    return tuple(packed(value) for value in args), kwargs


class _PostHook:
    """Runs after decoder layer `index`: its output is hidden_states[index + 1]."""

    def __init__(self, index: int) -> None:
        self.index = index

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict, output):
        active = _ACTIVE.get()
        if active is None:
            return None
        k = self.index + 1
        if k in active.capture_layers:
            hidden = output[0] if isinstance(output, tuple) else output
            active.captured[k] = _take_rows(hidden, active.last_rows)
            if active.stop_after == k:
                raise _EarlyExit
        return None


class _ReadRowsOnly:
    """Hooks on a row-wise part of a decoder layer (its MLP, the attention's query and output projections) whose
    output is read at some rows only: in the last layer that runs, the last tokens; in a layer before a TP layer,
    every row but the <PST> slots, which the TP layer overwrites. There the part runs on those rows alone, and each
    row never read gets a copy of one that is, so it stays finite (its query still attends to finite keys)."""

    def __init__(self, index: int) -> None:
        self.index = index

    def before(self, module: nn.Module, args: tuple):
        active = _ACTIVE.get()
        if active is None or self.index not in active.read_rows or not args:
            return None
        rows, _ = active.read_rows[self.index]
        return (_take_rows(args[0], rows).unsqueeze(0), *args[1:])

    def after(self, module: nn.Module, args: tuple, output):
        active = _ACTIVE.get()
        if active is None or self.index not in active.read_rows or not args:
            return None
        _, spread = active.read_rows[self.index]
        out = output[0] if isinstance(output, tuple) else output  # [1, rows read, H]
        full = out[0].index_select(0, spread).view(*active.layout, -1)
        return (full, *output[1:]) if isinstance(output, tuple) else full


def _spread(read: Tensor, total: int) -> Tensor:
    """For each of `total` rows, the position in `read` of the row it takes (an unread row takes the first)."""
    spread = torch.zeros(total, dtype=torch.long, device=read.device)
    return spread.index_copy_(0, read, torch.arange(read.numel(), device=read.device))


def _padded_attention(implementation: str):
    """The attention function registered as `st_tp_padded_<implementation>`: in a packed pass it lays q/k/v out
    ([1, heads, N, d]; keys and values after a prefix cache's columns) as the padded batch, runs the original kernel
    with HF's padded mask, and packs the output; otherwise it is the original kernel."""

    def attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask, **kwargs):
        original = _eager_attention(module) if implementation == "eager" else ALL_ATTENTION_FUNCTIONS[implementation]
        active = _ACTIVE.get()
        if active is None or active.packed is None:
            return original(module, query, key, value, attention_mask, **kwargs)

        def padded(states: Tensor) -> Tensor:  # [1, heads, past + N, d] -> [B, heads, past + S, d], one gather
            past = states.shape[2] - active.packed.numel()  # keys/values: the prefix cache's columns, shared by every row
            rows = states[0].transpose(0, 1).index_select(0, _unpack_index(active, past))
            return rows.view(active.batch, past + active.seq_len, *rows.shape[1:]).transpose(1, 2)

        output, weights = original(module, padded(query), padded(key), padded(value), attention_mask, **kwargs)
        return pack(output, active.packed), weights  # output: [B, S, heads, d]

    return attention


def _unpack_index(active: _ActivePass, past: int) -> Tensor:
    """Rows of [past + N] (a prefix cache's columns, then the packed tokens) that lay out the padded batch
    [B * (past + S)]. A padding slot takes a neighbouring real token: as a key it is masked and as a query never
    read, so it only has to be finite, and one gather beats zeros plus a scatter."""
    if past not in active.unpack_indices:
        tokens = active.padded_to_packed.view(active.batch, active.seq_len) + past
        prefix = torch.arange(past, device=tokens.device).expand(active.batch, past)
        active.unpack_indices[past] = torch.cat([prefix, tokens], dim=1).reshape(-1)
    return active.unpack_indices[past]


def _eager_attention(module: nn.Module):
    """The model's own eager attention (each modeling file defines one: softcapping, sinks, ...)."""
    return sys.modules[type(module).__module__].eager_attention_forward


# Registered under new names at import (so a model pickled to a worker process finds them there too); the original
# implementations are untouched.
for _implementation in _PACKED_IMPLEMENTATIONS:
    AttentionInterface.register(_WRAPPED + _implementation, _padded_attention(_implementation))
    AttentionMaskInterface.register(_WRAPPED + _implementation, ALL_MASK_ATTENTION_FUNCTIONS[_implementation])


def use_packed_attention(decoder: nn.Module) -> bool:
    """Route the decoder's attention through `_padded_attention` (the stock model is unaffected outside a TP pass).
    False when its implementation is one the wrapper does not cover: the pass then runs padded."""
    config = decoder.config
    if config._attn_implementation in _PACKED_IMPLEMENTATIONS:
        config._attn_implementation = _WRAPPED + config._attn_implementation  # not serialized with the model
    return str(config._attn_implementation).startswith(_WRAPPED)


def _mask_pst_keys(mask, hidden: Tensor, active: _ActivePass):
    """A 4-D additive/boolean mask of this layer with the <PST> key columns hidden from every query but itself."""
    batch, q_len = active.batch, active.seq_len  # the mask is the padded batch's, whether the rows are packed or not
    if mask is None:  # SDPA's implicit causal mask: materialise it (no cache is used with this ablation)
        mask = torch.ones(q_len, q_len, dtype=torch.bool, device=hidden.device).tril()[None, None]
    if mask.dim() != 4:
        raise ValueError(
            "mask_pst_first_layer needs a 4-D attention mask (attn_implementation 'eager' or 'sdpa'); this model "
            f"passed {type(mask).__name__} to its layers. Load it with model_kwargs={{'attn_implementation': 'eager'}}."
        )
    mask = mask.expand(batch, -1, -1, -1).clone()
    offset = mask.shape[-1] - q_len  # keys from a prefix cache come first
    hide = torch.ones(batch, q_len, active.pst_positions.shape[1], dtype=torch.bool, device=hidden.device)
    query_is_pst = torch.arange(q_len, device=hidden.device)[None, :, None] == active.pst_positions[:, None, :]
    hide &= ~query_is_pst  # a <PST> still attends to itself, so no query row is left fully masked
    cols = (active.pst_positions + offset)[:, None, :].expand(-1, q_len, -1)
    blocked = torch.zeros_like(mask[:, 0], dtype=torch.bool).scatter(-1, cols, hide)
    if mask.dtype == torch.bool:
        mask &= ~blocked[:, None]
    else:
        mask = mask.masked_fill(blocked[:, None], torch.finfo(mask.dtype).min)
    return mask


def find_decoder(model: nn.Module) -> nn.Module:
    """The base decoder (the module that owns `layers`, `get_input_embeddings` and the final norm)."""
    candidates = [model, getattr(model, "model", None), getattr(model, "language_model", None)]
    candidates.append(getattr(candidates[1], "language_model", None))
    for candidate in candidates:
        if candidate is not None and isinstance(getattr(candidate, "layers", None), nn.ModuleList):
            if getattr(getattr(candidate, "config", None), "is_encoder_decoder", False):
                break
            return candidate
    raise ValueError(
        f"{type(model).__name__} is not a supported decoder-only model: Token Prepending needs a base model that "
        "exposes its decoder layers as `.layers` (nn.ModuleList) and its embeddings via `get_input_embeddings()`, "
        "as Llama, Mistral, Qwen2/3, Gemma/Gemma2/Gemma3, Phi-3 and OLMo2 do. Encoder and encoder-decoder models "
        "are not supported."
    )


def read_rows_only_parts(layer: nn.Module) -> list[nn.Module]:
    """The row-wise parts of a decoder layer that compute only the rows read later (`_ReadRowsOnly`): its MLP and its
    attention's query and output projections, where the layer has them."""
    attention = getattr(layer, "self_attn", None)
    parts = [getattr(layer, "mlp", None), getattr(attention, "q_proj", None), getattr(attention, "o_proj", None)]
    return [part for part in parts if isinstance(part, nn.Module)]


def layers_before_tp(tp_layers: Collection[int], last_layer: int, whole_inputs: Collection[int] = ()) -> list[int]:
    """Layers (up to `last_layer`, the last that runs) whose <PST> rows are never read, so `_ReadRowsOnly` skips them:
    the next layer is a TP layer and overwrites those rows, unless a recorder keeps its input whole (`whole_inputs`)."""
    return [i - 1 for i in tp_layers if 0 < i <= last_layer and i not in whole_inputs]


def install_hooks(decoder: nn.Module) -> None:
    """Attach the TP hooks to every decoder layer once; idempotent and thread-safe."""
    with _INSTALL_LOCK:
        if getattr(decoder, "_st_tp_hooked_layers", None) == len(decoder.layers):
            return
        for index, layer in enumerate(decoder.layers):
            if any(isinstance(h, _PreHook) for h in layer._forward_pre_hooks.values()):
                continue
            layer.register_forward_pre_hook(_PreHook(index), with_kwargs=True)
            layer.register_forward_hook(_PostHook(index), with_kwargs=True)
            for part in read_rows_only_parts(layer):
                hooks = _ReadRowsOnly(index)
                part.register_forward_pre_hook(hooks.before)
                part.register_forward_hook(hooks.after)
        decoder._st_tp_hooked_layers = len(decoder.layers)


def resolve_layer(output_layer: int, total_layers: int) -> int:
    """hidden_states index in 0..L, from an index that may be negative (-1 = L = final-normed output)."""
    if not -(total_layers + 1) <= output_layer <= total_layers:
        raise ValueError(
            f"output_layer={output_layer} is outside the model, which has {total_layers} decoder layers. Allowed: "
            f"{-(total_layers + 1)}..{total_layers} (0 = embeddings, k = input of layer k, {total_layers} or -1 = "
            "final-normed output, -2 = input of the last layer)."
        )
    return output_layer % (total_layers + 1)


def last_token_positions(attention_mask: Tensor) -> Tensor:
    """Column of the last real token per row; right for left padding, right padding and none."""
    columns = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.bool() * columns).argmax(dim=1)


@contextlib.contextmanager
def _active(active: _ActivePass) -> Iterator[_ActivePass]:
    token = _ACTIVE.set(active)
    try:
        yield active
    finally:
        _ACTIVE.reset(token)


def run_layers(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    pst_positions: Tensor | None,
    *,
    tp_layers: Collection[int],
    capture: Collection[int],
    pst_embedding: Tensor | None = None,
    prefix: PrefixKV | None = None,
    mask_pst_layer: int | None = None,
    total_layers: int | None = None,
    whole_inputs: Collection[int] = (),
) -> dict[int, Tensor]:
    """One TP forward; returns {hidden_states index: last-token states [B, H]} for every index in `capture`.

    Layers after the deepest captured index never run. `total_layers` is L of the *unpruned* model (default:
    len(layers)); index L is the final-normed output and needs every layer. Negative indices must already be
    resolved with `resolve_layer`. `prefix` holds the keys/values of the columns that come before `input_ids`.
    `whole_inputs`: layers whose input is read in full (by a LayerRecorder), <PST> rows included.
    """
    decoder = find_decoder(model)
    install_hooks(decoder)
    total_layers = len(decoder.layers) if total_layers is None else total_layers
    deepest = max(capture)
    if deepest > len(decoder.layers) and deepest != total_layers:
        raise ValueError(f"hidden_states[{deepest}] needs {deepest} layers; this (pruned) model has {len(decoder.layers)}.")
    needs_norm = deepest == total_layers  # hidden_states[L] is the final-normed output
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    if pst_positions is not None and pst_positions.dim() == 1:
        pst_positions = pst_positions.unsqueeze(1)
    last = last_token_positions(attention_mask)

    embeddings = decoder.get_input_embeddings()
    if pst_positions is not None:  # the <PST> slots may hold any id (even one outside the vocabulary)
        input_ids = input_ids.index_put((rows.unsqueeze(1).expand_as(pst_positions), pst_positions), torch.zeros_like(pst_positions))
    inputs_embeds = embeddings(input_ids)
    if pst_positions is not None:
        pst = torch.zeros(inputs_embeds.shape[-1]) if pst_embedding is None else pst_embedding
        # Scaled-embedding models (Gemma) scale inside the embedding module: scale <PST> as if it were a row.
        pst = (pst.to(inputs_embeds.device, torch.float32) * getattr(embeddings, "embed_scale", 1.0)).to(inputs_embeds.dtype)
        n = pst_positions.shape[1]
        inputs_embeds = inputs_embeds.index_put(
            (rows.unsqueeze(1).expand(-1, n), pst_positions), pst.expand(input_ids.shape[0], n, -1)
        )

    # Positions count real tokens only, so a row's result does not depend on the padding its batch needs.
    batch, seq_len = input_ids.shape
    past = prefix.length if prefix is not None else 0
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0) + past
    real = attention_mask.reshape(-1).bool()
    packed = None if bool(real.all()) or not use_packed_attention(decoder) else real_token_indices(attention_mask)
    # Rows of the last tokens and <PST> slots in the layers' layout: packed real tokens, or the flat padded batch.
    flat_to_row = real.long().cumsum(0) - 1 if packed is not None else torch.arange(batch * seq_len, device=real.device)
    last_rows = flat_to_row[rows * seq_len + last]
    pst_rows = pst_sources = None
    if pst_positions is not None:
        pst_rows = flat_to_row[(rows.unsqueeze(1) * seq_len + pst_positions).reshape(-1)]
        pst_sources = last_rows.repeat_interleave(pst_positions.shape[1])
    cache = None
    if prefix is not None:  # packed keys follow one copy of the prefix; padded rows each need their own
        cache = prefix.expand(1 if packed is not None else batch)
        attention_mask = torch.cat([attention_mask.new_ones(batch, past), attention_mask], dim=1)

    # Rows read later, per layer whose row-wise parts may skip the others (_ReadRowsOnly). hidden_states[L] is read at
    # the last tokens too (the final norm is row-wise), so L trims the last layer alike.
    last_layer = (len(decoder.layers) if needs_norm else deepest) - 1
    total_rows = packed.numel() if packed is not None else batch * seq_len
    before_tp = layers_before_tp(tp_layers, last_layer, whole_inputs) if pst_rows is not None else []
    read_rows = {}
    if before_tp:
        kept = torch.ones(total_rows, dtype=torch.bool, device=pst_rows.device).index_fill_(0, pst_rows, False)
        kept = kept.nonzero().squeeze(1)
        read_rows = dict.fromkeys(before_tp, (kept, _spread(kept, total_rows)))
    read_rows[last_layer] = (last_rows, _spread(last_rows, total_rows))

    active = _ActivePass(
        batch=batch,
        seq_len=seq_len,
        packed=packed,
        padded_to_packed=flat_to_row.clamp(min=0) if packed is not None else None,  # left padding's slots: row 0
        last_rows=last_rows,
        pst_rows=pst_rows,
        pst_sources=pst_sources,
        tp_layers=frozenset(tp_layers),
        capture_layers=frozenset(k for k in capture if k < total_layers),
        stop_after=None if needs_norm else deepest,
        read_rows=read_rows,
        mask_pst_layer=mask_pst_layer,
        pst_positions=pst_positions,
    )
    with _active(active):
        try:
            output = decoder(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=cache is not None,
            )
        except _EarlyExit:
            output = None
    if needs_norm:
        active.captured[total_layers] = _take_rows(output.last_hidden_state, last_rows)
    return active.captured


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
    if pst_positions is not None:
        check_tp_range(tp_start, tp_end)
    if input_ids.shape != attention_mask.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} differ in shape.")
    exit_layer = resolve_layer(output_layer, len(find_decoder(model).layers))
    captured = run_layers(
        model,
        input_ids,
        attention_mask,
        pst_positions,
        tp_layers=range(tp_start, tp_end),
        capture=[exit_layer],
        pst_embedding=pst_embedding,
    )
    return captured[exit_layer]
