"""What MTEB knows a model by: a name, and a revision derived from its settings and weights, so results are keyed
by what was evaluated (a folder rebuilt with another tp_end gets a new revision, and is evaluated again).

A saved folder's revision comes from its files (st_tp.runtime.identity.folder_revision: the runtime computes the same
one when it loads the folder, for a plain `mteb.evaluate`). An in-memory model's revision comes from the same
settings and a sample of every weight tensor.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path

from mteb.models.model_meta import ModelMeta, ScoringFunction
from sentence_transformers import SentenceTransformer

from st_tp.runtime.identity import folder_revision
from st_tp.runtime.module import TokenPrepending

__all__ = ["folder_revision", "lookup_meta", "model_meta", "model_revision", "release_date", "tp_module"]


def model_revision(model: SentenceTransformer) -> str:
    """A revision for an in-memory model: its TP settings, <PST> vector and a sample of every weight tensor."""
    module = tp_module(model)
    digest = hashlib.sha256(json.dumps(module.get_config_dict(), sort_keys=True, default=str).encode())
    digest.update(module.runner.pst_embedding.detach().float().cpu().numpy().tobytes())
    for name, tensor in module.runner.model.state_dict().items():
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
    n_parameters = sum(p.numel() for p in module.runner.model.parameters())
    memory_mb = sum(p.numel() * p.element_size() for p in module.runner.model.parameters()) / 2**20
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
