"""Test helpers for Trio receive channels (a memory channel, a queue's subscription)."""

from __future__ import annotations

from typing import Protocol, TypeVar

import trio

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class ReceivesNowait(Protocol[T_co]):
    def receive_nowait(self) -> T_co: ...


def drain(channel: ReceivesNowait[T]) -> list[T]:
    """Everything already in ``channel``, without waiting."""
    out: list[T] = []
    while True:
        try:
            out.append(channel.receive_nowait())
        except trio.WouldBlock:
            return out
