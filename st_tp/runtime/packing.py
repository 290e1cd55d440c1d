"""Packed rows: padding is never computed.

HF builds its masks and rotary embeddings for the padded batch [B, S]. While a `RowLayout` with packing is active,
a pre-hook on each decoder layer packs the hidden states and every per-token layer input ([B, S, ...]) into the real
tokens [1, N], so norms, projections, MLPs and residuals run on real tokens only. Only the attention kernel needs the
padded batch: the model's 'sdpa' or 'eager' kernel is wrapped (`st_tp_padded_<name>`, registered through
AttentionInterface) to lay q/k/v out as that batch, call the original kernel with HF's padded mask, and pack its
output. Other implementations (flash, flex) run padded. Outside a packed pass every hook and the wrapper do nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .decoder import real_token_indices
from .hf_compat import (
    attention_function,
    attention_implementation,
    layer_hidden_states,
    register_attention,
    set_attention_implementation,
    with_layer_hidden_states,
)
from .pass_state import PassState

_WRAPPED = "st_tp_padded_"  # + the original implementation's name
_WRAPPABLE = ("sdpa", "eager")


@dataclass
class RowLayout:
    """How the decoder layers lay out a [B, S] batch (after `past` cached prefix columns) as rows: the real tokens
    packed as [1, N] (`real` set), or the padded batch [B, S]. Row indices of the layers' hidden states, flattened to
    [rows, H], are computed with `rows_of`."""

    batch: int
    seq_len: int
    past: int  # prefix-cache columns before the batch's own (their keys come first in every layer)
    real: Tensor | None  # flat [B * S] indices of the real tokens when packed; None = padded
    flat_to_row: Tensor  # [B * S] row of each padded slot (a padding slot of a packed layout: a neighbouring token's)
    _packed_inputs: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)  # id -> (padded, packed)
    _unpack_indices: dict[int, Tensor] = field(default_factory=dict)  # leading columns -> `unpack_index`

    @classmethod
    def of(cls, attention_mask: Tensor, *, packed: bool, past: int = 0) -> RowLayout:
        batch, seq_len = attention_mask.shape
        is_real = attention_mask.reshape(-1).bool()
        if packed and not bool(is_real.all()):  # nothing to gain from packing a batch without padding
            flat_to_row = (is_real.long().cumsum(0) - 1).clamp(min=0)  # left padding's slots: row 0
            return cls(batch, seq_len, past, real_token_indices(attention_mask), flat_to_row)
        return cls(batch, seq_len, past, None, torch.arange(batch * seq_len, device=attention_mask.device))

    @property
    def packed(self) -> bool:
        return self.real is not None

    @property
    def shape(self) -> tuple[int, int]:
        """The layers' hidden states are [*shape, H]."""
        return (1, self.real.numel()) if self.packed else (self.batch, self.seq_len)

    @property
    def num_rows(self) -> int:
        return self.shape[0] * self.shape[1]

    def rows_of(self, columns: Tensor) -> Tensor:
        """Rows of the tokens at `columns` ([B] or [B, n], one row of the batch each), flattened."""
        batch_rows = torch.arange(self.batch, device=columns.device).view(-1, *[1] * (columns.dim() - 1))
        return self.flat_to_row[(batch_rows * self.seq_len + columns).reshape(-1)]

    def pack_input(self, value: Tensor) -> Tensor:
        """A per-token layer input [B, S, ...] packed like the hidden states; once per pass (every layer gets the same
        padded tensor, which is kept too, so its id is never reused)."""
        if id(value) not in self._packed_inputs:
            self._packed_inputs[id(value)] = (value, pack(value, self.real))
        return self._packed_inputs[id(value)][1]

    def unpack_index(self, past: int) -> Tensor:
        """Rows of [past + N] (`past` prefix-cache columns, then the packed tokens) that lay out the padded batch
        [B * (past + S)]. A padding slot takes a neighbouring real token: as a key it is masked and as a query never
        read, so it only has to be finite, and one gather beats zeros plus a scatter."""
        if past not in self._unpack_indices:
            tokens = self.flat_to_row.view(self.batch, self.seq_len) + past
            prefix = torch.arange(past, device=tokens.device).expand(self.batch, past)
            self._unpack_indices[past] = torch.cat([prefix, tokens], dim=1).reshape(-1)
        return self._unpack_indices[past]


LAYOUT: PassState[RowLayout] = PassState("packing")


def pack(padded: Tensor, real: Tensor) -> Tensor:
    """[B, S, ...] -> [1, N, ...]: the real tokens (flat indices `real` into B * S), in order."""
    return padded.reshape(-1, *padded.shape[2:]).index_select(0, real).unsqueeze(0)  # index_select: ~4x `[real]` on CPU


def unpack(packed: Tensor, real: Tensor, batch: int, seq_len: int) -> Tensor:
    """[1, N, ...] -> [B, S, ...], zeros at padding (finite: masked keys must not hold NaN or inf)."""
    rows = packed[0]
    full = rows.new_zeros(batch * seq_len, *rows.shape[1:]).index_copy_(0, real, rows)
    return full.view(batch, seq_len, *rows.shape[1:])


def _pack_layer_inputs(module: nn.Module, args: tuple, kwargs: dict):
    """Pre-hook of every decoder layer: its hidden states (padded only at the first layer) and per-token inputs
    (rotary embeddings, position ids: any tensor, or tuple of tensors, laid out [B, S, ...]) packed; the mask stays
    padded for the attention kernel. New containers, so what HF passed stays as it was."""
    layout = LAYOUT.get()
    if layout is None or not layout.packed:
        return None

    def packed(value):
        if isinstance(value, tuple):
            return tuple(packed(v) for v in value)
        if isinstance(value, Tensor) and value.dim() >= 2 and tuple(value.shape[:2]) == (layout.batch, layout.seq_len):
            return layout.pack_input(value)
        return value

    hidden = layer_hidden_states(args, kwargs)
    if tuple(hidden.shape[:2]) == (layout.batch, layout.seq_len):  # the first layer: the embeddings
        hidden = pack(hidden, layout.real)
    args = args[:1] + tuple(packed(value) for value in args[1:])
    kwargs = {name: value if name in ("attention_mask", "hidden_states") else packed(value) for name, value in kwargs.items()}
    return with_layer_hidden_states(args, kwargs, hidden)


def _padded_attention(implementation: str):
    """The attention registered as `st_tp_padded_<implementation>`: in a packed pass it lays q/k/v out ([1, heads,
    past + N, d]) as the padded batch, runs the original kernel with HF's padded mask, and packs the output."""

    def attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask, **kwargs):
        original = attention_function(implementation, module)
        layout = LAYOUT.get()
        if layout is None or not layout.packed:
            return original(module, query, key, value, attention_mask, **kwargs)

        def padded(states: Tensor, past: int) -> Tensor:  # [1, heads, past + N, d] -> [B, heads, past + S, d], one gather
            rows = states[0].transpose(0, 1).index_select(0, layout.unpack_index(past))
            return rows.view(layout.batch, past + layout.seq_len, *rows.shape[1:]).transpose(1, 2)

        # Queries are the batch's own tokens; keys and values follow the prefix cache's columns, shared by every row.
        output, weights = original(module, padded(query, 0), padded(key, layout.past), padded(value, layout.past),
                                   attention_mask, **kwargs)
        return pack(output, layout.real), weights  # output: [B, S, heads, d]

    return attention


# Registered under new names at import (so a model pickled to a worker process finds them there too); the original
# implementations are untouched.
for _implementation in _WRAPPABLE:
    register_attention(_WRAPPED + _implementation, _padded_attention(_implementation), masks_like=_implementation)


def supports_packing(decoder: nn.Module) -> bool:
    """Route the decoder's attention through the padded-attention wrapper (a no-op outside a packed pass). False when
    its implementation is one the wrapper does not cover: the pass then runs padded."""
    implementation = attention_implementation(decoder)
    if implementation in _WRAPPABLE:
        set_attention_implementation(decoder, _WRAPPED + implementation)
        implementation = attention_implementation(decoder)
    return implementation.startswith(_WRAPPED)


def install(decoder: nn.Module) -> None:
    """The packing pre-hook on every decoder layer; it must run before any hook that reads rows (TP)."""
    for layer in decoder.layers:
        layer.register_forward_pre_hook(_pack_layer_inputs, with_kwargs=True)
