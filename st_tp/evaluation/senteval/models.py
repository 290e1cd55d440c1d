"""The models a SentEval run embeds with, and what their cached embeddings are keyed by.

A saved st_tp folder is keyed by st_tp.runtime.identity.folder_revision (its settings, weights and the dtype it runs
in), so a folder rebuilt with another tp_end is embedded again. Another local folder is keyed by its files' names,
sizes and first MiB; a hub id by its name only. A SentenceTransformer passed as an object is keyed by the revision
its model card holds (a loaded st_tp folder has one); without one, its embeddings are not cached. Models are loaded
only when a task needs embedding, so a model whose tasks are all cached is never loaded.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from st_tp.base_model import check_model_reachable
from st_tp.runtime.config import SAVED_CONFIG
from st_tp.runtime.identity import folder_revision

from .cache import safe_name

_HEAD = 1 << 20


def _folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder)}:{path.stat().st_size}".encode())
        with path.open("rb") as f:
            digest.update(f.read(_HEAD))
    return digest.hexdigest()[:16]


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
        return cls(name, getattr(card, "base_model_revision", None), source, device, _loaded=source)

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
