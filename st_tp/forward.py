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
Rows never read: each layer's MLP and its attention's linear projections also get a hook pair that runs them on
the real tokens only, and the last layer's MLP on the last tokens only (see `_ReadRowsOnly`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Collection, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from st_tp.config import check_tp_range

if TYPE_CHECKING:
    from st_tp.prefix_cache import PrefixKV


@dataclass
class _ActivePass:
    """What the layer hooks need for one forward call. Lives in a ContextVar, never on the model."""

    rows: Tensor  # [B] arange, for row-wise gathers
    last_positions: Tensor  # [B] column of each row's last real token
    pst_positions: Tensor | None  # [B, n] columns of the <PST> slots, None = no TP
    tp_layers: frozenset[int]
    capture_layers: frozenset[int]  # hidden_states indices (< L) whose last-token state we keep
    stop_after: int | None  # the forward stops once hidden_states[stop_after] is captured
    mask_pst_layer: int | None = None  # layer whose attention hides the <PST> keys (paper A.5)
    real_tokens: Tensor | None = None  # flat [B * S] indices of the real tokens; None = no padding
    last_tokens: Tensor | None = None  # flat indices of each row's last real token
    last_layer: int = -1  # the last decoder layer that runs (its MLP output is read at the last tokens only)
    seq_len: int = 0
    gathered: tuple[Tensor, Tensor, Tensor] | None = None  # (input, rows, input rows): q/k/v share one input
    captured: dict[int, Tensor] = field(default_factory=dict)


_ACTIVE: ContextVar[_ActivePass | None] = ContextVar("st_tp_active_pass", default=None)
_INSTALL_LOCK = threading.Lock()


class _EarlyExit(Exception):
    """Raised by a post-hook once the requested exit layer is captured; the layers after it never run."""


def _hidden(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


class _PreHook:
    """Runs before decoder layer `index`: overwrites <PST> rows (TP) and captures hidden_states[0]."""

    def __init__(self, index: int) -> None:
        self.index = index

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict):
        active = _ACTIVE.get()
        if active is None:
            return None
        hidden = _hidden(args, kwargs)
        if self.index == 0 and 0 in active.capture_layers:
            active.captured[0] = hidden[active.rows, active.last_positions]
            if active.stop_after == 0:
                raise _EarlyExit
        changed = False
        if active.pst_positions is not None and self.index in active.tp_layers:
            hidden = _overwrite_pst(hidden, active.rows, active.pst_positions, active.last_positions)
            changed = True
        if active.mask_pst_layer == self.index and active.pst_positions is not None:
            kwargs = dict(kwargs, attention_mask=_mask_pst_keys(kwargs.get("attention_mask"), hidden, active))
            changed = True
        if not changed:
            return None
        if args:
            return (hidden, *args[1:]), kwargs
        return args, dict(kwargs, hidden_states=hidden)


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
            active.captured[k] = hidden[active.rows, active.last_positions]
            if active.stop_after == k:
                raise _EarlyExit
        return None


class _ReadRowsOnly:
    """Hooks on a row-wise part of a decoder layer (its MLP, the attention's linear projections): it runs on the rows
    whose output is ever read and gives zeros elsewhere. Padding rows are never read (no real token attends to them:
    their keys are masked); in the last layer that runs, only the last tokens' MLP output is. A row-wise module acts
    on each row alone, so the rows it computes come out as they would in the full batch."""

    def __init__(self, index: int, last_tokens_in_last_layer: bool) -> None:
        self.index = index
        self.last_tokens_in_last_layer = last_tokens_in_last_layer  # False for projections: keys need every token

    def _rows(self, active: _ActivePass | None) -> Tensor | None:
        if active is None:
            return None
        if self.last_tokens_in_last_layer and self.index == active.last_layer:
            return active.last_tokens
        return active.real_tokens

    def before(self, module: nn.Module, args: tuple):
        active = _ACTIVE.get()
        rows = self._rows(active)
        if rows is None or not args:
            return None
        hidden = args[0]
        if active.gathered is None or active.gathered[0] is not hidden or active.gathered[1] is not rows:
            active.gathered = (hidden, rows, hidden.reshape(-1, hidden.shape[-1])[rows].unsqueeze(0))
        return (active.gathered[2], *args[1:])

    def after(self, module: nn.Module, args: tuple, output):
        active = _ACTIVE.get()
        rows = self._rows(active)
        if rows is None or not args:
            return None
        out = output[0] if isinstance(output, tuple) else output
        batch, seq = active.rows.shape[0], active.seq_len
        full = out.new_zeros(batch * seq, out.shape[-1]).index_copy_(0, rows, out.reshape(-1, out.shape[-1]))
        full = full.view(batch, seq, out.shape[-1])
        return (full, *output[1:]) if isinstance(output, tuple) else full


def _overwrite_pst(hidden: Tensor, rows: Tensor, pst_positions: Tensor, last_positions: Tensor) -> Tensor:
    """h[b, pst[b, j]] = h[b, last[b]] for every <PST> slot j; out of place, so stored states stay intact."""
    n = pst_positions.shape[1]
    source = hidden[rows, last_positions].unsqueeze(1).expand(-1, n, -1)
    return hidden.index_put((rows.unsqueeze(1).expand(-1, n), pst_positions), source)


def _mask_pst_keys(mask, hidden: Tensor, active: _ActivePass):
    """A 4-D additive/boolean mask of this layer with the <PST> key columns hidden from every query but itself."""
    batch, q_len = hidden.shape[0], hidden.shape[1]
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
            mlp = getattr(layer, "mlp", None)
            row_wise = [(mlp, True)] if isinstance(mlp, nn.Module) else []
            attention = getattr(layer, "self_attn", None)
            if isinstance(attention, nn.Module):
                row_wise += [(child, False) for child in attention.children() if isinstance(child, nn.Linear)]
            for module, last_tokens_in_last_layer in row_wise:
                read_rows_only = _ReadRowsOnly(index, last_tokens_in_last_layer)
                module.register_forward_pre_hook(read_rows_only.before)
                module.register_forward_hook(read_rows_only.after)
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
) -> dict[int, Tensor]:
    """One TP forward; returns {hidden_states index: last-token states [B, H]} for every index in `capture`.

    Layers after the deepest captured index never run. `total_layers` is L of the *unpruned* model (default:
    len(layers)); index L is the final-normed output and needs every layer. Negative indices must already be
    resolved with `resolve_layer`. `prefix` holds the keys/values of the columns that come before `input_ids`.
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
    past = prefix.length if prefix is not None else 0
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0) + past
    cache = None
    if prefix is not None:
        cache = prefix.expand(input_ids.shape[0])
        attention_mask = torch.cat([attention_mask.new_ones(attention_mask.shape[0], past), attention_mask], dim=1)

    seq_len = input_ids.shape[1]
    real = attention_mask[:, -seq_len:].reshape(-1).bool()
    active = _ActivePass(
        rows=rows,
        last_positions=last,
        pst_positions=pst_positions,
        tp_layers=frozenset(tp_layers),
        capture_layers=frozenset(k for k in capture if k < total_layers),
        stop_after=None if needs_norm else deepest,
        mask_pst_layer=mask_pst_layer,
        # Rows whose output is never read are skipped (see _ReadRowsOnly): padding, and in the last layer's MLP all but
        # the last tokens (hidden_states[L] is read there too: the final norm is row-wise).
        real_tokens=None if bool(real.all()) else real.nonzero().squeeze(1),
        last_tokens=rows * seq_len + last,
        last_layer=(len(decoder.layers) if needs_norm else deepest) - 1,
        seq_len=seq_len,
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
        active.captured[total_layers] = output.last_hidden_state[rows, last]
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
