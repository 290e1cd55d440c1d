"""Typed configuration of a Token Prepending model, and YAML presets.

`TPConfig` is the single source of truth: the ST module saves it as JSON, `st_tp.build` and the CLI read
it from YAML presets under `configs/`. Loading rejects unknown or ill-typed keys instead of guessing.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .prompts import PROMPTS, check_template
from .pst import parse_pst_init

if TYPE_CHECKING:
    import torch

DTYPE_NAMES = ("float32", "float16", "bfloat16")  # the torch dtypes of the same names
DTYPES = ("auto", *DTYPE_NAMES)


def resolve_device(device: str | None) -> str:
    """None = sentence-transformers' own choice (cuda, mps, npu, xpu, hpu, else cpu)."""
    if device:
        return device
    from sentence_transformers.util import get_device_name

    return get_device_name()


def cpu_runs_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX tiles), as torch reports it."""
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own checks (torch >= 2.3)
    return any(bool(getattr(torch.cpu, probe, lambda: False)()) for probe in probes)


def resolve_dtype(dtype: str, device: str | None) -> torch.dtype:
    """'auto' = float16 on CUDA (the paper's setting); on a CPU that runs bfloat16 natively, bfloat16 (half the time
    of float32 at the same STS scores, benchmarks/RESULTS.md); float32 elsewhere (CPU float16 is slow and inexact)."""
    import torch

    if dtype == "auto":
        device = resolve_device(device)
        if device.startswith("cuda"):
            return torch.float16
        return torch.bfloat16 if device.startswith("cpu") and cpu_runs_bfloat16() else torch.float32
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"Unknown dtype {dtype!r}. Allowed: {', '.join(DTYPES)}.")
    return getattr(torch, dtype)


SAVED_CONFIG = "st_tp_config.json"  # TokenPrepending.config_file_name: the settings of a saved st_tp folder


def saved_dtype(folder: str | Path, device: str | None) -> tuple[str, torch.dtype] | None:
    """(the dtype setting of a saved st_tp folder, the torch dtype it runs in on `device`), read from its config without
    loading the model; None for a folder that is not an st_tp model. Malformed settings resolve as 'auto'."""
    import json

    path = Path(folder) / SAVED_CONFIG
    if not path.is_file():
        return None
    setting = json.loads(path.read_text()).get("dtype", "auto")
    setting = setting if setting in DTYPES else "auto"
    return setting, resolve_dtype(setting, device)


def check_tp_range(tp_start: int, tp_end: int, total_layers: int | None = None) -> None:
    """TP overwrites <PST> before layers tp_start <= i < tp_end: the range must hold at least one layer of the model."""
    if tp_start < 0:
        raise ValueError(f"tp_start must be >= 0, got {tp_start}.")
    if tp_end <= tp_start:
        raise ValueError(
            f"tp_end ({tp_end}) must be greater than tp_start ({tp_start}): TP overwrites <PST> before "
            "layers tp_start <= i < tp_end. Use e.g. tp_start=1, tp_end=7, or tp=False for no TP."
        )
    if total_layers is not None and tp_end > total_layers:
        raise ValueError(
            f"tp_end {tp_end} exceeds the model's {total_layers} decoder layers: TP can act before layers "
            f"{tp_start}..{total_layers - 1} only (a larger tp_end would repeat tp_end={total_layers}). Use tp_end <= "
            f"{total_layers}."
        )


def tp_layer_range(tp_start: int, tp_end: int, total_layers: int | None) -> list[int]:
    """The TP layers: decoder layers tp_start <= i < tp_end, checked against the model's depth (None: unchecked, for
    the low-level `tp_forward`, where a tp_end past the last layer means "every layer from tp_start")."""
    check_tp_range(tp_start, tp_end, total_layers)
    return list(range(tp_start, tp_end))


# The paper's main setting: PromptEOL + TP on Llama-2-7B (32 layers), TP before layers 1..6, exit at hidden_states[27]
# (configs/llama2-7b-prompteol-tp.yaml, from the official config).
PAPER_LAYERS, PAPER_TP_START, PAPER_TP_END, PAPER_EXIT = 32, 1, 7, 27


def paper_setting(total_layers: int) -> dict[str, Any]:
    """The paper's setting scaled to a model of `total_layers` (tp_end and the exit at the same fraction of the depth),
    as TPConfig keys: what the benchmarks call "the paper's setting" on models of other depths."""
    scale = total_layers / PAPER_LAYERS
    return dict(prompt_method="prompteol", tp=True, tp_start=PAPER_TP_START,
                tp_end=max(PAPER_TP_START + 1, round(PAPER_TP_END * scale)), output_layer=round(PAPER_EXIT * scale))


@dataclass(frozen=True)
class TPConfig:
    """Every setting of a Token Prepending embedding model.

    Layer numbers follow Hugging Face's ``hidden_states`` indexing (see README, "Layer indexing").
    """

    prompt_method: str = "prompteol"
    """A name from ``st_tp.runtime.prompts.PROMPTS`` or ``"custom"`` (then ``template`` is required)."""
    template: str | list[str] | None = None
    """Custom template(s) with ``{text}`` and, for TP, a ``<PST>`` marker. Overrides ``prompt_method``."""
    templates: dict[str, str] | None = None
    """Named embedding templates, e.g. ``{"query": ..., "document": ...}`` (each with ``{text}`` and, for TP, ``<PST>``).
    ``prompt_name=``, ``encode_query``/``encode_document`` and MTEB's query/document prompt types pick them; plain
    ``encode`` uses the prompt above. See README, "Prompts and templates"."""
    tp: bool = True
    """Token Prepending on (True) or plain prompt-based embeddings (False)."""
    tp_start: int = 1
    """First decoder layer (0-based) before which the <PST> row is overwritten."""
    tp_end: int = 7
    """TP stops before this layer: layers tp_start <= i < tp_end get the overwrite."""
    output_layer: int = -1
    """hidden_states index read at the last token: 0 embeddings, k input of layer k, -1 final-normed output."""
    pst_init: str = "zeros"
    """<PST> input vector: zeros | ones | normal[:seed] | uniform[:seed] | token:<text>."""
    preprocess: bool = True
    """The official sentence preprocessing (append '.', '"' -> "'", trailing '?' -> '.')."""
    parse_special_tokens: bool = False
    """Special-token text in a sentence ("<bos>", "<s>") stays text. True parses it into control ids, as the official
    code does (for fidelity studies only)."""
    dtype: str = "auto"
    """auto (float16 on CUDA, bfloat16 on a CPU that runs it natively, float32 elsewhere) | float32 | float16 |
    bfloat16."""
    device: str | None = None
    """torch device for `st_tp.build`; None picks what sentence-transformers picks (cuda, mps, ..., cpu)."""
    max_seq_length: int = 512
    """Longer prompts are cut inside the sentence, never in the template."""
    prefix_cache: bool | str = True
    """Reuse the keys/values of the template text before the sentence (exact), wherever the shared prefix has 2+ tokens
    (measured faster for every prompt method; see st_tp.runtime.batching); False never. "auto", which folders saved by earlier
    releases hold, reads as True."""
    num_pst: int = 1
    """Number of consecutive <PST> tokens at the marker (paper A.4); all are overwritten."""
    mask_pst_first_layer: bool = False
    """Hide the <PST> key from attention in decoder layer 0, where it still holds its init (paper A.5)."""
    tp_resume_layer: int | None = None
    """Resume TP before this layer and keep it on until the output (paper A.6)."""
    on_nonfinite: str = "raise"
    """NaN/inf embeddings: "raise" a clear error, or "float32": warn, switch the model to float32, and redo."""

    def __post_init__(self) -> None:
        _check_types(self)
        if self.template is None and self.prompt_method == "custom":
            raise ValueError("prompt_method='custom' needs a `template` containing '{text}'.")
        if self.template is None:
            if self.prompt_method not in PROMPTS:
                raise ValueError(
                    f"Unknown prompt_method {self.prompt_method!r}. Allowed: {sorted(PROMPTS)} or 'custom' with a template."
                )
        if self.templates is not None:
            if not all(isinstance(k, str) and k and isinstance(v, str) for k, v in self.templates.items()):
                raise ValueError(f"templates must map non-empty names to template strings, got {self.templates!r}.")
        for template in [*self.templates_given(), *(self.templates or {}).values()]:
            check_template(template, self.tp)
        if self.tp:
            check_tp_range(self.tp_start, self.tp_end)
        parse_pst_init(self.pst_init)
        if self.dtype not in DTYPES:
            raise ValueError(f"Unknown dtype {self.dtype!r}. Allowed: {', '.join(DTYPES)}.")
        if isinstance(self.prefix_cache, str):
            if self.prefix_cache != "auto":
                raise ValueError(f"prefix_cache must be True or False, got {self.prefix_cache!r}.")
            object.__setattr__(self, "prefix_cache", True)  # earlier releases' "auto" behaved exactly as True
        if self.on_nonfinite not in ("raise", "float32"):
            raise ValueError(f"on_nonfinite must be 'raise' or 'float32', got {self.on_nonfinite!r}.")
        if self.max_seq_length < 4:
            raise ValueError(f"max_seq_length must be at least 4 tokens, got {self.max_seq_length}.")
        if self.num_pst < 1:
            raise ValueError(f"num_pst must be >= 1, got {self.num_pst}.")
        if self.tp_resume_layer is not None and self.tp_resume_layer < self.tp_end:
            raise ValueError(f"tp_resume_layer ({self.tp_resume_layer}) must be >= tp_end ({self.tp_end}).")

    def tp_layers(self, total_layers: int) -> list[int]:
        """The decoder layers whose <PST> rows are overwritten, for a model of `total_layers` (none without TP):
        tp_start..tp_end-1, and tp_resume_layer..L-1 in the A.6 ablation."""
        if not self.tp:
            return []
        layers = tp_layer_range(self.tp_start, self.tp_end, total_layers)
        if self.tp_resume_layer is not None:
            layers += range(self.tp_resume_layer, total_layers)
        return layers

    def templates_given(self) -> list[str]:
        if self.template is None:
            return []
        return [self.template] if isinstance(self.template, str) else list(self.template)

    def replace(self, **overrides: Any) -> TPConfig:
        _reject_unknown(overrides, "override")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TPConfig:
        _reject_unknown(data, source)
        return cls(**data)


def load_preset(path: str | Path) -> tuple[str | None, TPConfig]:
    """Read a YAML preset: TPConfig keys plus an optional ``base_model`` (the model the preset was made for)."""
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"Preset {path} must be a YAML mapping of TPConfig keys, got {type(data).__name__}.")
    base_model = data.pop("base_model", None)
    data.pop("notes", None)  # free-text provenance of the preset's values
    return base_model, TPConfig.from_dict(data, source=f"preset {path}")


def _reject_unknown(data: dict[str, Any], source: str) -> None:
    known = {f.name for f in dataclasses.fields(TPConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"Unknown key(s) {unknown} in {source}. Allowed keys: {sorted(known)}.")


def _check_types(config: TPConfig) -> None:
    """Reject ill-typed values (e.g. tp_end: "7", tp: 1) with the field name, before they reach the model. The allowed
    types are the dataclass annotations."""
    hints = typing.get_type_hints(TPConfig)
    for f in dataclasses.fields(TPConfig):
        types_ = _runtime_types(hints[f.name])
        value = getattr(config, f.name)
        is_bool_as_int = isinstance(value, bool) and bool not in types_
        if not isinstance(value, types_) or is_bool_as_int:
            allowed = " or ".join("None" if t is type(None) else t.__name__ for t in types_)
            raise ValueError(f"{f.name} must be {allowed}, got {value!r} ({type(value).__name__}).")
    if isinstance(config.template, list) and not all(isinstance(t, str) for t in config.template):
        raise ValueError("template must be a string or a list of strings.")


def _runtime_types(annotation) -> tuple[type, ...]:
    """`str | list[str] | None` -> (str, list, NoneType)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return tuple(t for arg in typing.get_args(annotation) for t in _runtime_types(arg))
    return (typing.get_origin(annotation) or annotation,)
