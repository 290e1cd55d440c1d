"""The embedding cache: each (model revision, task, sample) is embedded once, under the output folder.

OUTPUT/embeddings/<model>-<revision>/<TASK>[.sample<N>]/ holds one float32 .npy per split and side
(`train.npy`, `test.A.npy`, ...) and `manifest.json`, written last: a folder without its manifest is an embedding that
did not finish, and is redone. The manifest records the sha256 of the texts the model was given for each part, so a
changed data file or text rule is embedded again rather than served stale. One folder per task is what lets a run
that stopped at task k+1 resume there.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np

MANIFEST = "manifest.json"


def texts_digest(texts: list[str]) -> str:
    return hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"


def task_key(task: str, sample: int | None) -> str:
    return task if sample is None else f"{task}.sample{sample}"


class EmbeddingStore:
    """One model's cached embeddings (`revision` None: nothing is cached, every run embeds)."""

    def __init__(self, root: str | Path, model_dir: str, revision: str | None) -> None:
        self.root = Path(root) / "embeddings" / model_dir
        self.revision = revision

    def folder(self, key: str) -> Path:
        return self.root / key

    def load(self, key: str, digests: dict[str, str]) -> dict[str, np.ndarray] | None:
        """The cached embeddings of every part, if all were written for exactly these texts; else None."""
        if self.revision is None:
            return None
        manifest_path = self.folder(key) / MANIFEST
        if not manifest_path.is_file():
            return None
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("revision") != self.revision or manifest.get("parts", {}).keys() != digests.keys():
            return None
        if any(manifest["parts"][name]["texts_sha256"] != digest for name, digest in digests.items()):
            return None
        arrays = {name: np.load(self.folder(key) / f"{name}.npy") for name in digests}
        if any(len(arrays[name]) != manifest["parts"][name]["rows"] for name in digests):
            return None
        return arrays

    def save(self, key: str, arrays: dict[str, np.ndarray], digests: dict[str, str], about: dict) -> None:
        if self.revision is None:
            return
        folder = self.folder(key)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MANIFEST).unlink(missing_ok=True)
        for name, array in arrays.items():
            _atomic(folder / f"{name}.npy", lambda f, a=array: np.save(f, a))
        parts = {name: {"rows": len(arrays[name]), "dim": int(arrays[name].shape[1]) if arrays[name].ndim == 2 else 0,
                        "texts_sha256": digests[name]} for name in arrays}
        manifest = {**about, "revision": self.revision, "dtype": "float32", "parts": parts}
        _atomic(folder / MANIFEST, lambda f: f.write(json.dumps(manifest, indent=1).encode()))


def _atomic(path: Path, write) -> None:
    """Write through a temporary file and rename it, so a stopped run never leaves a half-written file behind."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic(path, lambda f: f.write((json.dumps(data, indent=1) + "\n").encode()))
