"""Embedding a task's sentences with a SentenceTransformer as the official TP code's SentEval batcher does
(fuyuchenIfyw/token_prepending, `evaluate.py`, `batcher`): each token list joined with ' ' (tasks.prepare), then,
for a TP model, the batcher's text rules: append '.' unless the text ends in . ? " ', then '"' -> "'", then a
trailing '?' -> '.'; the filled prompt is stripped. st_tp's own preprocessing (st_tp.runtime.prompts.preprocess_sentence)
is the same except for an empty text, which it turns into '.' and the batcher leaves empty (CR and MPQA hold 7 empty
lines), so for an st_tp model whose `preprocess` is on the rules are applied here and the model's own are switched
off while it embeds. Any other SentenceTransformer gets the joined text as it is: the rules belong to the prompts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
from tqdm.auto import tqdm

from st_tp.runtime.prompts import preprocess_sentence

# What the cached embeddings of a task are embeddings of, beside its texts: change it when the text rules or the
# batching below change, so that no cache made the old way is served.
EMBEDDING_RECIPE = "official batcher rules (empty texts stay empty); one encode call per SentEval batch"


def official_text(sentence: str) -> str:
    """The official batcher's rules, in its order: st_tp's own preprocessing, except that an empty text stays empty."""
    return preprocess_sentence(sentence) if sentence else sentence


def _tp_module(model):
    """The model's Token Prepending module (the first one, st_tp's or a saved folder's shipped copy), or None."""
    try:
        first = model[0]
    except (TypeError, IndexError, KeyError):
        return None
    config = getattr(first, "tp_config", None)
    return first if config is not None and hasattr(config, "preprocess") else None


@contextlib.contextmanager
def _own_rules_off(module) -> Iterator[None]:
    config = module.tp_config
    module.tp_config = config.replace(preprocess=False)
    module.max_seq_length = module.max_seq_length  # the setter rebuilds the prompt encoders from tp_config
    try:
        yield
    finally:
        module.tp_config = config
        module.max_seq_length = config.max_seq_length


class SentenceEmbedder:
    """`model.encode` on a task's texts, with the batcher's text rules (see the module docstring) and one progress bar
    per task. The texts come length-sorted (SentEval's order) and are embedded in SentEval's batches."""

    def __init__(self, model, batch_size: int = 16, show_progress_bar: bool = True) -> None:
        self.model, self.batch_size, self.show_progress_bar = model, batch_size, show_progress_bar
        self.tp_module = _tp_module(model)
        self.applies_rules = self.tp_module is not None and bool(self.tp_module.tp_config.preprocess)

    @property
    def text_rules(self) -> str:
        return "the official batcher's" if self.applies_rules else "none (joined tokens as they are)"

    def texts(self, texts: list[str]) -> list[str]:
        """What the model is given for `texts`."""
        return [official_text(t) for t in texts] if self.applies_rules else list(texts)

    def embed(self, parts: dict[str, list[str]], desc: str) -> dict[str, np.ndarray]:
        """{part: float32 embeddings [n, dim]} for each part's texts."""
        total = sum(len(texts) for texts in parts.values())
        # One encode call per SentEval batch: the batcher gets batch_size sentences in SentEval's order, and a row's
        # numbers depend (in the last bits) on the rows batched with it, so the batches are SentEval's.
        chunk = self.batch_size
        out = {}
        with tqdm(total=total, desc=desc, unit="sent", disable=not self.show_progress_bar) as bar, (
                _own_rules_off(self.tp_module) if self.applies_rules else contextlib.nullcontext()):
            for name, texts in parts.items():
                given, pieces = self.texts(texts), []
                for start in range(0, len(given), chunk):
                    batch = given[start : start + chunk]
                    pieces.append(np.asarray(self.model.encode(batch, batch_size=self.batch_size, show_progress_bar=False,
                                                               convert_to_numpy=True), dtype=np.float32))
                    bar.update(len(batch))
                out[name] = np.concatenate(pieces) if pieces else np.zeros((0, 0), dtype=np.float32)
        return out
