"""Every transformers behaviour st_tp relies on beyond the documented extension points, in one file.

st_tp drives a Hugging Face decoder through public surfaces where they exist (`Cache.update`, `DynamicCache`,
`AttentionInterface`, `AttentionMaskInterface`, `set_attn_implementation`, forward hooks). What is left is named
here, one function per behaviour, and tests/test_hf_compat.py has one test per function: a transformers release that
changes one of them fails that test by name, instead of an error five frames deep in a forward.

The module-attribute conventions of decoders (`layers`, `norm`, `self_attn.q_proj`, ...) live in st_tp/decoder.py and
are tested on every tiny architecture there.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable

from torch import Tensor, nn
from transformers import AttentionInterface, DynamicCache
from transformers.cache_utils import Cache
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

# The keyword a decoder (and each of its layers) takes its KV cache under: `past_key_values` until transformers 5.23,
# `cache` since 5.24 (the old name still works there, with a FutureWarning on every call).
_CACHE_KWARGS = ("cache", "past_key_values")


@functools.cache
def _cache_kwarg_of(forward: Callable) -> str:
    parameters = inspect.signature(forward).parameters  # follows functools.wraps of HF's deprecation decorators
    return next((name for name in _CACHE_KWARGS if name in parameters), "past_key_values")


def cache_kwarg(module: nn.Module) -> str:
    """The name `module.forward` takes its KV cache under ('cache' or 'past_key_values')."""
    return _cache_kwarg_of(type(module).forward)


def cache_kwargs(module: nn.Module, cache: Cache | None) -> dict:
    """Keyword arguments that hand `cache` to `module` (a decoder) the way this transformers release expects."""
    return {cache_kwarg(module): cache, "use_cache": cache is not None}


def with_cache(layer: nn.Module, kwargs: dict, cache: Cache | None) -> dict:
    """A decoder layer's recorded call kwargs with its KV cache replaced, under the name the decoder used."""
    kwargs = {name: value for name, value in kwargs.items() if name not in _CACHE_KWARGS}
    return {**kwargs, cache_kwarg(layer): cache}


class _RecordingCache(DynamicCache):
    """A DynamicCache that keeps what each layer's `update` returned. Every attention layer calls `Cache.update` with
    its new keys and values and attends to what it returns; on an empty cache, that is exactly the layer's keys and
    values. Built without a config, its layers are full ones (never sliding), so a long prefix stays whole."""

    def __init__(self) -> None:
        super().__init__()
        self.recorded: dict[int, tuple[Tensor, Tensor]] = {}

    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args, **kwargs):
        keys, values = super().update(key_states, value_states, layer_idx, *args, **kwargs)
        self.recorded[layer_idx] = (keys, values)
        return keys, values


def keys_and_values(decoder: nn.Module, input_ids: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Each decoder layer's keys and values [B, heads, T, d] for `input_ids` (every token real)."""
    cache = _RecordingCache()
    decoder(input_ids=input_ids, attention_mask=input_ids.new_ones(input_ids.shape), **cache_kwargs(decoder, cache))
    return [cache.recorded[index] for index in sorted(cache.recorded)]


def cache_holding(layers: list[tuple[Tensor, Tensor]]) -> DynamicCache:
    """A fresh DynamicCache that already holds these keys/values per layer. Its layers are full ones (no config
    given): the model's masks then see every cached key and apply any sliding window by absolute position."""
    cache = DynamicCache()
    for index, (keys, values) in enumerate(layers):
        cache.update(keys, values, index)
    return cache


# ---- attention ------------------------------------------------------------------------------------------------
def attention_implementation(model: nn.Module) -> str:
    """The attention implementation a model runs ('sdpa', 'eager', 'flash_attention_2', or a registered name).
    transformers keeps it in `config._attn_implementation` and offers no public getter."""
    return str(model.config._attn_implementation)


def set_attention_implementation(model: nn.Module, name: str) -> None:
    """Switch a loaded model to another (registered) attention implementation; not saved with the model."""
    model.set_attn_implementation(name)


def attention_function(implementation: str, attention_module: nn.Module) -> Callable:
    """The attention kernel `implementation` names. 'eager' is each modeling file's own `eager_attention_forward`
    (softcapping, sinks, ...), which transformers does not register: it is looked up in the module's modeling file."""
    if implementation == "eager":
        return sys.modules[type(attention_module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[implementation]


def register_attention(name: str, function: Callable, masks_like: str) -> None:
    """Register `function` as attention implementation `name`, with the masks `masks_like` gets (AttentionInterface,
    AttentionMaskInterface). Registration is global; models opt in with `set_attention_implementation`."""
    AttentionInterface.register(name, function)
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[masks_like])


# ---- decoder layers -------------------------------------------------------------------------------------------
def layer_hidden_states(args: tuple, kwargs: dict) -> Tensor:
    """A decoder layer's input hidden states: its first positional argument (or the `hidden_states` keyword)."""
    return args[0] if args else kwargs["hidden_states"]


def with_layer_hidden_states(args: tuple, kwargs: dict, hidden: Tensor) -> tuple[tuple, dict]:
    """A decoder layer's call arguments with its input hidden states replaced (forward pre-hook return value)."""
    if args:
        return (hidden, *args[1:]), kwargs
    return args, dict(kwargs, hidden_states=hidden)


def layer_output_hidden_states(output) -> Tensor:
    """A decoder layer's (or a sub-module's) output hidden states: the output itself, or its first element."""
    return output[0] if isinstance(output, tuple) else output


def with_output_hidden_states(output, hidden: Tensor):
    """A module's output with its hidden states replaced, in the same form (tensor or tuple)."""
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def truncate_config(hf_config, layers_to_keep: int) -> None:
    """Keep only the first `layers_to_keep` decoder layers. transformers sizes the layer list by `num_hidden_layers`
    and reads per-layer settings from lists as long as it (`layer_types` of sliding/full attention): cut them alike."""
    total = hf_config.num_hidden_layers
    for name, value in list(vars(hf_config).items()):
        if isinstance(value, list) and len(value) == total:
            setattr(hf_config, name, value[:layers_to_keep])
    hf_config.num_hidden_layers = layers_to_keep
