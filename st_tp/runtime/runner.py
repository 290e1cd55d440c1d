"""The TP runner: one object that runs the Token Prepending pass of one model, and the only caller of `run_layers`
outside st_tp.runtime.forward.

It holds what the pass needs and nothing about text: the pruned decoder (`model`), the TP layers, the exit layer, the
<PST> vector, the A.5 mask layer and the prefix-cache policy (with its store). Token ids come in as features (from
`TokenPrepending.preprocess`) or as template batches; `last_token_states` returns the last real token's state at any
hidden_states indices, averaged over the prompt's templates. The ST module, the sweep (through `recorder=`), the
MTEB metadata and the benchmarks all call it.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Collection
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor, nn

from .batching import TemplateBatch, average_over_templates, template_batches
from .decoder import find_decoder, resolve_layer
from .forward import run_layers
from .loading import DtypeRule, load_model
from .prefix_cache import PrefixCacheStore
from .pst import make_pst_embedding

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from .config import TPConfig

_DTYPE_SWITCH = threading.Lock()  # on_nonfinite="float32" converts the model in place, once


class Recorder(Protocol):
    """Watches each template's pass of `last_token_states` (e.g. the sweep's st_tp.resume.TPEndRecorder): the pass
    keeps the inputs of `whole_inputs` layers whole while `watch` is active, and `results` turns what the pass captured
    into the states the recorder reports (they are averaged over the templates like the captured ones)."""

    whole_inputs: Collection[int]

    def watch(self, model: nn.Module) -> contextlib.AbstractContextManager: ...

    def results(self, model: nn.Module, batch: TemplateBatch, captured: dict[int, Tensor]) -> dict: ...


class TPRunner(nn.Module):
    """The TP pass of one (pruned) Hugging Face decoder.

    Args:
        model: the base model (or causal LM) holding decoder layers 0..k-1 for the deepest index it serves.
        tp_layers: decoder layers whose <PST> rows take the last token's state (empty: no TP).
        exit_layer: the hidden_states index the embedding reads (resolved, 0..total_layers).
        total_layers: the decoder's layer count before pruning (hidden_states[total_layers] is the final-normed output).
        pst_embedding: the <PST> input vector [hidden_size].
        mask_pst_layer: the layer whose attention hides the <PST> keys (paper A.5), or None.
        prefix_cache: reuse the keys/values of each template's shared prefix; off whenever `mask_pst_layer` is set
            (the A.5 ablation runs without the cache).
        dtype_rule: how the model's dtype follows the device it moves to (st_tp.runtime.loading.DtypeRule).
        float32_fallback: on NaN or infinite embeddings, switch the model to float32 and run again
            (on_nonfinite='float32') instead of raising.
    """

    def __init__(self, model: nn.Module, *, tp_layers: Collection[int], exit_layer: int, total_layers: int,
                 pst_embedding: Tensor, mask_pst_layer: int | None = None, prefix_cache: bool = True,
                 dtype_rule: DtypeRule | None = None, float32_fallback: bool = False) -> None:
        super().__init__()
        self.dtype_rule = dtype_rule or DtypeRule(follows_device=False)
        self.float32_fallback = float32_fallback
        self.model = model
        self.tp_layers = tuple(tp_layers)
        self.exit_layer, self.total_layers, self.mask_pst_layer = exit_layer, total_layers, mask_pst_layer
        hidden_size = self.hidden_size
        if pst_embedding.shape != (hidden_size,):
            raise ValueError(f"pst_embedding has shape {tuple(pst_embedding.shape)}, expected ({hidden_size},).")
        self.register_buffer("pst_embedding", pst_embedding.float(), persistent=False)
        self.prefix_cache = prefix_cache and mask_pst_layer is None
        self.prefix_caches = PrefixCacheStore()  # keys/values of each template's shared prefix, per device and dtype

    @classmethod
    def load(cls, model_name_or_path: str, tp_config: TPConfig, hf_config, tokenizer: PreTrainedTokenizerBase, *,
             total_layers: int, pst_embedding: Tensor | None = None, keep_stored_dtype: bool = False,
             model_kwargs: dict[str, Any] | None = None) -> TPRunner:
        """The runner of `tp_config` on a model of `total_layers` (unpruned): checks the exit layer and tp_end against
        the depth (the one place they are), loads only the layers the exit needs (st_tp.runtime.loading.load_model),
        builds the <PST> vector from `pst_init` unless given."""
        exit_layer = resolve_layer(tp_config.output_layer, total_layers)
        tp_layers = tp_config.tp_layers(total_layers)
        model, dtype_rule = load_model(model_name_or_path, hf_config, tp_config, exit_layer,
                                       keep_stored_dtype=keep_stored_dtype, model_kwargs=model_kwargs)
        if pst_embedding is None:
            pst_embedding = make_pst_embedding(tp_config.pst_init, find_decoder(model).get_input_embeddings(), tokenizer)
        return cls(model, tp_layers=tp_layers, exit_layer=exit_layer, total_layers=total_layers,
                   pst_embedding=pst_embedding, mask_pst_layer=0 if tp_config.mask_pst_first_layer else None,
                   prefix_cache=tp_config.prefix_cache, dtype_rule=dtype_rule,
                   float32_fallback=tp_config.on_nonfinite == "float32")

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def hidden_size(self) -> int:
        return find_decoder(self.model).config.hidden_size

    def _apply(self, fn, recurse: bool = True):
        """`.to(device)` and friends: dtype 'auto' settles for the device the model really moves to."""
        self.dtype_rule.settle(self.model, fn)
        return super()._apply(fn, recurse)

    def template_batches(self, features: dict[str, Tensor]) -> list[TemplateBatch]:
        """Each template's rows of `features`, ready for the pass (st_tp.runtime.batching.template_batches), the
        shared prefix taken from the cache when the policy allows."""
        return template_batches(features, self.model, self.prefix_caches if self.prefix_cache else None)

    def embed(self, features_or_batches: dict[str, Tensor] | list[TemplateBatch]) -> Tensor:
        """Each text's embedding [B, H] in float32: its last real token's state at the exit layer."""
        embeddings = self.last_token_states(features_or_batches, [self.exit_layer])[self.exit_layer]
        if torch.isfinite(embeddings).all():
            return embeddings
        if self.float32_fallback and self.dtype != torch.float32:
            warnings.warn(f"{self._nonfinite_message(embeddings)} on_nonfinite='float32': switching the model to "
                          "float32.", RuntimeWarning, stacklevel=3)
            with _DTYPE_SWITCH:
                self.model.float()
            return self.embed(features_or_batches)
        raise FloatingPointError(self._nonfinite_message(embeddings))

    def _nonfinite_message(self, embeddings: Tensor) -> str:
        bad = (~torch.isfinite(embeddings).all(dim=1)).sum().item()
        hint = (
            f"The model runs in {self.dtype}, whose range this backbone overflows (Gemma-2 is known to): load it with "
            "dtype='bfloat16' or 'float32', or set on_nonfinite='float32' to fall back automatically."
            if self.dtype == torch.float16
            else "Check the model weights and inputs."
        )
        return f"{bad} of {len(embeddings)} embeddings are NaN or infinite. {hint}"

    def last_token_states(self, features_or_batches: dict[str, Tensor] | list[TemplateBatch], layers: Collection[int],
                          recorder: Recorder | None = None) -> dict:
        """{hidden_states index: last-token states [B, H] in float32} for `layers` (resolved indices), averaged over
        the prompt's templates; TP applies to rows with <PST> slots. With a `recorder`, the states it reports."""
        batches = features_or_batches
        if isinstance(batches, dict):
            batches = self.template_batches(batches)
        return average_over_templates(batches, lambda batch: self.run(batch, layers, recorder))

    def run(self, batch: TemplateBatch, layers: Collection[int], recorder: Recorder | None = None) -> dict:
        """One template's batch through the TP pass (st_tp.runtime.forward.run_layers)."""

        def run_pass(whole_inputs: Collection[int] = ()) -> dict[int, Tensor]:
            return run_layers(
                self.model, batch.input_ids, batch.attention_mask, batch.pst_positions,
                tp_layers=self.tp_layers if batch.pst_positions is not None else (), capture=layers,
                pst_embedding=self.pst_embedding, prefix=batch.prefix, mask_pst_layer=self.mask_pst_layer,
                total_layers=self.total_layers, whole_inputs=whole_inputs,
            )

        if recorder is None:
            return run_pass()
        with recorder.watch(self.model):
            captured = run_pass(recorder.whole_inputs)
        return recorder.results(self.model, batch, captured)
