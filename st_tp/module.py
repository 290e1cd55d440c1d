"""Where folders saved by st_tp before the runtime moved to `st_tp.runtime` find their module class: their
modules.json names `st_tp.module.TokenPrepending`. They load as the class new folders name, so saving one again
writes a folder that also loads without st_tp."""

from token_prepending import TokenPrepending

__all__ = ["TokenPrepending"]
