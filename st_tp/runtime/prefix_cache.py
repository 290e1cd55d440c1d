"""The shared-prefix KV cache: keys and values of the template text before the sentence, computed once per prefix,
device and dtype, reused by every batch.

Exact for TP: the prefix comes before every <PST> slot, so under causal attention nothing that TP changes can reach
it. Exact under sliding windows too: the cache layers are full ones (a prefix longer than the window stays whole),
and rows are right-padded, so each row's tokens follow the cached keys directly.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import DynamicCache

from .decoder import find_decoder
from .hf_compat import cache_holding, keys_and_values


@dataclass
class PrefixKV:
    """Keys and values of one prompt prefix, for every decoder layer of the (pruned) model: [1, heads, P, d]."""

    length: int
    layers: list[tuple[Tensor, Tensor]]

    @classmethod
    @torch.no_grad()
    def compute(cls, model: nn.Module, prefix_ids: list[int], device) -> PrefixKV:
        # Full (never sliding) cache layers: a sliding-window layer's cache keeps only its last `window - 1` keys, so a
        # prefix longer than the window would lose its head, and the mask offsets would count from the wrong place.
        layers = keys_and_values(find_decoder(model), torch.tensor([prefix_ids], device=device))
        return cls(length=len(prefix_ids), layers=layers)

    def head(self, length: int) -> PrefixKV:
        """The cache of the first `length` prefix tokens: a causal prefix's first keys/values ignore the rest."""
        if length == self.length:
            return self
        if not 0 < length < self.length:
            raise ValueError(f"A prefix of {self.length} tokens has no head of {length} tokens.")
        return PrefixKV(length, [(k[:, :, :length], v[:, :, :length]) for k, v in self.layers])

    def for_batch(self, attention_mask: Tensor, cache_rows: int) -> tuple[DynamicCache, Tensor]:
        """A fresh cache for one batch (a forward appends to it, so it is never shared) with `cache_rows` copies of the
        prefix (packed rows share one; padded rows need one each), and the batch's mask with the prefix columns in
        front. The cache's layers are full ones: the model's masks then see every prefix key and apply any sliding
        window by absolute position."""
        cache = cache_holding([(k.expand(cache_rows, -1, -1, -1), v.expand(cache_rows, -1, -1, -1)) for k, v in self.layers])
        mask = torch.cat([attention_mask.new_ones(attention_mask.shape[0], self.length), attention_mask], dim=1)
        return cache, mask


class PrefixCacheStore:
    """One PrefixKV per (prefix ids, device, dtype), computed on first use; thread-safe, emptied when pickled (a
    process pool's workers compute their own)."""

    def __init__(self) -> None:
        self._entries: dict[tuple, PrefixKV] = {}
        self._lock = threading.Lock()

    def get(self, model: nn.Module, prefix_ids: list[int], device) -> PrefixKV:
        dtype = next(model.parameters()).dtype
        key = (tuple(prefix_ids), str(device), dtype)
        with self._lock:
            if key not in self._entries:
                self._entries[key] = PrefixKV.compute(model, prefix_ids, device)
            return self._entries[key]

    def keys(self) -> list[tuple]:
        """(prefix ids, device, dtype) of every cached prefix."""
        return list(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()
