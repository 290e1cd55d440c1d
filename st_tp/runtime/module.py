"""`TokenPrepending`: a sentence-transformers input module that wraps sentences in an embedding prompt and
runs the Token-Prepending forward of a Hugging Face decoder, reading the last token at the exit layer.

ST's contract: the constructor takes the flat keys it saves (`config_keys`: every TPConfig key, plus the unpruned
layer count and the base model's name); `preprocess` tokenizes (st_tp.runtime.batching.collate) -> features -> `forward`
hands them to the module's TP runner (`runner`, st_tp.runtime.runner.TPRunner: the pruned decoder, the TP layers, the
<PST> vector, the prefix cache) -> features with the embedding.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from sentence_transformers.base.modules import InputModule
from torch import Tensor

from .batching import collate
from .config import SAVED_CONFIG, TPConfig
from .identity import PST_FILE, folder_name, folder_revision, wrong_class_message
from .loading import load_config, load_tokenizer
from .prompts import PromptEncoder, PromptEncoderCache, templates_for
from .runner import TPRunner
from .shipping import ship_runtime


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
            device rule casts them when the module moves (st_tp.runtime.loading.DtypeRule).
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
        self.runner = TPRunner.load(model_name_or_path, tp_config, hf_config, self.tokenizer,
                                    total_layers=num_hidden_layers_base or hf_config.num_hidden_layers,
                                    pst_embedding=pst_embedding, keep_stored_dtype=keep_stored_dtype,
                                    model_kwargs=model_kwargs)
        self.pad_token_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self._encoders = self._encoder_cache()

    def _encoder_cache(self) -> PromptEncoderCache:
        c = self.tp_config
        return PromptEncoderCache(self.tokenizer, self.pad_token_id, num_pst=c.num_pst, preprocess=c.preprocess,
                                  max_seq_length=c.max_seq_length, parse_special_tokens=c.parse_special_tokens)

    def get_config_dict(self) -> dict[str, Any]:
        # The device is where this process runs, not a property of the model: a saved model does not pin it.
        return {**self.tp_config.to_dict(), "device": None, "num_hidden_layers_base": self.runner.total_layers,
                "base_model": self.base_model}

    @property
    def model_dtype(self) -> torch.dtype:
        return self.runner.dtype

    @property
    def max_seq_length(self) -> int:
        return self.tp_config.max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        self.tp_config = self.tp_config.replace(max_seq_length=value)
        self._encoders = self._encoder_cache()

    def get_embedding_dimension(self) -> int:
        return self.runner.hidden_size

    # ---- inputs --------------------------------------------------------------------------------------
    @property
    def encoders(self) -> list[PromptEncoder]:
        """One PromptEncoder per template of this model's prompt, in its own form (TP or vanilla)."""
        return self.prompt_encoders(self.tp_config.tp)

    def prompt_encoders(self, tp: bool, templates: Sequence[str] | None = None) -> list[PromptEncoder]:
        """One PromptEncoder per template (default: the model's prompt), in TP or vanilla form."""
        return self._encoders.get(tp, tuple(templates or templates_for(self.tp_config)))

    def preprocess(self, inputs: Sequence[str], prompt: str | None = None, *, tp: bool | None = None,
                   task: str | None = None, processing_kwargs: dict | None = None, **kwargs) -> dict[str, Tensor]:
        """Token ids of every sentence under every template (template-major rows), right-padded. `prompt` and `task`
        pick the templates (st_tp.runtime.prompts.templates_for); `tp` picks their form (default: the model's own)."""
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
        templates = templates_for(self.tp_config, prompt, task)
        features = collate(self.prompt_encoders(tp, templates), list(inputs), self.pad_token_id)
        features["templates"] = templates
        if not tp:
            features.pop("pst_positions")
        return features

    # ---- forward -------------------------------------------------------------------------------------
    def forward(self, features: dict[str, Tensor], **kwargs) -> dict[str, Tensor]:
        embeddings = self.runner.embed(features)
        features = _EmbeddingFeatures(features)
        features["sentence_embedding"] = embeddings
        return features

    # ---- save / load ---------------------------------------------------------------------------------
    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        if not safe_serialization:
            raise ValueError("st_tp saves weights as safetensors only (loading never unpickles); drop safe_serialization=False.")
        self.runner.model.save_pretrained(output_path)
        self.save_tokenizer(output_path)
        self.save_config(output_path)
        save_file({"pst_embedding": self.runner.pst_embedding.detach().float().cpu().contiguous()}, os.path.join(output_path, PST_FILE))
        ship_runtime(output_path)  # the runtime code, so the folder loads without st_tp (st_tp.runtime.shipping)

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
        module = cls(folder, tp_config, **module_keys, pst_embedding=load_file(pst_path)["pst_embedding"],
                     keep_stored_dtype=True, model_kwargs=model_kwargs, processor_kwargs=processor_kwargs,
                     config_kwargs=config_kwargs)
        module.source_folder = folder
        return module

    source_folder: str | None = None  # the saved folder this module was loaded from

    def on_model_ready(self, model) -> None:
        """Called by sentence-transformers once the model around this module is built. A TP model is a
        SentenceTransformer: SparseEncoder would stack an untrained autoencoder on it, so any other class is refused
        (CrossEncoder never gets here: it loads the weights into its own classifier, which config.json's
        auto_map refuses, st_tp.runtime.shipping). A loaded folder gets the name and
        the settings+weights revision that MTEB files its results under (st_tp.runtime.identity)."""
        from sentence_transformers import SentenceTransformer

        if not isinstance(model, SentenceTransformer):
            raise ValueError(wrong_class_message(self.source_folder, type(model).__name__))
        if self.source_folder is not None:
            card = model.model_card_data
            if not (card.model_name or card.base_model):
                card.model_name = folder_name(self.source_folder)
            card.base_model_revision = folder_revision(self.source_folder, dtype=self.model_dtype)
