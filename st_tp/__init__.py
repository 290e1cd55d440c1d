"""st_tp: Token Prepending (Fu et al., ACL 2025) for any decoder-only LLM, as a sentence-transformers module."""

from __future__ import annotations

import importlib

# Imported on first use (PEP 562): `st-tp --help` and `import st_tp.runtime.prompts` must not wait for torch and transformers.
_EXPORTS = {
    "PROMPTS": "st_tp.runtime.prompts",
    "TPConfig": "st_tp.runtime.config",
    "TokenPrepending": "token_prepending",  # st_tp.runtime.module's class, under the name saved folders use
    "build": "st_tp.builder",
    "CorpusOptions": "st_tp.corpus",
    "embed_corpus": "st_tp.corpus",
    "embed_dataset": "st_tp.corpus.ray_engine",  # Ray is imported only when this is called
    "load_preset": "st_tp.runtime.config",
    "tp_forward": "st_tp.runtime.forward",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'st_tp' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
