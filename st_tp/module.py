"""`TokenPrepending`: a sentence-transformers input module that wraps sentences in an embedding prompt and
runs the Token-Prepending forward of a Hugging Face decoder, reading the last token at the exit layer."""

from __future__ import annotations

import copy
import logging
import os
import threading
import warnings
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from sentence_transformers.base.modules import InputModule
from torch import Tensor
from transformers import AutoConfig, AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

from st_tp.config import TPConfig
from st_tp.forward import PrefixKV, find_decoder, resolve_layer, run_layers
from st_tp.prompts import PromptEncoder, resolve_templates
from st_tp.pst import make_pst_embedding

logger = logging.getLogger(__name__)

PST_FILE = "pst_embedding.safetensors"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_MIN_PREFIX_TOKENS = 2  # a BOS alone is not worth a cache


def resolve_device(device: str | None) -> str:
    """None = CUDA when available, else CPU."""
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(dtype: str, device: str | None) -> torch.dtype:
    """'auto' = float16 on CUDA (the paper's setting), float32 elsewhere."""
    if dtype == "auto":
        return torch.float16 if resolve_device(device).startswith("cuda") else torch.float32
    return _DTYPES[dtype]


def truncate_config(hf_config, num_layers: int) -> None:
    """Keep only the first `num_layers` decoder layers; per-layer lists (e.g. layer_types) are cut alike."""
    total = hf_config.num_hidden_layers
    for name, value in list(vars(hf_config).items()):
        if isinstance(value, list) and len(value) == total:
            setattr(hf_config, name, value[:num_layers])
    hf_config.num_hidden_layers = num_layers


def collate(encoders: list[PromptEncoder], texts: list[str], pad_token_id: int) -> dict[str, Tensor]:
    """Token ids of every text under every template (template-major rows), left-padded, with <PST> columns and,
    per template, how many ids of the template's prefix every row starts with (the part of the cache to use)."""
    encoded = [encoder.encode(text) for encoder in encoders for text in texts]
    width = max(len(e.input_ids) for e in encoded)
    input_ids = torch.full((len(encoded), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, e in enumerate(encoded):
        input_ids[row, width - len(e.input_ids) :] = torch.tensor(e.input_ids)
        attention_mask[row, width - len(e.input_ids) :] = 1
    pst_positions = torch.tensor([[width - len(e.input_ids) + p for p in e.pst_positions] for e in encoded], dtype=torch.long)
    rows_per_template = len(texts)
    prefix_lengths = torch.tensor(
        [min(e.shared_prefix for e in encoded[g * rows_per_template : (g + 1) * rows_per_template]) for g in range(len(encoders))],
        dtype=torch.long,
    )
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pst_positions": pst_positions, "prefix_lengths": prefix_lengths}


class TokenPrepending(InputModule):
    """Prompt wrapping + Token-Prepending decoder forward + last-token readout, as one ST input module.

    Args:
        model_name_or_path: a Hugging Face decoder-only model (hub id or local folder), or a saved st_tp folder.
        tp_config: the settings; see `st_tp.config.TPConfig`.
        num_hidden_layers_base: the decoder's layer count before pruning (set when loading a saved model).
        pst_embedding: the <PST> vector; built from `tp_config.pst_init` when None.
        model_kwargs / processor_kwargs / config_kwargs: passed to the HF model / tokenizer / config loaders.
    """

    config_file_name = "st_tp_config.json"
    config_keys = [f.name for f in fields(TPConfig)] + ["num_hidden_layers_base"]

    def __init__(
        self,
        model_name_or_path: str,
        tp_config: TPConfig | None = None,
        *,
        num_hidden_layers_base: int | None = None,
        pst_embedding: Tensor | None = None,
        model_kwargs: dict[str, Any] | None = None,
        processor_kwargs: dict[str, Any] | None = None,
        config_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.tp_config = tp_config = tp_config or TPConfig()
        self.tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, **(processor_kwargs or {}))
        if not getattr(self.tokenizer, "is_fast", False):
            raise ValueError(
                f"{type(self.tokenizer).__name__} is a slow tokenizer; st_tp needs a fast (tokenizers-backed) one to "
                "reproduce the official token ids. Provide tokenizer.json with the model."
            )
        hf_config = AutoConfig.from_pretrained(model_name_or_path, **(config_kwargs or {}))
        if getattr(hf_config, "is_encoder_decoder", False) or not hasattr(hf_config, "num_hidden_layers"):
            hint = " For a multimodal checkpoint, use its text-only model." if hasattr(hf_config, "text_config") else ""
            raise ValueError(
                f"{type(hf_config).__name__} is not a decoder-only model config (no num_hidden_layers, or an "
                f"encoder-decoder); st_tp needs a decoder-only LLM.{hint}"
            )
        self.num_hidden_layers_base = num_hidden_layers_base or hf_config.num_hidden_layers
        self.exit_layer = resolve_layer(tp_config.output_layer, self.num_hidden_layers_base)
        # Early exit at k needs layers 0..k-1 only: the rest are never loaded (the final norm is tiny and stays).
        if self.exit_layer < hf_config.num_hidden_layers:
            truncate_config(hf_config, self.exit_layer)

        model_kwargs = dict(model_kwargs or {})
        dtype = model_kwargs.pop("dtype", model_kwargs.pop("torch_dtype", None))
        if isinstance(dtype, str) and dtype != "auto":
            if dtype not in _DTYPES:
                raise ValueError(f"Unknown dtype {dtype!r} in model_kwargs. Allowed: auto, {', '.join(_DTYPES)}.")
            dtype = _DTYPES[dtype]
        dtype = dtype if isinstance(dtype, torch.dtype) else resolve_dtype(tp_config.dtype, tp_config.device)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the pruned layers and any LM head are "unexpected keys", by design
        hf_logging.disable_progress_bar()
        try:
            self.auto_model, info = AutoModel.from_pretrained(
                model_name_or_path, config=hf_config, dtype=dtype, output_loading_info=True, **model_kwargs
            )
        finally:
            hf_logging.set_verbosity(verbosity)
            hf_logging.enable_progress_bar()
        if info.get("missing_keys"):
            raise ValueError(
                f"Loading {model_name_or_path} left weights uninitialised: {sorted(info['missing_keys'])[:5]}... "
                "The checkpoint does not match its config."
            )
        self.auto_model.eval()
        decoder = find_decoder(self.auto_model)

        if pst_embedding is None:
            pst_embedding = make_pst_embedding(tp_config.pst_init, decoder.get_input_embeddings(), self.tokenizer)
        if pst_embedding.shape != (decoder.config.hidden_size,):
            raise ValueError(f"pst_embedding has shape {tuple(pst_embedding.shape)}, expected ({decoder.config.hidden_size},).")
        self.register_buffer("pst_embedding", pst_embedding.float(), persistent=False)
        self._build_encoders()
        self._prefix_kv: dict[tuple, PrefixKV] = {}
        self._prefix_lock = threading.Lock()

    def _build_encoders(self) -> None:
        self.pad_token_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.encoders = self.make_encoders(self.tp_config.tp)

    def make_encoders(self, tp: bool) -> list[PromptEncoder]:
        """One PromptEncoder per template of this model's prompt (TP or vanilla form)."""
        c = self.tp_config
        return [
            PromptEncoder(
                self.tokenizer,
                template,
                tp=tp,
                num_pst=c.num_pst,
                preprocess=c.preprocess,
                max_seq_length=c.max_seq_length,
                placeholder_id=self.pad_token_id,
            )
            for template in resolve_templates(c.prompt_method, c.template)
        ]

    # ---- configuration -------------------------------------------------------------------------------
    def get_config_dict(self) -> dict[str, Any]:
        # The device is where this process runs, not a property of the model: a saved model does not pin it.
        return {**self.tp_config.to_dict(), "device": None, "num_hidden_layers_base": self.num_hidden_layers_base}

    @property
    def model_dtype(self) -> torch.dtype:
        return next(self.auto_model.parameters()).dtype

    @property
    def max_seq_length(self) -> int:
        return self.tp_config.max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        self.tp_config = self.tp_config.replace(max_seq_length=value)
        self._build_encoders()

    def get_embedding_dimension(self) -> int:
        return find_decoder(self.auto_model).config.hidden_size

    @property
    def tp_layers(self) -> list[int]:
        c = self.tp_config
        if not c.tp:
            return []
        layers = set(range(c.tp_start, c.tp_end))
        if c.tp_resume_layer is not None:
            layers |= set(range(c.tp_resume_layer, self.num_hidden_layers_base))
        return sorted(layers)

    # ---- inputs --------------------------------------------------------------------------------------
    def preprocess(self, inputs: Sequence[str], prompt: str | None = None, **kwargs) -> dict[str, Tensor]:
        """Tokenize every sentence with every template (template-major rows), left-padded."""
        for text in inputs:
            if not isinstance(text, str):
                raise ValueError(f"TokenPrepending embeds text only; got {type(text).__name__}: {text!r:.80}.")
        texts = [prompt + text for text in inputs] if prompt else list(inputs)
        features = collate(self.encoders, texts, self.pad_token_id)
        if not self.tp_config.tp:
            features.pop("pst_positions")
        return features

    # ---- forward -------------------------------------------------------------------------------------
    def forward(self, features: dict[str, Tensor], **kwargs) -> dict[str, Tensor]:
        input_ids, attention_mask = features["input_ids"], features["attention_mask"]
        pst_positions = features.get("pst_positions")
        num_templates = len(self.encoders)
        batch = input_ids.shape[0] // num_templates
        per_template = []
        for g in range(num_templates):  # one sub-batch per template: each has its own cached prefix
            rows = slice(g * batch, (g + 1) * batch)
            per_template.append(
                self._embed(
                    g,
                    input_ids[rows],
                    attention_mask[rows],
                    None if pst_positions is None else pst_positions[rows],
                    int(features["prefix_lengths"][g]) if "prefix_lengths" in features else 0,
                ).float()
            )
        embeddings = torch.stack(per_template).mean(0)  # MetaEOL averages its templates; others have one
        if not torch.isfinite(embeddings).all():
            if self.tp_config.on_nonfinite == "float32" and self.model_dtype != torch.float32:
                warnings.warn(
                    f"{self._nonfinite_message(embeddings)} on_nonfinite='float32': switching the model to float32.",
                    RuntimeWarning, stacklevel=2,
                )
                with self._prefix_lock:
                    self.auto_model.float()
                return self.forward(features, **kwargs)
            raise FloatingPointError(self._nonfinite_message(embeddings))
        features["sentence_embedding"] = embeddings
        return features

    def _embed(self, template: int, input_ids: Tensor, attention_mask: Tensor, pst_positions, prefix_len: int) -> Tensor:
        input_ids, attention_mask, pst_positions, prefix = self.prepare(
            self.encoders[template], input_ids, attention_mask, pst_positions, prefix_len
        )
        captured = run_layers(
            self.auto_model,
            input_ids,
            attention_mask,
            pst_positions,
            tp_layers=self.tp_layers,
            capture=[self.exit_layer],
            pst_embedding=self.pst_embedding,
            prefix=prefix,
            mask_pst_layer=0 if self.tp_config.mask_pst_first_layer else None,
            num_layers=self.num_hidden_layers_base,
        )
        return captured[self.exit_layer]

    def prepare(self, encoder: PromptEncoder, input_ids: Tensor, attention_mask: Tensor, pst_positions, prefix_len: int):
        """One template's rows, ready for `run_layers`: the first `prefix_len` columns (the part of the template's
        prefix that every row shares) hidden and taken from the cache when it is on, columns that are padding in
        every row dropped. Returns ids, mask, <PST>, prefix."""
        c = self.tp_config
        prefix = None
        if c.prefix_cache and not c.mask_pst_first_layer and prefix_len >= _MIN_PREFIX_TOKENS:
            # Keys/values of a prefix's first k tokens do not depend on what follows (causal): one cache serves all k.
            prefix = self._prefix(encoder.prefix_ids, input_ids.device).head(prefix_len)
            # Rows are left-padded [pad | prefix | rest]: hide the prefix columns, they come from the cache.
            columns = torch.arange(input_ids.shape[1], device=input_ids.device)
            starts = input_ids.shape[1] - attention_mask.sum(1, keepdim=True)
            attention_mask = attention_mask * (columns >= starts + prefix_len)
        first = int(attention_mask.any(0).long().argmax())  # drop columns that are padding in every row
        input_ids, attention_mask = input_ids[:, first:], attention_mask[:, first:]
        if pst_positions is not None:
            pst_positions = pst_positions - first
        return input_ids, attention_mask, pst_positions, prefix

    def _prefix(self, prefix_ids: list[int], device: torch.device) -> PrefixKV:
        dtype = self.model_dtype
        key = (tuple(prefix_ids), str(device), dtype)
        with self._prefix_lock:  # computed once per prefix (template and TP form), device and dtype
            if key not in self._prefix_kv:
                layers_needed = min(self.exit_layer, len(find_decoder(self.auto_model).layers))
                self._prefix_kv[key] = PrefixKV.compute(self.auto_model, prefix_ids, layers_needed, device, dtype)
            return self._prefix_kv[key]

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
        self.auto_model.save_pretrained(output_path, safe_serialization=True)
        self.save_tokenizer(output_path)
        self.save_config(output_path)
        save_file({"pst_embedding": self.pst_embedding.detach().float().cpu().contiguous()}, os.path.join(output_path, PST_FILE))

    @classmethod
    def load(
        cls,
        model_name_or_path: str,
        subfolder: str = "",
        token: bool | str | None = None,
        cache_folder: str | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        processor_kwargs: dict[str, Any] | None = None,
        config_kwargs: dict[str, Any] | None = None,
        **kwargs,
    ) -> TokenPrepending:
        hub = dict(subfolder=subfolder, token=token, cache_folder=cache_folder, revision=revision, local_files_only=local_files_only)
        config = cls.load_config(model_name_or_path, **hub)
        if not config:
            raise ValueError(f"{model_name_or_path} has no {cls.config_file_name}; it was not saved by st_tp.")
        num_layers = config.pop("num_hidden_layers_base", None)
        if not isinstance(num_layers, int) or isinstance(num_layers, bool):
            raise ValueError(f"{cls.config_file_name}: num_hidden_layers_base must be an int, got {num_layers!r}.")
        tp_config = TPConfig.from_dict(config, source=f"{model_name_or_path}/{cls.config_file_name}")
        local_dir = cls.load_dir_path(model_name_or_path, **hub)
        pst_path = os.path.join(local_dir, PST_FILE)
        if not os.path.exists(pst_path):
            raise ValueError(f"{model_name_or_path} has no {PST_FILE}; the <PST> vector is part of a saved st_tp model.")
        pst_embedding = load_file(pst_path)["pst_embedding"]
        return cls(
            local_dir,
            tp_config,
            num_hidden_layers_base=num_layers,
            pst_embedding=pst_embedding,
            model_kwargs=model_kwargs,
            processor_kwargs=processor_kwargs,
            config_kwargs=config_kwargs,
        )

    # ---- pickling (multi-process pools) --------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = copy.copy(self.__dict__)
        state["_prefix_kv"] = {}
        state.pop("_prefix_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._prefix_lock = threading.Lock()
