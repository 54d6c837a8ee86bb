"""``TaskRegistry``: what registration refuses, and what the decorator keeps for mypy."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import pytest

import trioqueue
import trioqueue.client
from trioqueue import Priority

from .mypy_check import mypy_on


async def _job_and_extras(job: Any, *, x: int = 1) -> None: ...
async def _star_args(*args: Any) -> None: ...
async def _default_second(job: Any, extra: Any = None) -> None: ...
async def _kwargs_too(job: Any, **options: Any) -> None: ...
async def _prefixed(prefix: str, job: Any) -> None: ...


class _Handlers:
    async def method(self, job: Any) -> None: ...


@pytest.mark.parametrize(
    "handler",
    [_job_and_extras, _star_args, _default_second, _kwargs_too,
     functools.partial(_prefixed, "p"), _Handlers().method],
    ids=["keyword-only-default", "star-args", "second-with-default", "kwargs",
         "partial", "bound-method"],
)
def test_handlers_callable_with_the_job_alone_register(handler: Any) -> None:
    registry = trioqueue.TaskRegistry()
    registry.register(handler, name="t")
    assert "t" in registry


async def _none() -> None: ...
async def _two(a: Any, b: Any) -> None: ...
async def _keyword_only(*, job: Any) -> None: ...
async def _required_keyword(job: Any, *, x: int) -> None: ...


@pytest.mark.parametrize(
    ("handler", "why"),
    # Python's "too many positional arguments" (for handler(job)) said as it is meant.
    [(_none, "it takes no positional argument"), (_two, "missing a required argument: 'b'"),
     (_keyword_only, "it takes no positional argument"),
     # (Python 3.13 says "a required keyword-only argument")
     (_required_keyword, "missing a required (keyword-only )?argument: 'x'")],
    ids=["none", "two", "keyword-only", "required-keyword"],
)
def test_a_handler_that_cannot_take_the_job_is_refused_at_registration(
    handler: Any, why: str
) -> None:
    registry = trioqueue.TaskRegistry()
    with pytest.raises(TypeError) as refused:
        registry.task(name="broken")(handler)
    message = str(refused.value)
    assert message.startswith("task 'broken': handler ")
    assert handler.__name__ in message  # the function is named
    assert "exactly one positional argument, the job" in message
    assert re.search(why, message), message
    assert "broken" not in registry


def test_the_check_applies_to_bare_decorators_and_sync_handlers() -> None:
    registry = trioqueue.TaskRegistry()
    with pytest.raises(TypeError, match="task 'pair'"):
        @registry.task
        async def pair(a: Any, b: Any) -> None: ...
    with pytest.raises(TypeError, match="task 'blocking'"):
        @registry.task(sync=True)
        def blocking() -> None: ...

    @registry.task(sync=True, name="fine")
    def fine(job: Any) -> int:
        return 1

    assert fine(None) == 1  # the decorator hands the function back unchanged
    assert list(registry) == ["fine"]


def test_a_name_given_where_the_function_goes_is_a_clear_error() -> None:
    # @registry.task("echo") (as Celery's or dramatiq's decorators read) names the
    # keyword to use instead of failing later on the string's missing __name__.
    registry = trioqueue.TaskRegistry()
    with pytest.raises(TypeError, match=r"@registry.task\(name='echo'\)"):
        registry.task("echo")  # type: ignore[call-overload]
    assert "echo" not in registry


def test_the_demo_registry_still_registers() -> None:
    from trioqueue.demo import registry

    assert sorted(registry) == ["echo", "fail", "flaky", "sleep"]


def test_task_spec_as_get_tasks_shows_it() -> None:
    registry = trioqueue.TaskRegistry()

    @registry.task(max_retries=5, timeout=2, priority="high")
    async def own(job: Any) -> None: ...

    @registry.task
    async def defaults(job: Any) -> None: ...

    assert registry.get("own").to_dict() == {
        "name": "own", "priority": "high", "max_retries": 5, "timeout": 2.0,
        "schedule": None, "tz": None, "every": None, "concurrency": None,
    }
    shown = registry.get("defaults").to_dict(default_max_retries=7, default_timeout=9.5)
    assert (shown["priority"], shown["max_retries"], shown["timeout"]) == ("medium", 7, 9.5)
    assert registry.get("own").priority is Priority.HIGH


def test_mypy_sees_the_decorated_function_and_a_bad_handler(tmp_path: Path,
                                                            mypy_cache: Path) -> None:
    """The decorator returns the function's own type, and its TypeVar is bound to a
    callable taking the job, so mypy flags a handler that cannot take one, and a plain
    function registered without ``sync=True`` (it would block the event loop)."""
    checked = mypy_on("""
        import trioqueue

        registry = trioqueue.TaskRegistry()

        @registry.task(name="good", max_retries=2)
        async def good(job: trioqueue.Job) -> int:
            return 1

        @registry.task
        async def bare(job: trioqueue.Job) -> str:
            return ""

        @registry.task(name="bad")  # BAD: cannot take the job
        async def bad(a: int, b: int) -> int:
            return a + b

        async def plain(job: trioqueue.Job) -> None:
            return None

        direct = registry.task(plain, name="direct", max_retries=1)  # not a decorator

        @registry.task  # BAD: a plain function without sync=True
        def blocking(job: trioqueue.Job) -> int:
            return 1

        @registry.task(name="blocking_too")  # BAD: the same, called
        def blocking_too(job: trioqueue.Job) -> int:
            return 1

        @registry.task(sync=True)
        def threaded(job: trioqueue.Job) -> int:
            return 1

        def flag() -> bool:
            return True

        @registry.task(name="either", sync=flag())  # a bool, not a literal: not checked
        def either(job: trioqueue.Job) -> int:
            return 1

        reveal_type(good)
        reveal_type(bare)
        reveal_type(threaded)
    """, tmp_path, mypy_cache)
    assert checked.flagged == checked.marked, checked.output
    revealed = checked.revealed
    assert len(revealed) == 3, checked.output
    assert "Coroutine[Any, Any, int]" in revealed[0]
    assert "Coroutine[Any, Any, str]" in revealed[1]
    assert revealed[2].endswith("fallback=trioqueue._job.Job]) -> int\""), revealed[2]


@pytest.mark.parametrize("name", ["", "bad\ud800name", 3])
def test_a_task_name_must_be_text_a_store_can_keep(name: Any) -> None:
    """A lone surrogate in a name could not be encoded as UTF-8 by SQLite or Redis: the
    first write of such a job would fail, so the name is refused where it is given."""
    registry = trioqueue.TaskRegistry()

    async def handler(job: Any) -> None: ...

    with pytest.raises(ValueError, match="name: expected a non-empty string that can be "
                                         "encoded as UTF-8, got"):
        registry.task(name=name)(handler)


@pytest.mark.parametrize("name", ["two\nlines", "tab\there", "bell\x07", "nbsp\u00a0name"])
def test_a_task_name_must_be_printable(name: str) -> None:
    """A name is in every log line of its jobs (``task=two⏎lines`` split one event over
    two lines)."""
    registry = trioqueue.TaskRegistry()

    async def handler(job: Any) -> None: ...

    with pytest.raises(ValueError, match="name: expected printable characters"):
        registry.task(name=name)(handler)
    registry.task(name="with space.and-dots:ü")(handler)  # printable is enough


async def test_reprs_say_what_they_are(tmp_path: Path) -> None:
    """A registry, a queue and a client show what they hold in a REPL or a log line,
    not ``<... object at 0x...>``."""
    registry = trioqueue.TaskRegistry()

    @registry.task
    async def one(job: trioqueue.Job) -> None: ...

    assert repr(registry) == "<TaskRegistry of 1 task: one>"
    for i in range(11):
        registry.register(one, name=f"t{i:02}")
    assert repr(registry).startswith("<TaskRegistry of 12 tasks: one, t00, t01, ")
    assert repr(registry).endswith(", t08, ...>")
    async with trioqueue.open_queue(registry, trioqueue.QueueConfig(workers=2)) as q:
        assert repr(q) == "<JobQueue memory, 2 workers>"
    config = trioqueue.QueueConfig(persist_path=tmp_path / "q.db", durability="batch")
    async with trioqueue.open_queue(registry, config) as q:
        assert repr(q) == f"<JobQueue store {str(tmp_path / 'q.db')!r} (batch), 4 workers>"
    async with trioqueue.client.Client("http://127.0.0.1:8080/") as client:
        assert repr(client) == "<Client http://127.0.0.1:8080>"
