"""What MTEB knows a model by: a name, and a revision derived from its settings and weights, so results are keyed
by what was evaluated (a folder rebuilt with another tp_end gets a new revision, and is evaluated again).

A saved folder's revision is computed from its files without loading the model: st_tp_config.json, the <PST>
vector, the HF config, and for each weight file its name, size and the sha256 of its first and last MiB (hashing
whole 13 GB checkpoints would take minutes; the safetensors header at the head lists every tensor's name, shape
and offsets, and the tail holds the last tensors' values). An in-memory model's revision comes from the same
settings and a sample of every weight tensor.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path

from mteb.models.model_meta import ModelMeta, ScoringFunction
from sentence_transformers import SentenceTransformer

from st_tp.runtime.config import saved_dtype
from st_tp.runtime.module import PST_FILE, TokenPrepending

_EDGE_BYTES = 1 << 20
_SETTINGS_FILES = (TokenPrepending.config_file_name, PST_FILE, "config.json")


def folder_revision(folder: str | Path, device: str | None = None) -> str:
    """A revision for a saved st_tp folder, from its files (see the module docstring) and the dtype it runs in on
    `device` (dtype "auto" resolves per machine: a bfloat16 run is another evaluation than a float32 one)."""
    folder = Path(folder)
    found = saved_dtype(folder, device)
    if found is None:
        raise ValueError(f"{folder} has no {TokenPrepending.config_file_name}; it is not a saved st_tp model.")
    digest = hashlib.sha256(f"runs in {found[1]}".encode())
    for name in _SETTINGS_FILES:
        path = folder / name
        if path.exists():
            digest.update(name.encode() + path.read_bytes())
    for path in sorted(folder.glob("*.safetensors")):
        if path.name == PST_FILE:
            continue
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with path.open("rb") as f:
            digest.update(f.read(_EDGE_BYTES))
            f.seek(max(size - _EDGE_BYTES, 0))
            digest.update(f.read(_EDGE_BYTES))
    return digest.hexdigest()[:16]


def model_revision(model: SentenceTransformer) -> str:
    """A revision for an in-memory model: its TP settings, <PST> vector and a sample of every weight tensor."""
    module = tp_module(model)
    digest = hashlib.sha256(json.dumps(module.get_config_dict(), sort_keys=True, default=str).encode())
    digest.update(module.pst_embedding.detach().float().cpu().numpy().tobytes())
    for name, tensor in module.auto_model.state_dict().items():
        flat = tensor.detach().reshape(-1)
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(flat[:256].float().cpu().numpy().tobytes() + flat[-256:].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def tp_module(model: SentenceTransformer) -> TokenPrepending:
    module = model[0]
    if not isinstance(module, TokenPrepending):
        raise ValueError(f"{type(module).__name__} is not an st_tp model (its first module is not TokenPrepending).")
    return module


def lookup_meta(name: str, revision: str) -> ModelMeta:
    """Enough of a ModelMeta to find cached results (mteb keys them by name and revision)."""
    return ModelMeta.create_empty(overwrites=dict(name=name, revision=revision))


def model_meta(model: SentenceTransformer, name: str, revision: str, release_date: datetime.date | None = None) -> ModelMeta:
    """The full ModelMeta of an st_tp model, as MTEB's leaderboard fields expect them."""
    module = tp_module(model)
    templates = module.tp_config.templates or {}
    n_parameters = sum(p.numel() for p in module.auto_model.parameters())
    memory_mb = sum(p.numel() * p.element_size() for p in module.auto_model.parameters()) / 2**20
    fields = dict(
        name=name,
        revision=revision,
        release_date=(release_date or datetime.date.today()).isoformat(),
        languages=["eng-Latn"],
        n_parameters=n_parameters,
        memory_usage_mb=round(memory_mb, 1),
        max_tokens=module.max_seq_length,
        embed_dim=model.get_embedding_dimension(),
        license=model.model_card_data.license,
        open_weights=True,
        public_training_code=None,
        public_training_data=None,
        framework=["Sentence Transformers", "PyTorch"],
        similarity_fn_name=ScoringFunction(model.similarity_fn_name or "cosine"),
        use_instructions=bool(templates),
        training_datasets=set(),  # training-free: no data was trained on
        adapted_from=module.base_model,
    )
    return ModelMeta.create_empty(overwrites=fields)


def release_date(folder: str | Path) -> datetime.date:
    """When a saved folder was written (its st_tp_config.json)."""
    stamp = (Path(folder) / TokenPrepending.config_file_name).stat().st_mtime
    return datetime.date.fromtimestamp(stamp)
