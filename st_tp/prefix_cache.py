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

from st_tp.forward import find_decoder


@dataclass
class PrefixKV:
    """Keys and values of one prompt prefix, for every decoder layer of the (pruned) model: [1, heads, P, d]."""

    length: int
    layers: list[tuple[Tensor, Tensor]]

    @classmethod
    @torch.no_grad()
    def compute(cls, model: nn.Module, prefix_ids: list[int], device) -> PrefixKV:
        decoder = find_decoder(model)
        ids = torch.tensor([prefix_ids], device=device)
        # Full (never sliding) cache layers: a sliding-window layer's cache keeps only its last `window - 1` keys, so a
        # prefix longer than the window would lose its head, and the mask offsets would count from the wrong place.
        cache = DynamicCache()
        decoder(input_ids=ids, attention_mask=torch.ones_like(ids), past_key_values=cache, use_cache=True)
        return cls(length=len(prefix_ids), layers=[(layer.keys, layer.values) for layer in cache.layers])

    def head(self, length: int) -> PrefixKV:
        """The cache of the first `length` prefix tokens: a causal prefix's first keys/values ignore the rest."""
        if length == self.length:
            return self
        if not 0 < length < self.length:
            raise ValueError(f"A prefix of {self.length} tokens has no head of {length} tokens.")
        return PrefixKV(length, [(k[:, :, :length], v[:, :, :length]) for k, v in self.layers])

    def expand(self, batch_size: int) -> DynamicCache:
        """A fresh cache for one batch (a forward appends to it, so it is never shared). Its layers are full ones:
        the model's masks then see every prefix key and apply any sliding window by absolute position."""
        cache = DynamicCache()
        for index, (keys, values) in enumerate(self.layers):
            cache.update(keys.expand(batch_size, -1, -1, -1), values.expand(batch_size, -1, -1, -1), index)
        return cache


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
