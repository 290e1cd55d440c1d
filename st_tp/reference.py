"""The naive way, as the official code does it: every layer runs, every hidden state of every token is kept
(`output_hidden_states=True`), no cache, and the <PST> row is overwritten in place by a plain pre-hook.

Deliberately independent of the rest of st_tp (no early exit, no pruning, no prefix cache, stock positions and
masks, not even st_tp's decoder lookup), so tests can check the fast path against it and benchmarks can time what
we replace.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _decoder(model: nn.Module) -> nn.Module:
    """The stock base model of an HF causal LM (`.model`), or the model itself when it is one."""
    return model if isinstance(getattr(model, "layers", None), nn.ModuleList) else model.model


def naive_tp_forward(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    pst_positions: Tensor | None,
    *,
    tp_layers: list[int],
    output_layer: int,
    pst_embedding: Tensor | None = None,
) -> Tensor:
    """Last-token state of hidden_states[output_layer]; input must be left-padded (the last column is real)."""
    decoder = _decoder(model)
    rows = torch.arange(input_ids.shape[0])
    embeddings = decoder.get_input_embeddings()
    inputs_embeds = embeddings(input_ids.clamp(max=embeddings.num_embeddings - 1)).clone()
    if pst_positions is not None:
        pst = torch.zeros(inputs_embeds.shape[-1]) if pst_embedding is None else pst_embedding
        inputs_embeds[rows, pst_positions] = (pst * getattr(embeddings, "embed_scale", 1.0)).to(inputs_embeds.dtype)

    def overwrite(index):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            if pst_positions is not None and index in tp_layers:
                hidden[rows, pst_positions] = hidden[:, -1].clone()  # in place, as the official code
            return None

        return hook

    handles = [layer.register_forward_pre_hook(overwrite(i), with_kwargs=True) for i, layer in enumerate(decoder.layers)]
    try:
        out = decoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask, output_hidden_states=True)
    finally:
        for handle in handles:
            handle.remove()
    return out.hidden_states[output_layer][:, -1]
