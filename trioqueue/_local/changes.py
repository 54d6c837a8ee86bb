"""Who hears about a changed record: the store, the engine's fan-out, both or neither."""

from __future__ import annotations

from collections.abc import Callable

from .._backend import ChangeHook
from .._record import JobRecord
from .._state import EventKind


def _nobody(kind: EventKind, rec: JobRecord, worker: int | None = None,
            duration: float | None = None) -> None:
    """The hook while nobody listens (never called: :attr:`Changes.observed` is False)."""


ManyHook = Callable[[EventKind, list[JobRecord]], None]
"""``changed_many(kind, recs)``: each of ``recs`` made the move ``kind`` (a batch)."""


def _nobody_many(kind: EventKind, recs: list[JobRecord]) -> None:
    """The batch hook while nobody listens."""


class Changes:
    """The change hook the local backend's parts call after each move.

    ``if changes.observed: changes.changed(kind, rec, worker, duration)`` is one test per
    change while nobody listens, and one call while only the store (or only the engine's
    fan-out) does: the hook is the listener's own function, not a dispatcher.
    :attr:`changed_many` is the same for a batch of records that made one move
    (``enqueue_many``): one call for the store, the fan-out's hook per record.

    The hot moves (a job taken, a job ended) skip even that call while they can:
    ``d = changes.dirty; if d: d[rec.id] = rec``, else ``changes.changed(...)``.
    :attr:`dirty` is the store's dict of records its next flush writes, given by the
    store (:meth:`direct`) whenever a change may go straight into it, and only while
    nobody else listens; it is ``None`` otherwise.  An empty dict means the call: the
    store wakes its flusher on the first change.  (Callgrind, ``enqueue_many`` of
    1,000 in ``durability="batch"``: the two calls were ~2,600 instructions a job.)
    """

    __slots__ = ("_fan_out", "_store", "_store_dirty", "_store_many", "changed",
                 "changed_many", "dirty", "observed")

    def __init__(self, store: ChangeHook | None = None,
                 store_many: ManyHook | None = None) -> None:
        self._store = store
        self._store_many = store_many
        """The store's batch hook (its :attr:`changed` for each record, in one call)."""
        self._fan_out: ChangeHook | None = None
        self._store_dirty: dict[str, JobRecord] | None = None
        self.dirty: dict[str, JobRecord] | None = None
        """The store's records to write, while a change may be put in there directly
        instead of calling :attr:`changed` (see the class); else ``None``."""
        self.changed: ChangeHook = _nobody
        self.changed_many: ManyHook = _nobody_many
        self.observed = False
        self._update()

    def direct(self, dirty: dict[str, JobRecord] | None) -> None:
        """The store's word: a change of a record may go straight into ``dirty`` (its
        next flush's records) from now on, or (``None``) must call :attr:`changed`."""
        self._store_dirty = dirty
        self.dirty = dirty if self._fan_out is None else None

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
        self.changed_many = self._many_hook()
        self.observed = store is not None or fan_out is not None
        self.dirty = self._store_dirty if fan_out is None else None

    def _many_hook(self) -> ManyHook:
        store, fan_out = self._store, self._fan_out
        store_many = self._store_many
        if store_many is None and store is not None:

            def store_each(kind: EventKind, recs: list[JobRecord]) -> None:
                for rec in recs:
                    store(kind, rec, None, None)

            store_many = store_each
        if fan_out is None:
            return store_many or _nobody_many

        def fan_out_each(kind: EventKind, recs: list[JobRecord]) -> None:
            if store_many is not None:
                store_many(kind, recs)
            for rec in recs:
                fan_out(kind, rec, None, None)

        return fan_out_each
