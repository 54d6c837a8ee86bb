"""The errors a newcomer's first mistakes meet say what to do instead.

Forgetting ``async with`` around ``open_queue``, a Redis URL that cannot be used, a cron
nickname without due times, a periodic task's name no run id can hold, an ``--app`` that
names a function needing arguments, a string given as a batch's payloads: each message
names the thing and the rule, not an internal type.  And what ``serve --help`` and the
docs say answers without the token is what does.
"""

from __future__ import annotations

import gc
import textwrap
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio

import trioqueue
from trioqueue.testing import RedisUnavailable

from .mypy_check import mypy_on
from .redis_util import REDIS_URL, unique

FIX = "`async with trioqueue.open_queue(registry, config) as q:`"


def registry() -> trioqueue.TaskRegistry:
    tasks = trioqueue.TaskRegistry()

    @tasks.task
    async def echo(job: trioqueue.Job) -> Any:
        return job.payload

    return tasks


# ---------------------------------------------------------------- open_queue without async with


def test_open_queue_used_as_the_queue_says_to_write_async_with() -> None:
    opening = trioqueue.open_queue(registry())
    for name in ("enqueue", "get", "config", "closing"):
        with pytest.raises(TypeError) as caught:
            getattr(opening, name)
        assert str(caught.value) == ("open_queue() returns an async context manager, not "
                                     f"the queue: write {FIX} and use q.{name} in that block")
    # Names a queue does not have stay an AttributeError (hasattr, copy, ... look).
    with pytest.raises(AttributeError, match="no attribute 'enqueu'"):
        opening.enqueu  # type: ignore[attr-defined]  # noqa: B018
    assert not hasattr(opening, "__deepcopy__")
    # A queue's name too: the TypeError is an AttributeError (hasattr raised it).
    assert not hasattr(opening, "enqueue")
    assert getattr(opening, "metrics", None) is None


async def test_open_queue_awaited_or_in_a_plain_with_says_to_write_async_with() -> None:
    with pytest.raises(TypeError) as caught:
        await trioqueue.open_queue(registry())  # type: ignore[misc]
    assert str(caught.value).endswith(f"not an awaitable: write {FIX} (not `await`)")
    with pytest.raises(TypeError) as caught:
        with trioqueue.open_queue(registry()):  # type: ignore[attr-defined]
            pass
    assert str(caught.value).endswith(f"not a context manager for `with`: write {FIX}")


async def test_open_queue_in_async_with_gives_the_queue() -> None:
    async with trioqueue.open_queue(registry()) as q:
        assert isinstance(q, trioqueue.JobQueue)
        assert (await q.wait((await q.enqueue("echo", [1])).id)).result == [1]
    # The body's exception comes out as itself, as before.
    with pytest.raises(KeyError, match="mine"):
        async with trioqueue.open_queue(registry()):
            raise KeyError("mine")


def test_mypy_sees_the_queue_and_flags_the_mistakes(tmp_path: Path, mypy_cache: Path
                                                   ) -> None:
    """The checks above are for run time: mypy keeps seeing ``async with`` give a
    ``JobQueue``, and flags the three mistakes before they run."""
    checked = mypy_on("""
        import trioqueue

        registry = trioqueue.TaskRegistry()

        async def main() -> None:
            async with trioqueue.open_queue(registry) as q:
                reveal_type(q)
            trioqueue.open_queue(registry).enqueue  # BAD
            await trioqueue.open_queue(registry)  # BAD
            with trioqueue.open_queue(registry):  # BAD
                pass
    """, tmp_path, mypy_cache)
    assert checked.flagged == checked.marked, checked.output
    assert checked.revealed[0].endswith('Revealed type is "trioqueue._queue.JobQueue"'), (
        checked.output)


# ---------------------------------------------------------------- a Redis that cannot be used

_AT = urlsplit(REDIS_URL).netloc.rpartition("@")[2]  # the shared Redis' host:port


@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.parametrize(("url", "shown", "reason"), [
    ("redis://:s3cret@127.0.0.1:1/0", "redis://:***@127.0.0.1:1/0",
     "Unable to establish a connection to 127.0.0.1:1"),
    (f"redis://:s3cret@{_AT}/99", f"redis://:***@{_AT}/99", "DB index is out of range"),
    (f"redis://nobody:s3cret@{_AT}/0", f"redis://nobody:***@{_AT}/0", "username-password"),
], ids=["unreachable", "db-out-of-range", "auth-refused"])
async def test_a_redis_that_cannot_be_opened_is_named_without_its_password(
    url: str, shown: str, reason: str
) -> None:
    """Only reads reach the shared Redis: the connection fails in its handshake."""
    name = unique("newcomer")
    config = trioqueue.QueueConfig(redis_url=url, queue_name=name)
    with trio.fail_after(20), pytest.raises(RedisUnavailable) as caught:
        async with trioqueue.open_queue(registry(), config):
            pytest.fail("opened")
    message = str(caught.value)
    assert message.startswith(f"cannot use redis at {shown} (queue {name!r}): "), message
    assert reason in message
    assert "s3cret" not in message
    with warnings.catch_warnings():  # coredis' pool of the failed connect, collected here
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_a_user_whose_acl_refuses_the_scripts_is_told_at_open(tmp_path: Path) -> None:
    """A Redis user without ``evalsha`` (NOPERM) got coredis' ``ResponseError`` inside two
    exception groups (84 lines from ``trioqueue worker``): it is a refusal, named with
    the URL, as the other failures to open are."""
    from .test_redis_limits import own_redis

    async with own_redis(tmp_path, "--user", "limited", "on", ">pw", "~*", "+@all",
                         "-evalsha", "-eval") as url:
        limited = url.replace("redis://", "redis://limited:pw@", 1)
        config = trioqueue.QueueConfig(redis_url=limited, queue_name="acl")
        with trio.fail_after(20), pytest.raises(RedisUnavailable) as caught:
            async with trioqueue.open_queue(registry(), config):
                pytest.fail("opened")
    shown = limited.replace(":pw@", ":***@")
    assert str(caught.value) == (
        f"cannot use redis at {shown} (queue 'acl'): NOPERM this user has no permissions "
        "to run the 'evalsha' command")


def test_the_error_at_open_keeps_its_type_and_attributes() -> None:
    from trioqueue.testing import RedisNotSent, RedisRefused, at_open

    refused = at_open(RedisRefused("redis: OOM over maxmemory", writes=True),
                      "redis://127.0.0.1:6379/0?password=s3cret", "q")
    assert type(refused) is RedisRefused
    assert refused.writes
    assert str(refused) == ("cannot use redis at redis://127.0.0.1:6379/0?password=*** "
                            "(queue 'q'): OOM over maxmemory")
    assert type(at_open(RedisNotSent("redis: x"), "redis://h/0", "q")) is RedisNotSent
    assert at_open(trioqueue.StoreError("redis 6.2: too old"), "redis://h/0", "q") is None


# ---------------------------------------------------------------- periodic tasks


async def _handler(job: trioqueue.Job) -> None: ...


@pytest.mark.parametrize(("schedule", "said"), [
    ("@reboot", "got '@reboot', which has no due times (it means at start: enqueue its "
                "job when your program starts)"),
    (" @Reboot ", "got ' @Reboot ', which has no due times"),
    ("@every5m", "got '@every5m', which is none of those nicknames"),
    ("* * *", "got 3 in '* * *'"),
])
def test_a_nickname_without_due_times_says_why(schedule: str, said: str) -> None:
    with pytest.raises(ValueError) as caught:
        trioqueue.TaskRegistry().task(schedule=schedule)(_handler)
    message = str(caught.value)
    assert message.startswith("task '_handler': schedule: expected five fields "), message
    assert said in message, message


@pytest.mark.parametrize("name", ["-lead", ".dot", "my task", "x" * 104, "héllo"])
def test_a_periodic_name_no_run_id_can_hold_says_the_whole_rule(name: str) -> None:
    with pytest.raises(ValueError) as caught:
        trioqueue.TaskRegistry().register(_handler, name=name, every=30)
    assert str(caught.value) == (
        f"task {name!r}: a periodic task's name must be usable in a job id: 1 to 103 ASCII "
        "letters, digits and '_.:@-', starting with a letter or digit")


@pytest.mark.parametrize("name", ["a@b", "0-lead", "x" * 103, "a.b:c_d-e"])
def test_a_periodic_name_the_rule_allows_is_taken(name: str) -> None:
    trioqueue.TaskRegistry().register(_handler, name=name, every=30)


# ---------------------------------------------------------------- --app


def test_an_app_naming_a_function_that_needs_arguments_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trioqueue.cli import UsageError, load_registry

    (tmp_path / "newcomer_app.py").write_text(textwrap.dedent("""
        import trioqueue

        registry = trioqueue.TaskRegistry()

        def factory(x):
            return registry

        def with_defaults(x=1, *more, **kw):
            return registry

        async def async_factory():
            return registry

        def returns_none():
            return None
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert isinstance(load_registry("newcomer_app:with_defaults"), trioqueue.TaskRegistry)
    refusal = "not a TaskRegistry or a function that takes no arguments and returns one"
    for spec, kind in (("factory", "a function that needs arguments (x)"),
                       ("async_factory", "an async function")):
        with pytest.raises(UsageError) as caught:
            load_registry(f"newcomer_app:{spec}")
        assert str(caught.value) == f"--app: newcomer_app:{spec} is {kind}, {refusal}"
    with pytest.raises(UsageError) as caught:
        load_registry("newcomer_app:returns_none")
    assert str(caught.value) == ("--app: newcomer_app:returns_none() returned a NoneType, "
                                 "not a TaskRegistry")


# ---------------------------------------------------------------- the token's reach


async def test_the_routes_open_without_the_token_are_the_ones_named(
    capsys: pytest.CaptureFixture[str]
) -> None:
    """``serve --help``, operations.md and http-api.md name every GET route that answers
    without the token, and no other."""
    from functools import partial

    import httpx

    from trioqueue.cli import main
    from trioqueue.demo import registry as demo_registry
    from trioqueue.server import ServerSettings, serve
    from trioqueue.testing import ROUTES

    stop = trio.Event()
    config = trioqueue.QueueConfig(workers=1, shutdown_timeout=0.5)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(serve, demo_registry, config, ServerSettings(
                port=0, token="s3cret"), stop=stop))
            async with httpx.AsyncClient(base_url=url) as client:
                answered = {path: (await client.get(path)).status_code
                            for path, methods in ROUTES.items() if "GET" in methods}
            stop.set()
    free = {path for path, status in answered.items() if status != 401}
    assert free == {"/healthz", "/readyz", "/", "/dashboard.js", "/dashboard.css"}, answered
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    token_help = help_text.rpartition("--token TOKEN ")[2].partition(" --")[0]
    for text in (token_help, *_token_docs()):
        named = {path for path in answered if path != "/" and path in text}
        assert named == free - {"/"}, text
        assert "/`" in text or "/," in text, text  # "/" itself


def _token_docs() -> tuple[str, str]:
    """What operations.md (its ``--token`` row) and http-api.md say the token covers."""
    docs = Path(__file__).resolve().parent.parent / "docs"
    operations = next(line for line in (docs / "operations.md").read_text().splitlines()
                      if line.startswith("| `--token`"))
    http_api = (docs / "http-api.md").read_text()
    start = http_api.index("With a token set, every route but")
    return operations, http_api[start:].partition("\n\n")[0]


# ---------------------------------------------------------------- enqueue_many


@pytest.mark.parametrize("payloads", ["abc", b"ab", bytearray(b"ab"), {"a": 1}, 3])
async def test_enqueue_many_of_no_payloads_names_what_it_takes(payloads: Any) -> None:
    async with trioqueue.open_queue(registry()) as q:
        with pytest.raises(trioqueue.InvalidJob) as caught:
            await q.enqueue_many("echo", payloads)
    assert str(caught.value) == (
        "payloads: expected a list, tuple, generator or other iterable of payloads (not a "
        f"str, bytes or dict), got {type(payloads).__name__}")
