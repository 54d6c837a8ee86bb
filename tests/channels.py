"""Test helpers for Trio memory channels."""

from __future__ import annotations

from typing import TypeVar

import trio

T = TypeVar("T")


def drain(channel: trio.MemoryReceiveChannel[T]) -> list[T]:
    """Everything already in ``channel``, without waiting."""
    out: list[T] = []
    while True:
        try:
            out.append(channel.receive_nowait())
        except trio.WouldBlock:
            return out
