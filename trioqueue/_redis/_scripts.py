"""The Lua scripts, read from this package's ``lua/`` directory.

Each script is ``common.lua`` (the prefix, the clock, events, helpers) followed by its own
file; see docs/redis-design.md for what each one does and guarantees.
"""

from __future__ import annotations

from importlib import resources

from ._client import LuaScript, lua_script

NAMES = (
    "enqueue", "finish_and_claim", "renew", "reap", "promote", "cancel", "retry", "get",
    "find", "list", "counts", "nodes",
)


def _read(name: str) -> str:
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text("utf-8")


def source(name: str) -> str:
    """The full text of script ``name`` as sent to Redis."""
    return _read("common") + "\n" + _read(name)


def load_all() -> dict[str, LuaScript]:
    """Every script by name, ready for :meth:`RedisClient.run`."""
    return {name: lua_script(source(name)) for name in NAMES}
