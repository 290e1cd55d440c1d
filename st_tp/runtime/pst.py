"""The <PST> input vector: deterministic, built once, saved with the model as safetensors."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor, nn
    from transformers import PreTrainedTokenizerBase

PST_INIT_HELP = "zeros, ones, normal[:seed], uniform[:seed], token:<text>"


def parse_pst_init(pst_init: str) -> tuple[str, str]:
    """(kind, argument) of a pst_init string; the one place its grammar is read."""
    kind, sep, arg = pst_init.partition(":")
    valid = (
        (kind in ("zeros", "ones") and not sep)
        or (kind in ("normal", "uniform") and (not sep or arg.isdigit()))
        or (kind == "token" and bool(arg))
    )
    if not valid:
        raise ValueError(f"Unknown pst_init {pst_init!r}. Allowed: {PST_INIT_HELP}.")
    return kind, arg


def make_pst_embedding(pst_init: str, embeddings: nn.Module, tokenizer: PreTrainedTokenizerBase) -> Tensor:
    """zeros | ones | normal[:seed] (std 1, as the official torch.randn) | uniform[:seed] ([0, 1)) | token:<text>.

    `token:<text>` copies the input-embedding row of that single token (the paper's "existing token" init).
    """
    import torch

    hidden = embeddings.weight.shape[1]
    kind, arg = parse_pst_init(pst_init)
    if kind == "zeros":
        return torch.zeros(hidden)
    if kind == "ones":
        return torch.ones(hidden)
    if kind in ("normal", "uniform"):
        generator = torch.Generator().manual_seed(int(arg or 0))
        sample = torch.randn if kind == "normal" else torch.rand
        return sample(hidden, generator=generator)
    ids = tokenizer(arg, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(
            f"pst_init 'token:{arg}' must name exactly one token, but the tokenizer splits {arg!r} into "
            f"{len(ids)} tokens {ids}. Pick text that is a single token."
        )
    return embeddings.weight[ids[0]].detach().float().cpu().clone()
