"""The models a SentEval run embeds with, and what their cached embeddings are keyed by.

A saved st_tp folder is keyed by st_tp.runtime.identity.folder_revision (its settings, weights and the dtype it runs
in), so a folder rebuilt with another tp_end is embedded again. Another local folder is keyed by its files' names,
sizes and first MiB; a hub id by its name only. An st_tp SentenceTransformer passed as an object is keyed by the
revision of its settings and weights as they are (st_tp.evaluation.meta.model_revision); any other object's
embeddings are not cached. Models are loaded
only when a task needs embedding, so a model whose tasks are all cached is never loaded.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from st_tp.base_model import check_model_reachable
from st_tp.runtime.config import SAVED_CONFIG
from st_tp.runtime.identity import folder_revision, update_with_edges

from .cache import safe_name


def _folder_digest(folder: Path) -> str:
    """Each file's name, size, first and last MiB (as st_tp.runtime.identity reads a saved folder's weights)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        update_with_edges(digest, path, str(path.relative_to(folder)))
    return digest.hexdigest()[:16]


def _object_revision(model) -> str | None:
    """An st_tp model in memory: the revision of its settings, <PST> vector and weights as they are now (what
    st-tp mteb keys it by); any other model object: None, so its embeddings are not cached (its model card's revision
    is its base model's, which a change in memory keeps)."""
    from st_tp.evaluation.meta import model_revision, tp_module

    try:
        tp_module(model)
    except (ValueError, TypeError, IndexError, KeyError):
        return None
    return model_revision(model)


@dataclass
class ModelRef:
    """One model of a run: its row label, cache revision and how to load it."""

    label: str
    revision: str | None
    source: Any  # a path or hub id, or a SentenceTransformer
    device: str | None = None
    _loaded: Any = field(default=None, repr=False)

    @classmethod
    def of(cls, source: Any, device: str | None, index: int) -> ModelRef:
        if isinstance(source, (str, Path)):
            check_model_reachable(str(source))  # one line now, not a minute of hub retries at load time
            path = Path(source)
            if (path / SAVED_CONFIG).is_file():
                return cls(path.resolve().name, folder_revision(path, device), str(source), device)
            if path.is_dir():
                return cls(path.resolve().name, _folder_digest(path), str(source), device)
            return cls(str(source), "name-" + hashlib.sha256(str(source).encode()).hexdigest()[:12], str(source), device)
        card = getattr(source, "model_card_data", None)
        name = getattr(card, "model_name", None) or f"model-{index}"
        return cls(name, _object_revision(source), source, device, _loaded=source)

    @property
    def folder_name(self) -> str:
        return safe_name(self.label) + (f"-{self.revision}" if self.revision else "")

    def load(self):
        if self._loaded is None:
            from sentence_transformers import SentenceTransformer

            self._loaded = SentenceTransformer(self.source, trust_remote_code=True, device=self.device)
        return self._loaded

    def release(self) -> None:
        """Drop a model this run loaded (one model in memory at a time); a model passed in is the caller's."""
        if isinstance(self.source, (str, Path)):
            self._loaded = None


def model_refs(models: list, device: str | None) -> list[ModelRef]:
    refs = [ModelRef.of(model, device, i) for i, model in enumerate(models)]
    seen: dict[str, int] = {}
    for ref in refs:  # two rows never share a label (two folders of one name in different places)
        seen[ref.label] = seen.get(ref.label, 0) + 1
        if seen[ref.label] > 1:
            ref.label = f"{ref.label} ({seen[ref.label]})"
    return refs
