"""The <PST> input vector: deterministic, built once, saved with the model as safetensors."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase


def make_pst_embedding(pst_init: str, embeddings: nn.Module, tokenizer: PreTrainedTokenizerBase) -> Tensor:
    """zeros | ones | normal[:seed] (std 1, as the official torch.randn) | uniform[:seed] ([0, 1)) | token:<text>.

    `token:<text>` copies the input-embedding row of that single token (the paper's "existing token" init).
    """
    hidden = embeddings.weight.shape[1]
    kind, _, arg = pst_init.partition(":")
    if kind == "zeros":
        return torch.zeros(hidden)
    if kind == "ones":
        return torch.ones(hidden)
    if kind in ("normal", "uniform"):
        generator = torch.Generator().manual_seed(int(arg or 0))
        sample = torch.randn if kind == "normal" else torch.rand
        return sample(hidden, generator=generator)
    if kind == "token":
        ids = tokenizer(arg, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(
                f"pst_init 'token:{arg}' must name exactly one token, but the tokenizer splits {arg!r} into "
                f"{len(ids)} tokens {ids}. Pick text that is a single token."
            )
        return embeddings.weight[ids[0]].detach().float().cpu().clone()
    raise ValueError(f"Unknown pst_init {pst_init!r}. Allowed: zeros, ones, normal[:seed], uniform[:seed], token:<text>.")
