"""Fair picking between priorities: smooth weighted round robin, no I/O, no clock.

Each pick, every priority that has waiting work earns its weight in credit; the one with
the most credit is picked and pays back the total weight of the priorities that took
part.  Ties go to the more urgent priority.  Under a full backlog of all three with the
default weights 10:3:1, the picks repeat with period 14 and any 14 consecutive picks are
exactly 10 HIGH, 3 MEDIUM and 1 LOW, so LOW cannot starve.

A priority with no work takes no part and its credit is cleared: it neither banks turns
while idle nor carries debt into its next burst.  A lone priority therefore gets every
pick, and a fresh burst starts with HIGH.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Sized

from ._job import Priority

DEFAULT_WEIGHTS: Mapping[Priority, int] = {Priority.HIGH: 10, Priority.MEDIUM: 3, Priority.LOW: 1}


def check_weights(weights: Mapping[Priority, int]) -> tuple[int, int, int]:
    """Weights as a tuple indexed by priority; each must be a positive integer."""
    out = []
    for p in Priority:
        w = weights.get(p)
        if isinstance(w, bool) or not isinstance(w, int) or w < 1:
            raise ValueError(f"fairness[{p.name}]: expected a positive integer weight, got {w!r}")
        out.append(w)
    return out[0], out[1], out[2]


class FairPicker:
    """Chooses which priority a free worker serves next.

    ``pick(queues)`` takes the three ready queues (anything with a length), indexed by
    :class:`Priority`, and returns the index to take from, or ``-1`` when all are empty.
    """

    __slots__ = ("_credit", "_weights", "owed")

    def __init__(self, weights: Mapping[Priority, int] = DEFAULT_WEIGHTS) -> None:
        self._weights = check_weights(weights)
        self._credit = [0, 0, 0]
        self.owed = False
        """Some credit may be non-zero (a contested pick happened since the last
        :meth:`clear`)."""

    @property
    def weights(self) -> tuple[int, int, int]:
        return self._weights

    def pick(self, queues: Sequence[Sized]) -> int:
        h, m, lo = queues
        # Fast path: at most one priority has work.  It gets the pick, and every credit
        # is cleared.  (The ready queues inline this part: a worker calls it per job.)
        if h:
            lone = -2 if m or lo else 0
        elif m:
            lone = -2 if lo else 1
        else:
            lone = 2 if lo else -1
        if lone != -2:
            if self.owed:
                self.clear()
            return lone
        return self.contested(queues)

    def clear(self) -> None:
        """Forget every credit: a pick found at most one priority with work."""
        self._credit = [0, 0, 0]
        self.owed = False

    def contested(self, queues: Sequence[Sized]) -> int:
        """The pick when two priorities or more have work (:meth:`pick` otherwise)."""
        self.owed = True
        credit = self._credit
        w = self._weights
        total = 0
        best = -1
        best_credit = 0
        for i, queue in enumerate(queues):
            if not queue:
                credit[i] = 0
                continue
            c = credit[i] + w[i]
            credit[i] = c
            total += w[i]
            if best < 0 or c > best_credit:
                best, best_credit = i, c
        credit[best] -= total
        return best
