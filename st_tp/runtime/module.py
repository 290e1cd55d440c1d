"""`TokenPrepending`: a sentence-transformers input module that wraps sentences in an embedding prompt and
runs the Token-Prepending forward of a Hugging Face decoder, reading the last token at the exit layer.

ST's contract: the constructor takes the flat keys it saves (`config_keys`: every TPConfig key, plus the unpruned
layer count and the base model's name); `preprocess` tokenizes (st_tp.runtime.batching.collate) -> features -> `forward`
runs each template's batch (st_tp.runtime.batching) through the TP forward (st_tp.runtime.forward) -> features with the embedding.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import warnings
from collections.abc import Collection, Sequence
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from sentence_transformers.base.modules import InputModule
from torch import Tensor

from .batching import TemplateBatch, average_over_templates, collate, template_batches
from .config import SAVED_CONFIG, TPConfig, check_template, resolve_device, resolve_dtype
from .decoder import find_decoder, resolve_layer
from .forward import run_layers
from .loading import load_config, load_dtype, load_pruned_model, load_tokenizer
from .prefix_cache import PrefixCacheStore
from .prompts import TEXT, PromptEncoder, PromptEncoderCache, resolve_templates
from .pst import make_pst_embedding

PST_FILE = "pst_embedding.safetensors"
_DTYPE_SWITCH = threading.Lock()  # on_nonfinite="float32" converts the model in place, once


class _EmbeddingFeatures(dict):
    """The forward's output: asking it for token embeddings names the problem instead of a bare KeyError."""

    def __missing__(self, key: str):
        if key == "token_embeddings":
            raise ValueError(
                "st_tp embeds each text as one vector (the last token's state at the exit layer), so "
                "output_value='token_embeddings' is not available. Use output_value='sentence_embedding' (the default)."
            )
        raise KeyError(key)


class TokenPrepending(InputModule):
    """Prompt wrapping + Token-Prepending decoder forward + last-token readout, as one ST input module.

    Args:
        model_name_or_path: a Hugging Face decoder-only model (hub id or local folder), or a saved st_tp folder.
        tp_config: the settings (st_tp.runtime.config.TPConfig); `**settings` (its keys, flat, as saved) override it.
        num_hidden_layers_base: the decoder's layer count before pruning (a saved model holds only the layers its exit
            layer needs).
        base_model: what the model was built from (hub id or the name it was given), for the model card and MTEB.
        pst_embedding: the <PST> vector; built from `pst_init` when None.
        keep_stored_dtype: with dtype 'auto', load the weights in the dtype they are stored in (a saved model); the
            device rule casts them when the module moves (st_tp.runtime.loading.load_dtype).
        model_kwargs / processor_kwargs / config_kwargs: passed to the HF model / tokenizer / config loaders.
    """

    config_file_name = SAVED_CONFIG
    config_keys = [*(f.name for f in dataclasses.fields(TPConfig)), "num_hidden_layers_base", "base_model"]

    def __init__(
        self,
        model_name_or_path: str,
        tp_config: TPConfig | None = None,
        *,
        num_hidden_layers_base: int | None = None,
        base_model: str | None = None,
        pst_embedding: Tensor | None = None,
        keep_stored_dtype: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        processor_kwargs: dict[str, Any] | None = None,
        config_kwargs: dict[str, Any] | None = None,
        **settings: Any,
    ) -> None:
        super().__init__()
        self.tp_config = tp_config = (tp_config or TPConfig()).replace(**settings)
        self.base_model = base_model or model_name_or_path
        self.tokenizer = load_tokenizer(model_name_or_path, processor_kwargs)
        hf_config = load_config(model_name_or_path, config_kwargs)
        if num_hidden_layers_base is not None and (type(num_hidden_layers_base) is not int or num_hidden_layers_base < 1):
            raise ValueError(f"num_hidden_layers_base must be a positive int, got {num_hidden_layers_base!r}.")
        self.total_layers = num_hidden_layers_base or hf_config.num_hidden_layers
        self.exit_layer = resolve_layer(tp_config.output_layer, self.total_layers)
        self.tp_layers = tp_config.tp_layers(self.total_layers)  # checks tp_end against the model's depth
        model_kwargs = dict(model_kwargs or {})
        device = resolve_device(tp_config.device)
        if "quantization_config" in model_kwargs and not device.startswith("cuda"):
            raise ValueError(
                "model_kwargs['quantization_config'] (bitsandbytes 4/8-bit) needs a CUDA GPU, and this model would run "
                f"on {device!r}. Drop the quantization_config, or build on a CUDA device."
            )
        dtype, self._dtype_follows_device = load_dtype(tp_config.dtype, model_kwargs, device, hf_config, keep_stored_dtype)
        # Early exit at k needs layers 0..k-1 only (the final norm is tiny and stays).
        self.auto_model = load_pruned_model(model_name_or_path, hf_config, self.exit_layer, dtype, model_kwargs)
        decoder = find_decoder(self.auto_model)
        if pst_embedding is None:
            pst_embedding = make_pst_embedding(tp_config.pst_init, decoder.get_input_embeddings(), self.tokenizer)
        if pst_embedding.shape != (decoder.config.hidden_size,):
            raise ValueError(f"pst_embedding has shape {tuple(pst_embedding.shape)}, expected ({decoder.config.hidden_size},).")
        self.register_buffer("pst_embedding", pst_embedding.float(), persistent=False)
        self.pad_token_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self._encoders = self._encoder_cache()
        self.prefix_caches = PrefixCacheStore()  # keys/values of each template's shared prefix, per device and dtype

    def _encoder_cache(self) -> PromptEncoderCache:
        c = self.tp_config
        return PromptEncoderCache(self.tokenizer, self.pad_token_id, num_pst=c.num_pst, preprocess=c.preprocess,
                                  max_seq_length=c.max_seq_length, parse_special_tokens=c.parse_special_tokens)

    def _apply(self, fn, recurse: bool = True):
        """`.to(device)` and friends. sentence-transformers loads a module before it knows the device and moves it
        afterwards, so dtype 'auto' (guessed from the default device at load) is settled here, for the device the
        module really moves to. An explicit cast (`.half()`, `.to(torch.bfloat16)`) is the user's choice and ends it."""
        if getattr(self, "_dtype_follows_device", False):
            probe = fn(torch.zeros(0))
            if probe.dtype != torch.float32:
                self._dtype_follows_device = False
            elif self.model_dtype != (wanted := resolve_dtype("auto", str(probe.device))):
                self.auto_model.to(wanted)
        return super()._apply(fn, recurse)

    def get_config_dict(self) -> dict[str, Any]:
        # The device is where this process runs, not a property of the model: a saved model does not pin it.
        return {**self.tp_config.to_dict(), "device": None, "num_hidden_layers_base": self.total_layers,
                "base_model": self.base_model}

    @property
    def model_dtype(self) -> torch.dtype:
        return next(self.auto_model.parameters()).dtype

    @property
    def max_seq_length(self) -> int:
        return self.tp_config.max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        self.tp_config = self.tp_config.replace(max_seq_length=value)
        self._encoders = self._encoder_cache()

    def get_embedding_dimension(self) -> int:
        return find_decoder(self.auto_model).config.hidden_size

    # ---- inputs --------------------------------------------------------------------------------------
    @property
    def encoders(self) -> list[PromptEncoder]:
        """One PromptEncoder per template of this model's prompt, in its own form (TP or vanilla)."""
        return self.prompt_encoders(self.tp_config.tp)

    def prompt_encoders(self, tp: bool, templates: Sequence[str] | None = None) -> list[PromptEncoder]:
        """One PromptEncoder per template (default: the model's prompt), in TP or vanilla form."""
        return self._encoders.get(tp, tuple(templates or self.templates_for()))

    def templates_for(self, prompt: str | None = None, task: str | None = None) -> tuple[str, ...]:
        """The templates one call embeds with (MetaEOL has 8, the others one).

        `prompt` is what sentence-transformers passes for `prompt=` / `prompt_name=` / `encode_query`: a template (it
        holds '{text}') replaces the model's prompt; a plain instruction goes before the template, never inside its
        quotes. Without a prompt, `task` ("query"/"document", from encode_query/encode_document) picks a named template
        of `tp_config.templates` when the model has one; otherwise the model's prompt applies."""
        c = self.tp_config
        named = c.templates or {}
        base = (named[task],) if task in named else resolve_templates(c.prompt_method, c.template)
        if not prompt:
            return base
        if TEXT in prompt:
            check_template(prompt, c.tp)
            return (prompt,)
        return tuple(prompt + template for template in base)

    def preprocess(self, inputs: Sequence[str], prompt: str | None = None, *, tp: bool | None = None,
                   task: str | None = None, processing_kwargs: dict | None = None, **kwargs) -> dict[str, Tensor]:
        """Token ids of every sentence under every template (template-major rows), right-padded. `prompt` and `task`
        pick the templates (see `templates_for`); `tp` picks their form (default: the model's own)."""
        if processing_kwargs:
            raise ValueError(
                f"TokenPrepending does not take per-call processing_kwargs (got {processing_kwargs!r}): the prompt is "
                "tokenized by st_tp's own rules. Set the model's max_seq_length to change truncation."
            )
        if kwargs:
            raise ValueError(f"TokenPrepending.preprocess got unsupported arguments {sorted(kwargs)}.")
        for text in inputs:
            if not isinstance(text, str):
                raise ValueError(f"TokenPrepending embeds text only; got {type(text).__name__}: {text!r:.80}.")
        tp = self.tp_config.tp if tp is None else tp
        templates = self.templates_for(prompt, task)
        features = collate(self.prompt_encoders(tp, templates), list(inputs), self.pad_token_id)
        features["templates"] = templates
        if not tp:
            features.pop("pst_positions")
        return features

    def template_batches(self, features: dict[str, Tensor]) -> list[TemplateBatch]:
        """Each template's rows, ready for `run_layers` (st_tp.runtime.batching.template_batches)."""
        c = self.tp_config
        encoders = self.prompt_encoders("pst_positions" in features, features.get("templates"))
        use_cache = c.prefix_cache and not c.mask_pst_first_layer  # A.5 masks the <PST> key in layer 0: no cache
        return template_batches(features, encoders, self.auto_model, self.prefix_caches if use_cache else None)

    # ---- forward -------------------------------------------------------------------------------------
    def last_token_states(self, features: dict[str, Tensor], layers: Collection[int]) -> dict[int, Tensor]:
        """{hidden_states index: last-token states [B, H] in float32} for `layers` (resolved indices), averaged
        over the prompt's templates. TP applies when the features hold <PST>."""

        def run(batch: TemplateBatch) -> dict[int, Tensor]:
            return run_layers(
                self.auto_model, batch.input_ids, batch.attention_mask, batch.pst_positions,
                tp_layers=self.tp_layers if batch.pst_positions is not None else (),
                capture=layers, pst_embedding=self.pst_embedding, prefix=batch.prefix,
                mask_pst_layer=0 if self.tp_config.mask_pst_first_layer else None, total_layers=self.total_layers,
            )

        return average_over_templates(self.template_batches(features), run)

    def forward(self, features: dict[str, Tensor], **kwargs) -> dict[str, Tensor]:
        embeddings = self.last_token_states(features, [self.exit_layer])[self.exit_layer]
        if not torch.isfinite(embeddings).all():
            if self.tp_config.on_nonfinite == "float32" and self.model_dtype != torch.float32:
                warnings.warn(
                    f"{self._nonfinite_message(embeddings)} on_nonfinite='float32': switching the model to float32.",
                    RuntimeWarning, stacklevel=2,
                )
                with _DTYPE_SWITCH:
                    self.auto_model.float()
                return self.forward(features, **kwargs)
            raise FloatingPointError(self._nonfinite_message(embeddings))
        features = _EmbeddingFeatures(features)
        features["sentence_embedding"] = embeddings
        return features

    def _nonfinite_message(self, embeddings: Tensor) -> str:
        dtype = self.model_dtype
        bad = (~torch.isfinite(embeddings).all(dim=1)).sum().item()
        hint = (
            f"The model runs in {dtype}, whose range this backbone overflows (Gemma-2 is known to): load it with "
            "dtype='bfloat16' or 'float32', or set on_nonfinite='float32' to fall back automatically."
            if dtype == torch.float16
            else "Check the model weights and inputs."
        )
        return f"{bad} of {len(embeddings)} embeddings are NaN or infinite. {hint}"

    # ---- save / load ---------------------------------------------------------------------------------
    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        if not safe_serialization:
            raise ValueError("st_tp saves weights as safetensors only (loading never unpickles); drop safe_serialization=False.")
        self.auto_model.save_pretrained(output_path)
        self.save_tokenizer(output_path)
        self.save_config(output_path)
        save_file({"pst_embedding": self.pst_embedding.detach().float().cpu().contiguous()}, os.path.join(output_path, PST_FILE))

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", token: bool | str | None = None,
             cache_folder: str | None = None, revision: str | None = None, local_files_only: bool = False,
             model_kwargs: dict[str, Any] | None = None, processor_kwargs: dict[str, Any] | None = None,
             config_kwargs: dict[str, Any] | None = None, backend: str = "torch", **kwargs) -> TokenPrepending:
        """ST's `load` (the saved config's flat keys into the constructor), plus what the folder holds besides the
        config: the weights (read from the folder itself) and the <PST> vector."""
        if backend != "torch":
            raise ValueError(
                f"backend={backend!r} is not supported: Token Prepending patches the PyTorch decoder forward, which an "
                "exported ONNX/OpenVINO graph does not have. Load with backend='torch' (the default)."
            )
        hub = dict(subfolder=subfolder, token=token, cache_folder=cache_folder, revision=revision, local_files_only=local_files_only)
        config = cls.load_config(model_name_or_path, **hub)
        if not config:
            raise ValueError(f"{model_name_or_path} has no {cls.config_file_name}; it was not saved by st_tp.")
        module_keys = {key: config.pop(key, None) for key in ("num_hidden_layers_base", "base_model")}
        if type(module_keys["num_hidden_layers_base"]) is not int:  # the folder holds the pruned layers only
            raise ValueError(f"{cls.config_file_name}: num_hidden_layers_base must be an int, got "
                             f"{module_keys['num_hidden_layers_base']!r}.")
        tp_config = TPConfig.from_dict(config, source=f"{model_name_or_path}/{cls.config_file_name}")
        folder = cls.load_dir_path(model_name_or_path, **hub)
        pst_path = os.path.join(folder, PST_FILE)
        if not os.path.exists(pst_path):
            raise ValueError(f"{model_name_or_path} has no {PST_FILE}; the <PST> vector is part of a saved st_tp model.")
        return cls(folder, tp_config, **module_keys, pst_embedding=load_file(pst_path)["pst_embedding"],
                   keep_stored_dtype=True, model_kwargs=model_kwargs, processor_kwargs=processor_kwargs,
                   config_kwargs=config_kwargs)
