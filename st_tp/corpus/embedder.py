"""The model side of a corpus run: the saved folder's fingerprint (a resume must use the same model) and the
embedder both engines run (in this process, or once per Ray actor)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

MODEL_FILES = ("st_tp_config.json", "modules.json", "config_sentence_transformers.json", "sentence_bert_config.json")


def model_fingerprint(model_path: str | os.PathLike) -> dict:
    """The saved folder's path and a hash of its settings files and weight sizes: a resume must use this model."""
    folder = Path(model_path).resolve()
    digest = hashlib.sha256()
    for name in MODEL_FILES:
        for path in sorted(folder.rglob(name)):
            digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    for path in sorted(folder.rglob("*.safetensors")):
        digest.update(f"{path.relative_to(folder)}:{path.stat().st_size}".encode())
    settings = {}
    if (folder / "st_tp_config.json").is_file():
        settings = json.loads((folder / "st_tp_config.json").read_text())
    return {"path": str(folder), "fingerprint": digest.hexdigest()[:16], "st_tp_config": settings}


class Embedder:
    """A loaded st_tp (or any SentenceTransformer) model that turns texts into float32/float16 rows."""

    def __init__(self, model_path: str, device: str | None, batch_size: int, normalize: bool, output_dtype: str):
        from sentence_transformers import SentenceTransformer

        from st_tp.runtime.config import resolve_device

        self.model = SentenceTransformer(str(model_path), device=resolve_device(device), trust_remote_code=True)
        self.batch_size, self.normalize, self.output_dtype = batch_size, normalize, output_dtype

    def __call__(self, texts: list[str], progress: Callable[[int], None] = lambda n: None) -> np.ndarray:
        """Embed in pieces of 64 batches to report progress often. The texts are sorted by length over the whole
        call first (as `model.encode` sorts a whole list), so pieces cut no batch into worse padding; rows come back
        in input order."""
        import numpy as np

        order = np.argsort([-len(text) for text in texts], kind="stable")
        step = self.batch_size * 64
        pieces = []
        for start in range(0, len(texts), step):
            chunk = [texts[i] for i in order[start:start + step]]
            pieces.append(self.model.encode(chunk, batch_size=self.batch_size, normalize_embeddings=self.normalize,
                                            convert_to_numpy=True, show_progress_bar=False).astype(np.float32))
            progress(len(chunk))
        if not pieces:
            return np.zeros((0, self.dimension()), self.output_dtype)
        embedded = np.concatenate(pieces)
        out = np.empty_like(embedded)
        out[order] = embedded  # back to input order
        return out.astype(self.output_dtype, copy=False)

    def dimension(self) -> int:
        get = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(get() or len(self.model.encode(["x"])[0]))

    def embed_rows(self, texts, good: list[bool], progress: Callable[[int], None] = lambda n: None):
        """An Arrow embedding column for every row: the texts of `good` rows embedded, zeros for the others (the
        corpus loop leaves them out, or stops naming the first)."""
        import numpy as np
        import pyarrow as pa

        from .rows import embedding_array

        good = np.array(good, dtype=bool)
        embedded = self(texts.filter(pa.array(good)).to_pylist(), progress)
        if good.all():
            return embedding_array(embedded)
        vectors = np.zeros((len(good), embedded.shape[1]), embedded.dtype)
        vectors[good] = embedded
        return embedding_array(vectors)
