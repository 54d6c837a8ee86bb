"""Job ids: UUIDv7 (RFC 9562) in hex, in the order they were made."""

from __future__ import annotations

import os
import random

_HEX3 = tuple(f"{i:03x}" for i in range(0x1000))


class IdGenerator:
    """Makes UUIDv7 ids (RFC 9562) in hex: milliseconds since the epoch, 62 random bits,
    and a 12-bit counter (the "monotonic random" method of RFC 9562, section 6.2).

    Ids made by one generator sort in the order they were made, so the store appends to
    its id index instead of inserting at random places (random uuid4 ids halved the
    write rate of the SQLite store).  The first 29 hex digits are drawn once per
    millisecond (or per 4096 ids) and the counter's three digits come from a table, so
    an id costs an integer comparison and a string concatenation.  Ids are unique, not
    secret: the random part comes from a fast generator seeded from ``os.urandom``.

    Time is an argument: the caller passes the millisecond it read from its own clock
    (the engine passes the job's ``created_at``, so an id and its job agree on when it
    was made).  A millisecond at or before the last one (4096 ids in one millisecond, a
    clock that stepped back, two queues whose clocks differ slightly) counts on from the
    last id, so order holds whatever the clock does.
    """

    __slots__ = ("_bits", "_head", "_ms", "_seq")

    def __init__(self, seed: int | None = None) -> None:
        source = random.Random(int.from_bytes(os.urandom(32)) if seed is None else seed)
        self._bits = source.getrandbits
        self._ms = -1
        self._head = ""
        self._seq = 0xFFF

    def new(self, ms: int) -> str:
        """A new id for the millisecond ``ms`` (since the epoch)."""
        if ms <= self._ms:  # the same millisecond, or the clock stepped back: count on
            seq = self._seq
            if seq < 0xFFF:
                self._seq = seq = seq + 1
                return self._head + _HEX3[seq]
            ms = self._ms + 1  # 4096 ids in one millisecond: take the next one
        self._ms = ms
        self._seq = 0
        bits = self._bits
        # 48 bits of time, version 7, 12 random bits (rand_a), variant 0b10, 50 random
        # bits; the counter fills the last 12 bits of rand_b.
        bits128 = ms << 68 | 0x7 << 64 | bits(12) << 52 | 0x2 << 50 | bits(50)
        self._head = head = f"{bits128:029x}"
        return head + "000"


def generated_shape(job_id: str) -> bool:
    """Whether ``job_id`` has the shape of the ids :class:`IdGenerator` makes: 32
    characters with the version digit ``7`` at index 12.  A caller may choose such an id
    too (say, one the queue gave it earlier); with a store, a caller's id of this shape
    is looked up in the store when memory lacks it, while ids of other shapes are kept
    in the set of ids only the store holds (:attr:`Persistence.stored_only`), which
    therefore never holds the generated ids of the history (docs/persistence.md).
    :data:`GENERATED_SHAPE_SQL` is the same test in SQL; both must agree."""
    return len(job_id) == 32 and job_id[12] == "7"


GENERATED_SHAPE_SQL = "(length(id) = 32 AND substr(id, 13, 1) = '7')"
""":func:`generated_shape` of the column ``id``, in SQLite."""


new_id = IdGenerator().new
"""The process's id generator: ids of every queue in the process sort together."""
