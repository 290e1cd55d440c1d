"""Where folders saved by st_tp before the runtime moved to `st_tp.runtime` find their module class: their
modules.json names `st_tp.module.TokenPrepending`."""

from st_tp.runtime.module import TokenPrepending

__all__ = ["TokenPrepending"]
