"""What the ``trioqueue`` command's parts share: the usage error and reading flags'
values from the environment."""

from __future__ import annotations

from collections.abc import Mapping

DEFAULT_PORT = 8080


class UsageError(Exception):
    """A bad flag, environment variable or ``--app``: printed, exit status 2."""


def env_first(env: Mapping[str, str], *names: str) -> str | None:
    found = env_named(env, *names)
    return None if found is None else found[1]


def env_named(env: Mapping[str, str], *names: str) -> tuple[str, str] | None:
    """The first of ``names`` set (non-empty) in ``env``, as (name, value): errors then
    name the variable that was actually set (``PORT``, not ``TRIOQUEUE_PORT``)."""
    for name in names:
        value = env.get(name)
        if value:
            return name, value
    return None


def parse_int(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise UsageError(f"{name}: expected an integer, got {raw!r}") from None


def parse_float(name: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise UsageError(f"{name}: expected a number, got {raw!r}") from None


def transport_failure(exc: BaseException) -> str:
    """What a client command says when its request got no answer: a timeout names the
    client's wait (the server may still carry the request out), anything else is
    "cannot reach the server" with the reason, or the error's type when it has no
    text (httpx's timeouts have none)."""
    import httpx

    from .client import DEFAULT_TIMEOUT

    if isinstance(exc, httpx.TimeoutException):
        return (f"the server did not answer within {DEFAULT_TIMEOUT:g} s "
                f"({type(exc).__name__}); it may still carry the request out")
    return f"cannot reach the server: {str(exc) or type(exc).__name__}"
