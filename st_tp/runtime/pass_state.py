"""Per-forward state of one mechanism (TP, packing, row skipping), kept in a ContextVar, never on the model.

Each mechanism installs its hooks on a decoder once; they act only while that mechanism's state is active in the
*current context*, so concurrent forwards in other threads never see each other's rows, the stock model keeps
working as before, and each mechanism can be switched off (state None) on its own."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Generic, TypeVar

from torch import nn

T = TypeVar("T")
_INSTALL_LOCK = threading.Lock()


class PassState(Generic[T]):
    def __init__(self, name: str) -> None:
        self._var: ContextVar[T | None] = ContextVar(name, default=None)
        self.name = name

    def get(self) -> T | None:
        return self._var.get()

    @contextlib.contextmanager
    def active(self, state: T | None) -> Iterator[T | None]:
        token = self._var.set(state)
        try:
            yield state
        finally:
            self._var.reset(token)

    def install_once(self, decoder: nn.Module, install: Callable[[nn.Module], None]) -> None:
        """Run `install(decoder)` once per decoder (idempotent and thread-safe)."""
        marker = f"_st_tp_{self.name}_installed"
        with _INSTALL_LOCK:
            if getattr(decoder, marker, None) != len(decoder.layers):
                install(decoder)
                setattr(decoder, marker, len(decoder.layers))
