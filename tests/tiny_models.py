"""Tiny random decoders of every supported family, built from configs (no download), saved with a tokenizer."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer

COMMON = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=6,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=32000,
    max_position_embeddings=1024,
    initializer_range=0.1,  # 0.02 gives near-uniform attention, which would hide position and masking errors
)
ARCHS: dict[str, dict] = {
    "llama": {},
    "mistral": {"sliding_window": None},
    "qwen2": {},
    "qwen3": {"head_dim": 16},
    "gemma": {"head_dim": 16},
    "gemma2": {"head_dim": 16, "query_pre_attn_scalar": 24, "sliding_window": 4096},
    "gemma3_text": {"head_dim": 16, "query_pre_attn_scalar": 24, "sliding_window": 4096},
    "phi3": {"num_key_value_heads": 4, "pad_token_id": 0},
    "olmo2": {},
}


def make_tiny(arch: str, out: Path, tokenizer_dir: str, seed: int = 0, **extra) -> str:
    """Save a random `arch` decoder plus the Llama-2 tokenizer (vocab 32000 fits every config here)."""
    torch.manual_seed(seed)
    config = AutoConfig.for_model(arch, **{**COMMON, **ARCHS[arch], **extra})
    model = AutoModel.from_config(config).to(torch.float32)
    with torch.no_grad():  # non-trivial norm weights, so an implementation that skipped a norm would show
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    return str(out)
