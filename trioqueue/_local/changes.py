"""Who hears about a changed record: the store, the engine's fan-out, both or neither."""

from __future__ import annotations

from .._backend import ChangeHook
from .._record import JobRecord
from .._state import EventKind


def _nobody(kind: EventKind, rec: JobRecord, worker: int | None = None,
            duration: float | None = None) -> None:
    """The hook while nobody listens (never called: :attr:`Changes.observed` is False)."""


class Changes:
    """The change hook the local backend's parts call after each move.

    ``if changes.observed: changes.changed(kind, rec, worker, duration)`` is one test per
    change while nobody listens, and one call while only the store (or only the engine's
    fan-out) does: the hook is the listener's own function, not a dispatcher.
    """

    __slots__ = ("_fan_out", "_store", "changed", "observed")

    def __init__(self, store: ChangeHook | None = None) -> None:
        self._store = store
        self._fan_out: ChangeHook | None = None
        self.changed: ChangeHook = _nobody
        self.observed = False
        self._update()

    def fan_out(self, hook: ChangeHook | None) -> None:
        """Call ``hook`` too from now on (``None``: no longer)."""
        self._fan_out = hook
        self._update()

    def _update(self) -> None:
        store, fan_out = self._store, self._fan_out
        if store is not None and fan_out is not None:

            def both(kind: EventKind, rec: JobRecord, worker: int | None = None,
                     duration: float | None = None) -> None:
                store(kind, rec, worker, duration)
                fan_out(kind, rec, worker, duration)

            self.changed = both
        else:
            self.changed = store or fan_out or _nobody
        self.observed = store is not None or fan_out is not None
