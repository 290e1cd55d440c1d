"""Loading a base decoder for TP: a fast tokenizer, the model pruned to the layers the exit layer needs, and the
dtype policy (`load_model`: which dtype the weights load in, and `DtypeRule`: whether it follows the device later)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from .config import DTYPES, TPConfig, resolve_device, resolve_dtype
from .hf_compat import truncate_config


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' warnings and progress bars off for a load whose surprises are by design, then back as they were."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


def load_tokenizer(model_name_or_path: str, processor_kwargs: dict[str, Any] | None = None) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, **(processor_kwargs or {}))
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"{type(tokenizer).__name__} is a slow tokenizer; st_tp needs a fast (tokenizers-backed) one to "
            "reproduce the official token ids. Provide tokenizer.json with the model."
        )
    return tokenizer


def load_config(model_name_or_path: str, config_kwargs: dict[str, Any] | None = None):
    hf_config = AutoConfig.from_pretrained(model_name_or_path, **(config_kwargs or {}))
    if getattr(hf_config, "is_encoder_decoder", False) or not hasattr(hf_config, "num_hidden_layers"):
        hint = " For a multimodal checkpoint, use its text-only model." if hasattr(hf_config, "text_config") else ""
        raise ValueError(
            f"{type(hf_config).__name__} is not a decoder-only model config (no num_hidden_layers, or an "
            f"encoder-decoder); st_tp needs a decoder-only LLM.{hint}"
        )
    return hf_config


def model_dtype(model_kwargs: dict[str, Any], config_dtype: str, device: str | None) -> torch.dtype:
    """A dtype in model_kwargs (torch dtype or name) wins over the config's; 'auto' follows the device."""
    dtype = model_kwargs.pop("dtype", model_kwargs.pop("torch_dtype", None))
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r} in model_kwargs. Allowed: {', '.join(DTYPES)}.")
    return resolve_dtype(dtype or config_dtype, device)


def load_dtype(config_dtype: str, model_kwargs: dict[str, Any], device: str, hf_config,
               keep_stored_dtype: bool) -> tuple[torch.dtype, bool]:
    """(the dtype to load the weights in, whether it follows the device the module later moves to).

    dtype 'auto' is a rule (config.resolve_dtype: the device decides), applied again when the module moves:
    sentence-transformers picks the device only after loading. A saved model's weights then load as stored, without
    rounding. An explicit dtype, a quantization config or a device map fixes the dtype for good. Pops the dtype
    keys of `model_kwargs`."""
    follows_device = config_dtype == "auto" and not (
        {"dtype", "torch_dtype", "quantization_config", "device_map"} & set(model_kwargs))
    dtype = model_dtype(model_kwargs, config_dtype, device)
    stored = getattr(hf_config, "dtype", None)
    if follows_device and keep_stored_dtype and isinstance(stored, torch.dtype):
        dtype = stored
    return dtype, follows_device


def load_pruned_model(model_name_or_path: str, hf_config, layers_to_run: int, dtype: torch.dtype,
                      model_kwargs: dict[str, Any]) -> nn.Module:
    """The base model (no LM head) with decoder layers 0..layers_to_run-1 only: the rest are never loaded."""
    if layers_to_run < hf_config.num_hidden_layers:
        truncate_config(hf_config, layers_to_run)
    with quiet_transformers():  # the pruned layers and any LM head are "unexpected keys", by design
        model, info = AutoModel.from_pretrained(
            model_name_or_path, config=hf_config, dtype=dtype, output_loading_info=True, **model_kwargs
        )
    if info.get("missing_keys"):
        raise ValueError(
            f"Loading {model_name_or_path} left weights uninitialised: {sorted(info['missing_keys'])[:5]}... "
            "The checkpoint does not match its config."
        )
    return model.eval()


class DtypeRule:
    """dtype 'auto' follows the device: sentence-transformers loads a module before it knows the device and moves it
    afterwards, so the dtype guessed at load is settled again for the device the model really moves to. An explicit
    cast (`.half()`, `.to(torch.bfloat16)`) is the user's choice and ends the rule."""

    def __init__(self, follows_device: bool) -> None:
        self.follows_device = follows_device

    def settle(self, model: nn.Module, fn) -> None:
        """Called before `model` is moved by `fn` (the function nn.Module._apply maps over its tensors)."""
        if not self.follows_device:
            return
        probe = fn(torch.zeros(0))
        if probe.dtype != torch.float32:
            self.follows_device = False
        elif next(model.parameters()).dtype != (wanted := resolve_dtype("auto", str(probe.device))):
            model.to(wanted)


def load_model(model_name_or_path: str, hf_config, tp_config: TPConfig, layers_to_run: int, *,
               keep_stored_dtype: bool = False, model_kwargs: dict[str, Any] | None = None) -> tuple[nn.Module, DtypeRule]:
    """The pruned base model in the dtype the settings ask for (`load_dtype`), and the rule its dtype follows later."""
    model_kwargs = dict(model_kwargs or {})
    device = resolve_device(tp_config.device)
    if "quantization_config" in model_kwargs and not device.startswith("cuda"):
        raise ValueError(
            "model_kwargs['quantization_config'] (bitsandbytes 4/8-bit) needs a CUDA GPU, and this model would run "
            f"on {device!r}. Drop the quantization_config, or build on a CUDA device."
        )
    dtype, follows_device = load_dtype(tp_config.dtype, model_kwargs, device, hf_config, keep_stored_dtype)
    # Early exit at k needs layers 0..k-1 only (the final norm is tiny and stays).
    model = load_pruned_model(model_name_or_path, hf_config, layers_to_run, dtype, model_kwargs)
    return model, DtypeRule(follows_device)
