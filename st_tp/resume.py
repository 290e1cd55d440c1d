"""Resuming a recorded pass at a later layer: what lets the sweep share the layers before each tp_end.

Runs with different tp_end are identical up to the input of layer tp_end (before its <PST> overwrite). So one TP
pass at the largest tp_end, recorded by `LayerRecorder`, serves every smaller tp_end: `continue_layers` runs the rest
without TP from the recorded input and the recorded layer kwargs (masks, rotary embeddings, which do not depend on
TP), so it works for any architecture the TP hooks support. `TPEndRecorder` puts the two together as the TP runner's
`recorder=` hook; the TP hooks themselves know nothing of it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator, Sequence

from torch import Tensor, nn

from st_tp.runtime import packing
from st_tp.runtime.batching import TemplateBatch
from st_tp.runtime.decoder import final_norm, find_decoder, last_token_positions, take_rows
from st_tp.runtime.forward import install_hooks
from st_tp.runtime.hf_compat import layer_hidden_states, layer_output_hidden_states, with_cache
from st_tp.runtime.packing import RowLayout
from st_tp.runtime.prefix_cache import PrefixKV


class LayerRecorder:
    """While active (`with LayerRecorder(model, layers):`), keeps each listed layer's input as it arrives (before any
    <PST> overwrite) and every layer's call arguments."""

    def __init__(self, model: nn.Module, save_inputs: Collection[int]) -> None:
        self.decoder = find_decoder(model)
        self.save_inputs = frozenset(save_inputs)
        self.inputs: dict[int, Tensor] = {}
        self.calls: dict[int, tuple[tuple, dict]] = {}
        self._handles: list = []

    def __enter__(self) -> LayerRecorder:
        install_hooks(self.decoder)  # the TP hooks first, so that `prepend` below really puts the recorder before them
        for index, layer in enumerate(self.decoder.layers):
            self._handles.append(layer.register_forward_pre_hook(self._hook(index), with_kwargs=True, prepend=True))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, index: int):
        def record(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if index in self.save_inputs:
                self.inputs[index] = layer_hidden_states(args, kwargs)
            self.calls[index] = (args[1:], kwargs)

        return record


def continue_layers(
    model: nn.Module, recorder: LayerRecorder, start: int, attention_mask: Tensor, prefix: PrefixKV | None
) -> dict[int, Tensor]:
    """Run layers start.. (no TP) from the input recorded at `start`; {hidden_states index: last-token states} for
    every index after `start`, the final-normed output included."""
    decoder = find_decoder(model)
    norm = final_norm(decoder)
    # Laid out as the recorded pass was (st_tp.runtime.packing): padding is never computed, and the recorded per-token
    # inputs (rotary embeddings, still padded) are packed again by the layers' packing hook.
    layout = RowLayout.of(attention_mask, packed=packing.supports_packing(decoder), past=prefix.length if prefix else 0)
    last_rows = layout.rows_of(last_token_positions(attention_mask))
    hidden = recorder.inputs[start]
    # The recorded cache already holds the full run's keys; a resumed run starts again from the bare prefix (one copy
    # when packed, one per padded row). The recorded mask already has the prefix columns in front.
    cache = prefix.for_batch(attention_mask, layout.shape[0])[0] if prefix is not None else None
    captured = {}
    with packing.LAYOUT.active(layout):
        for index in range(start, len(decoder.layers)):
            args, kwargs = recorder.calls[index]
            layer = decoder.layers[index]
            hidden = layer_output_hidden_states(layer(hidden, *args, **with_cache(layer, kwargs, cache)))
            captured[index + 1] = take_rows(hidden, last_rows)
    captured[len(decoder.layers)] = norm(take_rows(hidden, last_rows))  # the norm acts per row
    return captured


class TPEndRecorder:
    """The sweep's recorder (st_tp.runtime.runner.Recorder) for a runner whose TP layers end at the largest of
    `tp_ends`: while that pass runs it keeps the input of each smaller tp_end's layer, then resumes from each without
    TP. Its results: {(tp_end, k): last-token states} for every tp_end and every hidden_states index k the pass
    captured (the runner must capture all of 0..total_layers)."""

    def __init__(self, tp_ends: Sequence[int], total_layers: int) -> None:
        *self.smaller, self.largest = sorted(tp_ends)
        self.total_layers = total_layers
        self.whole_inputs = frozenset(self.smaller)  # each < the largest tp_end <= total_layers
        self.layers: LayerRecorder | None = None

    @contextlib.contextmanager
    def watch(self, model: nn.Module) -> Iterator[None]:
        with LayerRecorder(model, self.whole_inputs) as self.layers:
            yield

    def results(self, model: nn.Module, batch: TemplateBatch, captured: dict[int, Tensor]) -> dict[tuple[int, int], Tensor]:
        cells = {(self.largest, k): v for k, v in captured.items()}
        for e in self.smaller:
            resumed = continue_layers(model, self.layers, e, batch.attention_mask, batch.prefix)
            for k in range(self.total_layers + 1):  # states at or before layer e saw exactly the TP layers of this tp_end
                cells[(e, k)] = resumed[k] if k > e else captured[k]
        return cells
