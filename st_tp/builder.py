"""`st_tp.build`: a ready SentenceTransformer with Token Prepending from a base model and a preset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sentence_transformers import SentenceTransformer

from st_tp.base_model import resolve_base_model
from st_tp.model_card import attach_model_card
from st_tp.presets import find_preset
from st_tp.runtime.config import TPConfig, load_preset, resolve_device
from token_prepending import TokenPrepending  # the class saved folders name (loads with or without st_tp)


def build(
    base_model: str,
    config: str | Path | TPConfig | None = None,
    *,
    gguf_file: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    **overrides: Any,
) -> SentenceTransformer:
    """Build a TP SentenceTransformer.

    Args:
        base_model: hub id or local folder of a decoder-only LLM (e.g. "meta-llama/Llama-2-7b-hf"), or
            `packaged:<name>` for a GGUF model installed as a Python package (see `st_tp.base_model.PACKAGED`).
        config: a preset name (e.g. "install-check", "smollm2-135m-prompteol-tp"; see st_tp.presets), a YAML
            preset path, or a TPConfig; defaults to TPConfig().
        gguf_file: a GGUF file inside the `base_model` folder; tokenizer, config and weights are read from it (once,
            then cached as a plain folder), and the saved model is an ordinary st_tp folder.
        model_kwargs: extra arguments for the HF model loader (e.g. attn_implementation, device_map).
        **overrides: any TPConfig key (st_tp.runtime.config.TPConfig lists them, with what each does).
    """
    if isinstance(config, TPConfig):
        tp_config = config
    elif config is not None:
        _, tp_config = load_preset(find_preset(config))
    else:
        tp_config = TPConfig()
    tp_config = tp_config.replace(**overrides)
    base = resolve_base_model(base_model, gguf_file, dtype=tp_config.dtype, device=tp_config.device)
    module = TokenPrepending(base.path, tp_config, model_kwargs=model_kwargs, base_model=base.name)
    # The named templates are also the model's sentence-transformers prompts, so prompt_name=, encode_query/
    # encode_document and MTEB's query/document prompt types find them (TokenPrepending reads a prompt that holds
    # '{text}' as a template).
    model = SentenceTransformer(modules=[module], device=resolve_device(tp_config.device), prompts=dict(tp_config.templates or {}))
    attach_model_card(model, base, tp_config, base.licence)
    return model
