"""From tokenized prompts to what the TP forward runs: one batch per template, the shared prefix taken from the cache.

`collate` tokenizes every text under every template (template-major rows, right-padded); `template_batches` gives
each template's rows ready for `run_layers`; `average_over_templates` runs them and averages the templates (MetaEOL
has 8, the other prompts one). The TP runner (st_tp.runtime.runner) is what goes through them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .prefix_cache import PrefixCacheStore, PrefixKV
from .prompts import PromptEncoder

# The prefix cache is used from this many shared prefix tokens on (a BOS alone is not worth a cache). Measured on the
# 2-core CPU with SmolLM2-135M and Gemma-3-270M (benchmarks/RESULTS.md): with right-padded rows the cache is faster for
# every prompt method, PromptEOL's 3-4 cached tokens included (TP time cache on / off, SmolLM2 / Gemma-3: PromptEOL
# 0.87 / 0.85, CoT 0.71 / 0.63, KE 0.38 / 0.31, MetaEOL 0.28 / 0.23).
MIN_PREFIX_TOKENS = 2


@dataclass
class TemplateBatch:
    """One template's rows, ready for `run_layers`."""

    input_ids: Tensor
    attention_mask: Tensor
    pst_positions: Tensor | None  # [B, n]; None = vanilla prompt
    prefix: PrefixKV | None  # keys/values of the columns before `input_ids`


def collate(encoders: list[PromptEncoder], texts: list[str], pad_token_id: int) -> dict[str, Tensor]:
    """Token ids of every text under every template (template-major rows), right-padded, with <PST> columns and,
    per template, its prefix's ids and how many of them every row starts with (the part of the cache to use).

    Right padding keeps each row's tokens contiguous from column 0, so dropping the cached prefix columns leaves them
    right after the cached keys, as when the row is alone: masks that count distance in columns (sliding windows)
    then see the same distances in any batch. Padding sits after the last real token, which causal attention
    never lets a real token see."""
    encoded = [encoder.encode(text) for encoder in encoders for text in texts]
    width = max(len(e.input_ids) for e in encoded)
    input_ids = torch.full((len(encoded), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, e in enumerate(encoded):
        input_ids[row, : len(e.input_ids)] = torch.tensor(e.input_ids)
        attention_mask[row, : len(e.input_ids)] = 1
    pst_positions = torch.tensor([e.pst_positions for e in encoded], dtype=torch.long)
    rows_per_template = len(texts)
    prefix_lengths = torch.tensor(
        [min(e.shared_prefix for e in encoded[g * rows_per_template : (g + 1) * rows_per_template]) for g in range(len(encoders))],
        dtype=torch.long,
    )
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pst_positions": pst_positions,
            "prefix_lengths": prefix_lengths, "prefix_ids": tuple(tuple(encoder.prefix_ids) for encoder in encoders)}


def template_batches(features: dict[str, Tensor], model: nn.Module, prefixes: PrefixCacheStore | None) -> list[TemplateBatch]:
    """Each template's rows, ready for `run_layers`: with a prefix cache store, the columns of the template's prefix
    that every row shares are dropped and taken from the cache; trailing all-padding columns go."""
    pst_positions = features.get("pst_positions")
    rows_per_template = features["input_ids"].shape[0] // len(features["prefix_ids"])
    batches = []
    for g, prefix_ids in enumerate(features["prefix_ids"]):
        rows = slice(g * rows_per_template, (g + 1) * rows_per_template)
        input_ids, attention_mask = features["input_ids"][rows], features["attention_mask"][rows]
        pst = None if pst_positions is None else pst_positions[rows]
        shared = int(features["prefix_lengths"][g])
        prefix = None
        if prefixes is not None and shared >= MIN_PREFIX_TOKENS:
            # Keys/values of a prefix's first k tokens do not depend on what follows (causal): one cache serves all k.
            prefix = prefixes.get(model, list(prefix_ids), input_ids.device).head(shared)
            # Rows are right-padded [prefix | rest | pad]: the prefix columns come from the cache.
            input_ids, attention_mask = input_ids[:, shared:], attention_mask[:, shared:]
            pst = None if pst is None else pst - shared
        width = int(attention_mask.sum(1).max())  # a template's rows may be shorter than another template's
        batches.append(TemplateBatch(input_ids[:, :width], attention_mask[:, :width], pst, prefix))
    return batches


def average_over_templates(batches: list[TemplateBatch], run: Callable[[TemplateBatch], dict]) -> dict:
    """`run` on each template's batch, its {key: [B, H] states} averaged over the templates in float32."""
    states: dict = {}
    for batch in batches:
        for key, value in run(batch).items():
            states[key] = states.get(key, 0) + value.float() / len(batches)
    return states
