"""What st_tp needs to know about a Hugging Face decoder: where its layers are, how its layers are indexed, and which
tokens of a batch are real. Module-attribute conventions of HF decoders (`layers`, `norm`, `mlp`,
`self_attn.q_proj`, `self_attn.o_proj`) are read here only; tests/test_decoder.py checks them on every tiny
architecture."""

from __future__ import annotations

import torch
from torch import Tensor, nn


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


def final_norm(decoder: nn.Module) -> nn.Module:
    """The norm applied after the last layer (hidden_states[L] is its output)."""
    norm = getattr(decoder, "norm", None)
    if not isinstance(norm, nn.Module):
        raise ValueError(f"{type(decoder).__name__} has no final `norm` module; st_tp needs it for output_layer=-1.")
    return norm


def embedding_scale(decoder: nn.Module) -> float | Tensor:
    """Scaled-embedding models (Gemma) scale inside the embedding module; <PST> is scaled as if it were a row."""
    return getattr(decoder.get_input_embeddings(), "embed_scale", 1.0)


def row_wise_parts(layer: nn.Module) -> list[nn.Module]:
    """The parts of a decoder layer that compute each row on its own (a row's output depends on that row only): its
    MLP and its attention's query and output projections, where the layer has them."""
    attention = getattr(layer, "self_attn", None)
    parts = [getattr(layer, "mlp", None), getattr(attention, "q_proj", None), getattr(attention, "o_proj", None)]
    return [part for part in parts if isinstance(part, nn.Module)]


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


def real_token_indices(attention_mask: Tensor) -> Tensor:
    """Flat [B * S] indices of the real tokens of a [B, S] mask, in order."""
    return attention_mask.reshape(-1).nonzero().squeeze(1)


def flat(hidden: Tensor) -> Tensor:
    return hidden.reshape(-1, hidden.shape[-1])


def take_rows(hidden: Tensor, rows: Tensor) -> Tensor:
    """[rows, H] from hidden states flattened to [B * S, H] (index_select: ~4x `[rows]` on CPU)."""
    return flat(hidden).index_select(0, rows)
