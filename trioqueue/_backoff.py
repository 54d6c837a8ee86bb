"""Retry backoff as a pure function of a frozen policy and the attempt number."""

from __future__ import annotations

import math

import attrs

from ._job import MAX_DELAY


def _non_negative(inst: object, attr: attrs.Attribute[float], value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{attr.name}: expected a finite number, got {value!r}")
    if value < 0:
        raise ValueError(f"{attr.name}: must be >= 0, got {value!r}")


@attrs.frozen
class RetryPolicy:
    """``delay = min(max_delay, base * factor ** (attempt - 1))``, then ± ``jitter``.

    ``attempt`` is the number of the attempt that just failed (1 for the first run).
    Jitter spreads retries of jobs that failed together so they do not all come back at
    once; ``jitter=0`` makes delays exact, which tests use.
    """

    base: float = attrs.field(default=1.0, validator=_non_negative)
    factor: float = attrs.field(default=2.0, validator=_non_negative)
    max_delay: float = attrs.field(default=300.0, validator=_non_negative)
    jitter: float = attrs.field(default=0.1, validator=_non_negative)

    def __attrs_post_init__(self) -> None:
        if self.factor < 1:
            raise ValueError(f"retry_factor: must be >= 1, got {self.factor!r}")
        if self.jitter > 1:
            raise ValueError(f"retry_jitter: must be between 0 and 1, got {self.jitter!r}")
        if self.max_delay > MAX_DELAY:  # (a retry's due time must stay a date)
            raise ValueError(f"max_delay: at most {MAX_DELAY:.0f} seconds (ten years), "
                             f"got {self.max_delay!r}")

    def delay(self, attempt: int, rand: float = 0.5) -> float:
        """Seconds to wait before the retry that follows failed ``attempt``.

        ``rand`` is a number in [0, 1) (the caller's random source, so this stays pure);
        0.5 means no jitter.  The result never exceeds ``max_delay`` and is never negative.
        """
        if attempt < 1:
            raise ValueError(f"attempt: must be >= 1, got {attempt!r}")
        try:
            raw = min(self.max_delay, self.base * self.factor ** (attempt - 1))
        except OverflowError:  # factor ** n past a float: the cap wins
            raw = 0.0 if self.base == 0 else self.max_delay
        jittered = raw * (1.0 + self.jitter * (2.0 * rand - 1.0))
        return min(self.max_delay, max(0.0, jittered))
