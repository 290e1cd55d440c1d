"""Rows never read are not computed.

A decoder layer's row-wise parts (its MLP, the attention's query and output projections: `decoder.row_wise_parts`)
compute each row on its own, so where only some of a layer's output rows are read later, they run on those rows
alone:
  * in the last layer that runs, only the last tokens are read (the exit state, or the final norm's input);
  * in a layer just before a TP layer, every row but the <PST> slots, which the TP layer overwrites.
Each row never read gets a copy of one that is, so it stays finite (its query still attends to finite keys).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .decoder import row_wise_parts, take_rows
from .hf_compat import layer_output_hidden_states, with_output_hidden_states
from .pass_state import PassState


@dataclass
class RowSkipPlan:
    """Per layer, the rows read later and, for every row of the layer's output, which read row it copies."""

    shape: tuple[int, int]  # the layers' hidden states are [*shape, H]
    read: dict[int, tuple[Tensor, Tensor]]  # layer -> (rows read, `_spread` of them)

    @classmethod
    def of(cls, shape: tuple[int, int], last_layer: int, last_rows: Tensor, before_tp: Collection[int] = (),
           pst_rows: Tensor | None = None) -> RowSkipPlan:
        """`last_layer` reads `last_rows` only; the layers `before_tp` read every row but `pst_rows`."""
        total = shape[0] * shape[1]
        read = {}
        if before_tp and pst_rows is not None:
            kept = torch.ones(total, dtype=torch.bool, device=pst_rows.device).index_fill_(0, pst_rows, False)
            kept = kept.nonzero().squeeze(1)
            read = dict.fromkeys(before_tp, (kept, _spread(kept, total)))
        read[last_layer] = (last_rows, _spread(last_rows, total))
        return cls(shape, read)


PLAN: PassState[RowSkipPlan] = PassState("row_skipping")


def layers_before_tp(tp_layers: Collection[int], last_layer: int, whole_inputs: Collection[int] = ()) -> list[int]:
    """Layers (up to `last_layer`, the last that runs) whose <PST> rows are never read: the next layer is a TP layer
    and overwrites those rows, unless a recorder keeps its input whole (`whole_inputs`)."""
    return [i - 1 for i in tp_layers if 0 < i <= last_layer and i not in whole_inputs]


def _spread(read: Tensor, total: int) -> Tensor:
    """For each of `total` rows, the position in `read` of the row it takes (an unread row takes the first)."""
    spread = torch.zeros(total, dtype=torch.long, device=read.device)
    return spread.index_copy_(0, read, torch.arange(read.numel(), device=read.device))


class _ReadRowsOnly:
    """The pre- and post-hook of one row-wise part of decoder layer `index`."""

    def __init__(self, index: int) -> None:
        self.index = index

    def before(self, module: nn.Module, args: tuple):
        plan = PLAN.get()
        if plan is None or self.index not in plan.read or not args:
            return None
        rows, _ = plan.read[self.index]
        return (take_rows(args[0], rows).unsqueeze(0), *args[1:])

    def after(self, module: nn.Module, args: tuple, output):
        plan = PLAN.get()
        if plan is None or self.index not in plan.read or not args:
            return None
        _, spread = plan.read[self.index]
        computed = layer_output_hidden_states(output)  # [1, rows read, H]
        return with_output_hidden_states(output, computed[0].index_select(0, spread).view(*plan.shape, -1))


def install(decoder: nn.Module) -> None:
    for index, layer in enumerate(decoder.layers):
        for part in row_wise_parts(layer):
            hooks = _ReadRowsOnly(index)
            part.register_forward_pre_hook(hooks.before)
            part.register_forward_hook(hooks.after)
