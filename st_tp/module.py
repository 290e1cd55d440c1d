"""`TokenPrepending`: a sentence-transformers input module that wraps sentences in an embedding prompt and
runs the Token-Prepending forward of a Hugging Face decoder, reading the last token at the exit layer.

One path per batch: `preprocess` tokenizes every sentence under every template of the prompt, `template_batches`
gives each template's rows ready for the TP forward (the shared prefix taken from the cache, padding trimmed), and
`last_token_states` runs them and averages the templates. `forward`, the sweep and the benchmarks all go through it.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from sentence_transformers.base.modules import InputModule
from torch import Tensor

from st_tp.config import TPConfig, check_template, resolve_device, resolve_dtype
from st_tp.forward import find_decoder, resolve_layer, run_layers
from st_tp.loading import load_config, load_pruned_model, load_tokenizer, model_dtype
from st_tp.prefix_cache import PrefixCacheStore, PrefixKV
from st_tp.prompts import TEXT, PromptEncoder, resolve_templates
from st_tp.pst import make_pst_embedding

PST_FILE = "pst_embedding.safetensors"
# The prefix cache is used from this many shared prefix tokens on (a BOS alone is not worth a cache), with
# prefix_cache True or "auto" alike. Measured on the 2-core CPU with SmolLM2-135M and Gemma-3-270M
# (benchmarks/bench_speed.py --model ..., RESULTS.md): with right-padded rows the cache is faster for every prompt
# method, PromptEOL's 3-4 cached tokens included (TP time cache on / off, SmolLM2 / Gemma-3: PromptEOL 0.87 / 0.85,
# CoT 0.71 / 0.63, KE 0.38 / 0.31, MetaEOL 0.28 / 0.23), so "auto" needs no threshold of its own.
_MIN_PREFIX_TOKENS = 2
_DTYPE_SWITCH = threading.Lock()  # on_nonfinite="float32" converts the model in place, once
_MAX_ENCODER_SETS = 64  # prompt encoders kept per model (one set per distinct prompt/instruction seen)


class _EmbeddingFeatures(dict):
    """The forward's output: asking it for token embeddings names the problem instead of a bare KeyError."""

    def __missing__(self, key: str):
        if key == "token_embeddings":
            raise ValueError(
                "st_tp embeds each text as one vector (the last token's state at the exit layer), so "
                "output_value='token_embeddings' is not available. Use output_value='sentence_embedding' (the default)."
            )
        raise KeyError(key)


def collate(encoders: list[PromptEncoder], texts: list[str], pad_token_id: int) -> dict[str, Tensor]:
    """Token ids of every text under every template (template-major rows), right-padded, with <PST> columns and,
    per template, how many ids of the template's prefix every row starts with (the part of the cache to use).

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
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pst_positions": pst_positions, "prefix_lengths": prefix_lengths}


@dataclass
class TemplateBatch:
    """One template's rows, ready for `run_layers`."""

    input_ids: Tensor
    attention_mask: Tensor
    pst_positions: Tensor | None  # None = vanilla prompt
    prefix: PrefixKV | None  # keys/values of the columns before `input_ids`


class TokenPrepending(InputModule):
    """Prompt wrapping + Token-Prepending decoder forward + last-token readout, as one ST input module.

    Args:
        model_name_or_path: a Hugging Face decoder-only model (hub id or local folder), or a saved st_tp folder.
        tp_config: the settings; see `st_tp.config.TPConfig`.
        total_layers: the decoder's layer count before pruning (set when loading a saved model, which holds only
            the layers its exit layer needs).
        pst_embedding: the <PST> vector; built from `tp_config.pst_init` when None.
        keep_stored_dtype: load the weights in the dtype they are stored in (a saved st_tp model). With dtype 'auto'
            they then load without rounding, and the device rule casts them when the module moves: sentence-transformers
            picks the device only after loading.
        base_model_name: what the model was built from, kept in the saved config (MTEB metadata).
        model_kwargs / processor_kwargs / config_kwargs: passed to the HF model / tokenizer / config loaders.
    """

    config_file_name = "st_tp_config.json"
    # On disk the unpruned layer count keeps its first name, so folders saved by earlier versions still load.
    _TOTAL_LAYERS_KEY = "num_hidden_layers_base"
    _BASE_MODEL_KEY = "base_model"  # what the model was built from (hub id or the name it was given); for MTEB metadata

    def __init__(
        self,
        model_name_or_path: str,
        tp_config: TPConfig | None = None,
        *,
        total_layers: int | None = None,
        pst_embedding: Tensor | None = None,
        keep_stored_dtype: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        processor_kwargs: dict[str, Any] | None = None,
        config_kwargs: dict[str, Any] | None = None,
        base_model_name: str | None = None,
    ) -> None:
        super().__init__()
        self.base_model_name = base_model_name or model_name_or_path
        self.tp_config = tp_config = tp_config or TPConfig()
        self.tokenizer = load_tokenizer(model_name_or_path, processor_kwargs)
        hf_config = load_config(model_name_or_path, config_kwargs)
        self.total_layers = total_layers or hf_config.num_hidden_layers
        self.exit_layer = resolve_layer(tp_config.output_layer, self.total_layers)
        model_kwargs = dict(model_kwargs or {})
        device = resolve_device(tp_config.device)
        if "quantization_config" in model_kwargs and not device.startswith("cuda"):
            raise ValueError(
                "model_kwargs['quantization_config'] (bitsandbytes 4/8-bit) needs a CUDA GPU, and this model would run "
                f"on {device!r}. Drop the quantization_config, or build on a CUDA device."
            )
        # dtype 'auto' is a rule (float16 on CUDA, float32 elsewhere): it is applied again when the module moves.
        self._dtype_follows_device = tp_config.dtype == "auto" and not (
            {"dtype", "torch_dtype", "quantization_config", "device_map"} & set(model_kwargs))
        dtype = model_dtype(model_kwargs, tp_config.dtype, device)
        stored_dtype = getattr(hf_config, "dtype", None)
        if self._dtype_follows_device and keep_stored_dtype and isinstance(stored_dtype, torch.dtype):
            dtype = stored_dtype
        # Early exit at k needs layers 0..k-1 only (the final norm is tiny and stays).
        self.auto_model = load_pruned_model(model_name_or_path, hf_config, self.exit_layer, dtype, model_kwargs)
        decoder = find_decoder(self.auto_model)
        if pst_embedding is None:
            pst_embedding = make_pst_embedding(tp_config.pst_init, decoder.get_input_embeddings(), self.tokenizer)
        if pst_embedding.shape != (decoder.config.hidden_size,):
            raise ValueError(f"pst_embedding has shape {tuple(pst_embedding.shape)}, expected ({decoder.config.hidden_size},).")
        self.register_buffer("pst_embedding", pst_embedding.float(), persistent=False)
        self.pad_token_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self._encoders: dict[tuple[bool, tuple[str, ...]], list[PromptEncoder]] = {}
        self.prefix_cache = PrefixCacheStore()

    # ---- device and dtype ----------------------------------------------------------------------------
    def _apply(self, fn, recurse: bool = True):
        """`.to(device)` and friends. sentence-transformers loads a module before it knows the device and moves it
        afterwards, so dtype 'auto' (guessed from the default device at load) is settled here, for the device the
        module really moves to. An explicit cast (`.half()`, `.to(torch.bfloat16)`) is the user's choice and ends it."""
        if getattr(self, "_dtype_follows_device", False):
            probe = fn(torch.zeros(0))
            if probe.dtype != torch.float32:
                self._dtype_follows_device = False
            else:
                wanted = resolve_dtype("auto", str(probe.device))
                if self.model_dtype != wanted:
                    self.auto_model.to(wanted)
        return super()._apply(fn, recurse)

    # ---- configuration -------------------------------------------------------------------------------
    def get_config_dict(self) -> dict[str, Any]:
        # The device is where this process runs, not a property of the model: a saved model does not pin it.
        return {**self.tp_config.to_dict(), "device": None, self._TOTAL_LAYERS_KEY: self.total_layers,
                self._BASE_MODEL_KEY: self.base_model_name}

    @property
    def model_dtype(self) -> torch.dtype:
        return next(self.auto_model.parameters()).dtype

    @property
    def max_seq_length(self) -> int:
        return self.tp_config.max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        self.tp_config = self.tp_config.replace(max_seq_length=value)
        self._encoders.clear()

    def get_embedding_dimension(self) -> int:
        return find_decoder(self.auto_model).config.hidden_size

    @property
    def tp_layers(self) -> list[int]:
        c = self.tp_config
        if not c.tp:
            return []
        layers = set(range(c.tp_start, c.tp_end))
        if c.tp_resume_layer is not None:
            layers |= set(range(c.tp_resume_layer, self.total_layers))
        return sorted(layers)

    # ---- inputs --------------------------------------------------------------------------------------
    @property
    def encoders(self) -> list[PromptEncoder]:
        """One PromptEncoder per template of this model's prompt, in its own form (TP or vanilla)."""
        return self.prompt_encoders(self.tp_config.tp)

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

    def prompt_encoders(self, tp: bool, templates: Sequence[str] | None = None) -> list[PromptEncoder]:
        """One PromptEncoder per template, in TP or vanilla form (the sweep scores both with one model); `templates`
        defaults to the model's prompt."""
        templates = tuple(templates or self.templates_for())
        key = (tp, templates)
        if key not in self._encoders:
            if len(self._encoders) >= _MAX_ENCODER_SETS:  # many distinct instructions: forget the oldest
                self._encoders.pop(next(iter(self._encoders)))
            c = self.tp_config
            self._encoders[key] = [
                PromptEncoder(self.tokenizer, template, tp=tp, num_pst=c.num_pst, preprocess=c.preprocess,
                              max_seq_length=c.max_seq_length, placeholder_id=self.pad_token_id,
                              parse_special_tokens=c.parse_special_tokens)
                for template in templates
            ]
        return self._encoders[key]

    def preprocess(
        self,
        inputs: Sequence[str],
        prompt: str | None = None,
        *,
        tp: bool | None = None,
        task: str | None = None,
        processing_kwargs: dict | None = None,
        **kwargs,
    ) -> dict[str, Tensor]:
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
        """Each template's rows, ready for `run_layers`: with the prefix cache on, the columns of the template's
        prefix that every row shares are dropped and taken from the cache; trailing all-padding columns go."""
        c = self.tp_config
        pst_positions = features.get("pst_positions")
        encoders = self.prompt_encoders(pst_positions is not None, features.get("templates"))
        rows_per_template = features["input_ids"].shape[0] // len(encoders)
        batches = []
        for g, encoder in enumerate(encoders):
            rows = slice(g * rows_per_template, (g + 1) * rows_per_template)
            input_ids, attention_mask = features["input_ids"][rows], features["attention_mask"][rows]
            pst = None if pst_positions is None else pst_positions[rows]
            shared = int(features["prefix_lengths"][g])
            prefix = None
            if c.prefix_cache in (True, "auto") and not c.mask_pst_first_layer and shared >= _MIN_PREFIX_TOKENS:
                # Keys/values of a prefix's first k tokens do not depend on what follows (causal): one cache serves all k.
                prefix = self.prefix_cache.get(self.auto_model, encoder.prefix_ids, input_ids.device).head(shared)
                # Rows are right-padded [prefix | rest | pad]: the prefix columns come from the cache.
                input_ids, attention_mask = input_ids[:, shared:], attention_mask[:, shared:]
                pst = None if pst is None else pst - shared
            width = int(attention_mask.sum(1).max())  # a template's rows may be shorter than another template's
            batches.append(TemplateBatch(input_ids[:, :width], attention_mask[:, :width], pst, prefix))
        return batches

    # ---- forward -------------------------------------------------------------------------------------
    def last_token_states(self, features: dict[str, Tensor], layers: Collection[int]) -> dict[int, Tensor]:
        """{hidden_states index: last-token states [B, H] in float32} for `layers` (resolved indices), averaged
        over the prompt's templates (MetaEOL has 8; the others one). TP applies when the features hold <PST>."""
        states: dict[int, Tensor] = {}
        batches = self.template_batches(features)
        for batch in batches:
            captured = run_layers(
                self.auto_model, batch.input_ids, batch.attention_mask, batch.pst_positions,
                tp_layers=self.tp_layers if batch.pst_positions is not None else (),
                capture=layers, pst_embedding=self.pst_embedding, prefix=batch.prefix,
                mask_pst_layer=0 if self.tp_config.mask_pst_first_layer else None, total_layers=self.total_layers,
            )
            for k, value in captured.items():
                states[k] = states.get(k, 0) + value.float() / len(batches)
        return states

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
        backend: str = "torch",
        **kwargs,
    ) -> TokenPrepending:
        if backend != "torch":
            raise ValueError(
                f"backend={backend!r} is not supported: Token Prepending patches the PyTorch decoder forward, which an "
                "exported ONNX/OpenVINO graph does not have. Load with backend='torch' (the default)."
            )
        hub = dict(subfolder=subfolder, token=token, cache_folder=cache_folder, revision=revision, local_files_only=local_files_only)
        config = cls.load_config(model_name_or_path, **hub)
        if not config:
            raise ValueError(f"{model_name_or_path} has no {cls.config_file_name}; it was not saved by st_tp.")
        base_model_name = config.pop(cls._BASE_MODEL_KEY, None)  # absent in folders saved before it was kept
        total_layers = config.pop(cls._TOTAL_LAYERS_KEY, None)
        if not isinstance(total_layers, int) or isinstance(total_layers, bool):
            raise ValueError(f"{cls.config_file_name}: {cls._TOTAL_LAYERS_KEY} must be an int, got {total_layers!r}.")
        tp_config = TPConfig.from_dict(config, source=f"{model_name_or_path}/{cls.config_file_name}")
        local_dir = cls.load_dir_path(model_name_or_path, **hub)
        pst_path = os.path.join(local_dir, PST_FILE)
        if not os.path.exists(pst_path):
            raise ValueError(f"{model_name_or_path} has no {PST_FILE}; the <PST> vector is part of a saved st_tp model.")
        pst_embedding = load_file(pst_path)["pst_embedding"]
        return cls(
            local_dir,
            tp_config,
            total_layers=total_layers,
            pst_embedding=pst_embedding,
            keep_stored_dtype=True,
            model_kwargs=model_kwargs,
            processor_kwargs=processor_kwargs,
            config_kwargs=config_kwargs,
            base_model_name=base_model_name,
        )
