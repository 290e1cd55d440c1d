"""The entry point a saved st_tp folder names in its modules.json, `token_prepending.TokenPrepending`: `save` writes
this file beside the weights, with the runtime files it imports (st_tp.runtime.shipping).

sentence-transformers imports it with `trust_remote_code=True` (transformers' dynamic modules). When st_tp is
installed, the installed class wins, so upgrading st_tp also upgrades folders saved earlier; without st_tp, the
runtime shipped in the folder runs, and the folder needs only sentence-transformers and transformers. The st_tp
imports sit in a `try` block: transformers does not ask for the packages imported there."""

from .identity import wrong_class_message

try:
    from token_prepending import TokenPrepending  # st_tp installed: its top-level module (token_prepending.py)
except ModuleNotFoundError as missing:
    if missing.name not in ("token_prepending", "st_tp") and not (missing.name or "").startswith("st_tp."):
        raise
    from .module import TokenPrepending as ShippedTokenPrepending

    class TokenPrepending(ShippedTokenPrepending):
        """Token Prepending from the runtime saved beside the weights (st_tp is not installed here)."""


class NotACrossEncoder:
    """What config.json's auto_map names for AutoModelForSequenceClassification (CrossEncoder's loader): a TP folder
    holds a pruned decoder whose embedding is a hidden state, not a pair scorer, so loading it as one is refused."""

    @classmethod
    def register_for_auto_class(cls, auto_class: object = None) -> None:
        """transformers registers a remote class before loading it; nothing to register for a refusal."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, *args: object, **kwargs: object) -> None:
        raise ValueError(wrong_class_message(pretrained_model_name_or_path, "CrossEncoder"))


__all__ = ["NotACrossEncoder", "TokenPrepending"]
