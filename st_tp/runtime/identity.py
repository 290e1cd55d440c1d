"""What a saved st_tp folder is known by outside st_tp: a name and a revision of its settings and weights.

MTEB keys its results cache by a model's name and revision, and reads both from a SentenceTransformer's model card
data (`model_name`, else `base_model`; `base_model_revision`). A folder loaded from disk has neither, so every st_tp
folder would share one cache entry and the second model evaluated would be handed the first one's scores.

The revision is computed from the folder's files without loading the model: st_tp_config.json, the <PST> vector,
the HF config, and for each weight file its name, size and the sha256 of its first and last MiB (hashing whole
13 GB checkpoints would take minutes; the safetensors header at the head lists every tensor's name, shape and
offsets, and the tail holds the last tensors' values), plus the dtype the model runs in (a bfloat16 run is another
evaluation than a float32 one).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from .config import SAVED_CONFIG, saved_dtype

if TYPE_CHECKING:
    import torch

PST_FILE = "pst_embedding.safetensors"
NAME_PREFIX = "st-tp"  # mteb wants "organization/model": a local folder "runs/smollm2-tp" is "st-tp/smollm2-tp"
_EDGE_BYTES = 1 << 20
_SETTINGS_FILES = (SAVED_CONFIG, PST_FILE, "config.json")


def folder_revision(folder: str | Path, device: str | None = None, *, dtype: torch.dtype | None = None) -> str:
    """A revision for a saved st_tp folder, from its files (see the module docstring) and the dtype it runs in:
    `dtype` when the model is loaded, else the one its dtype setting resolves to on `device`."""
    folder = Path(folder)
    found = saved_dtype(folder, device)
    if found is None:
        raise ValueError(f"{folder} has no {SAVED_CONFIG}; it is not a saved st_tp model.")
    digest = hashlib.sha256(f"runs in {dtype or found[1]}".encode())
    for name in _SETTINGS_FILES:
        path = folder / name
        if path.exists():
            digest.update(name.encode() + path.read_bytes())
    for path in sorted(folder.glob("*.safetensors")):
        if path.name == PST_FILE:
            continue
        update_with_edges(digest, path, path.name)
    return digest.hexdigest()[:16]


def update_with_edges(digest, path: Path, name: str) -> None:
    """Feed `digest` a file's name, size, first and last MiB: enough to tell weight files apart without reading GBs."""
    size = path.stat().st_size
    digest.update(f"{name}:{size}".encode())
    with path.open("rb") as f:
        digest.update(f.read(_EDGE_BYTES))
        f.seek(max(size - _EDGE_BYTES, 0))
        digest.update(f.read(_EDGE_BYTES))


def folder_name(folder: str | Path) -> str:
    """An "organization/model" name for a folder: a Hugging Face cache snapshot (…/models--org--name/snapshots/<sha>)
    is its repository id, any other folder `st-tp/<folder name>`."""
    folder = Path(folder).resolve()
    repo = folder.parent.parent.name
    if folder.parent.name == "snapshots" and repo.startswith("models--") and repo.count("--") >= 2:
        return repo.removeprefix("models--").replace("--", "/", 1)
    return f"{NAME_PREFIX}/{folder.name}"


def wrong_class_message(folder: str | Path | None, used: str) -> str:
    """The one line a TP folder answers with when a class other than SentenceTransformer loads it."""
    return (f"{folder or 'This model'} is a Token Prepending (st_tp) sentence embedding model, not a {used}: load it "
            "with SentenceTransformer(path, trust_remote_code=True).")
