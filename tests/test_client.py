"""``trioqueue.client`` against a real ``trioqueue serve``."""

from __future__ import annotations

import functools
import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import trio

import trioqueue
import trioqueue.client
from tests.test_server import Server, running_server
from trioqueue import JobStatus
from trioqueue.client import Client, EventStreamClosed, ServerError, Unauthorized
from trioqueue.demo import registry as demo_registry
from trioqueue.server import App
from trioqueue.testing import ROUTES


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with running_server("--workers", "2", "--token", "tok",
                        env={"TRIOQUEUE_RETRY_BASE": "0.05"}) as srv:
        yield srv


async def test_enqueue_wait_get(server: Server) -> None:
    async with Client(server.url, token="tok") as client:
        job = await client.enqueue("echo", {"x": 1}, priority="high", job_id="c-1")
        assert isinstance(job, trioqueue.Job)
        assert (job.id, job.priority, job.status) == ("c-1", trioqueue.Priority.HIGH,
                                                       JobStatus.QUEUED)
        with trio.fail_after(10):
            done = await client.wait(job.id)
        assert done.status is JobStatus.COMPLETED
        assert done.result == {"x": 1}
        assert done.finished_at is not None
        assert done.finished_at >= done.created_at
        assert (await client.get("c-1")) == done
        assert "c-1" in {j.id for j in await client.list_jobs(status="completed")}
        assert (await client.metrics())["completed"] >= 1
        assert await client.health()


async def test_enqueue_many_refuses_what_is_not_a_list_of_payloads_as_the_library_does(
    server: Server,
) -> None:
    """A text, bytes or mapping given as the payloads is InvalidJob, as from
    ``JobQueue.enqueue_many``, not one job per character, byte or key."""
    async with Client(server.url, token="tok") as client:
        before = (await client.metrics())["enqueued"]
        for payloads in ("abc", b"ab", bytearray(b"ab"), {"x": 1, "y": 2}, 3):
            with pytest.raises(trioqueue.InvalidJob, match=(
                    r"^payloads: expected a list, tuple, generator or other iterable of "
                    rf"payloads \(not a str, bytes or dict\), got {type(payloads).__name__}$")):
                await client.enqueue_many("echo", payloads)  # type: ignore[arg-type]
        assert (await client.metrics())["enqueued"] == before


async def test_errors_are_the_library_exceptions(server: Server) -> None:
    async with Client(server.url, token="tok") as client:
        with pytest.raises(trioqueue.UnknownTask):
            await client.enqueue("nope")
        with pytest.raises(trioqueue.InvalidJob):
            await client.enqueue("echo", delay=-1)
        await client.enqueue("echo", 1, job_id="c-dup")
        with pytest.raises(trioqueue.DuplicateJob):
            await client.enqueue("echo", 2, job_id="c-dup")
        with pytest.raises(trioqueue.JobNotFound):
            await client.get("missing")
        with pytest.raises(trioqueue.JobNotFound):
            await client.cancel("missing")
        with trio.fail_after(10):
            await client.wait("c-dup")
        with pytest.raises(trioqueue.InvalidTransition):
            await client.cancel("c-dup")
        with pytest.raises(trioqueue.InvalidTransition):
            await client.retry("c-dup")
    async with Client(server.url) as anonymous:
        with pytest.raises(Unauthorized):
            await anonymous.get("c-dup")


async def test_an_id_no_job_can_have_is_refused_before_it_reaches_a_path(
    server: Server,
) -> None:
    """Ids go into URL paths: one that would walk to another path (another job's
    cancel, the bulk retry, /metrics) or carry a query is refused, naming the id."""
    async with Client(server.url, token="tok") as client:
        target = await client.enqueue("echo", job_id="target", delay=60)
        for bad in ("x/../../jobs/target", "x/..", "target?x", "../metrics", "", "a b"):
            for call in (client.get, client.cancel, client.retry, client.wait):
                with pytest.raises(trioqueue.InvalidJob, match=r"^id: "):
                    await call(bad)
        assert (await client.get(target.id)).status is JobStatus.SCHEDULED


async def test_cancel_and_retry(server: Server) -> None:
    async with Client(server.url, token="tok") as client:
        job = await client.enqueue("echo", delay=60)
        assert job.status is JobStatus.SCHEDULED
        assert (await client.cancel(job.id)).status is JobStatus.CANCELLED
        again = await client.retry(job.id)
        assert again.status in (JobStatus.QUEUED, JobStatus.PROCESSING, JobStatus.COMPLETED)
        with trio.fail_after(10):
            assert (await client.wait(job.id)).status is JobStatus.COMPLETED


async def test_wait_returns_failed_jobs(server: Server) -> None:
    async with Client(server.url, token="tok") as client:
        job = await client.enqueue("fail", max_retries=1)
        with trio.fail_after(10):
            done = await client.wait(job.id)
        assert done.status is JobStatus.FAILED
        assert done.attempts == 2
        assert "on purpose" in (done.error or "")


async def test_events(server: Server) -> None:
    async with Client(server.url, token="tok") as client:
        async with client.events(types=["started", "completed"]) as events:
            job = await client.enqueue("echo", "hi")
            seen = []
            with trio.fail_after(10):
                async for event in events:
                    if event.job_id == job.id:
                        seen.append(event.type)
                        if event.type == "completed":
                            break
        assert seen == ["started", "completed"]
        async with client.events(snapshot=True) as events:
            with trio.fail_after(10):
                first = await events.__anext__()
        assert first.type == "metrics"
        assert first.metrics is not None
        async with client.events(types=["bogus"]) as events:
            with pytest.raises(EventStreamClosed) as closed, trio.fail_after(10):
                await events.__anext__()
        assert closed.value.code == 1008


async def test_events_end_when_the_server_stops() -> None:
    with running_server() as srv:
        async with Client(srv.url) as client, client.events() as events:
            srv.proc.terminate()
            with trio.fail_after(15):
                remaining = [event async for event in events]
        assert remaining == []


async def test_tasks_metrics_text_and_bulk_retry(server: Server) -> None:
    async with Client(server.url, token="tok") as client:
        tasks = await client.tasks()
        assert [t["name"] for t in tasks] == ["echo", "fail", "flaky", "sleep"]
        assert tasks[0] == {"name": "echo", "priority": "medium", "max_retries": 3,
                            "timeout": None, "schedule": None, "tz": None, "every": None,
                            "concurrency": None, "next_run": None}
        text = await client.prometheus_metrics()
        assert "trioqueue_jobs_enqueued_total" in text
        failed = [await client.enqueue("fail", max_retries=0) for _ in range(2)]
        with trio.fail_after(10):
            for job in failed:
                assert (await client.wait(job.id)).status is JobStatus.FAILED
        assert await client.retry_all("failed", task="echo") == 0
        assert await client.retry_all("failed", task="fail") >= 2
        with trio.fail_after(10):
            again = await client.wait(failed[0].id)
        assert (again.status, again.attempts) == (JobStatus.FAILED, 1)  # ran once more
        with pytest.raises(trioqueue.InvalidJob, match="status: expected 'failed' or "
                           "'cancelled', got 'completed'"):
            await client.retry_all("completed")
        with pytest.raises(trioqueue.UnknownTask, match="no handler registered as 'fial'"):
            await client.retry_all("failed", task="fial")


def without_bulk_retry(app: App) -> Any:
    """The app as a server of the previous version answers: no ``POST /jobs/retry``
    (405, as its router said for the path of a job named "retry")."""

    async def older(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/jobs/retry" \
                and scope["method"] == "POST":
            await send({"type": "http.response.start", "status": 405, "headers": [
                (b"content-type", b"application/json"), (b"allow", b"GET")]})
            await send({"type": "http.response.body",
                        "body": b'{"error": "method POST not allowed on /jobs/retry"}'})
            return
        await app(scope, receive, send)

    return older


async def test_bulk_retry_against_a_server_without_the_route() -> None:
    config = trioqueue.QueueConfig(workers=1, capacity=100)
    async with trioqueue.open_queue(demo_registry, config) as q:
        for i in range(3):
            await q.enqueue("fail", job_id=f"f-{i}", max_retries=0)
        await q.enqueue("echo", job_id="late", delay=3600)
        await q.cancel("late")
        for i in range(3):
            await q.wait(f"f-{i}")
        transport = httpx.ASGITransport(app=without_bulk_retry(App(q)))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            client = Client("http://127.0.0.1", http=http)
            refused = await http.post("/jobs/retry", json={"status": "failed"})
            assert refused.status_code == 405  # what the fallback answers
            assert await client.retry_all("failed", task="echo") == 0
            assert await client.retry_all("cancelled") == 1
            assert (await q.get("late")).status is not JobStatus.CANCELLED
            assert await client.retry_all("failed") == 3


async def test_a_full_queue_raises_queue_full_with_the_servers_retry_after() -> None:
    with running_server("--workers", "1", "--capacity", "1", "--shutdown-timeout", "0.5"
                        ) as srv:
        refused: trioqueue.QueueFull | None = None
        async with Client(srv.url) as client:
            for _ in range(4):  # one runs, one waits, the next is refused
                try:
                    await client.enqueue("sleep", {"seconds": 30})
                except trioqueue.QueueFull as exc:
                    refused = exc
                    break
        assert refused is not None
        assert refused.retry_after == 1.0  # the server's Retry-After: 1
        assert srv.stop() == 0


def answering(status: int, body: bytes, content_type: str) -> httpx.AsyncClient:
    """An HTTP client whose every request gets this answer: what another program at the
    server's address (a web server, a proxy's error page) would say."""
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers={"content-type": content_type})

    return httpx.AsyncClient(transport=httpx.MockTransport(answer), base_url="http://127.0.0.1")


async def test_a_batch_answer_without_created_is_taken_as_all_made() -> None:
    """A server of an earlier version answers ``POST /jobs/batch`` with ``{"jobs": [...]}``
    alone (API.md): the jobs are taken, as they were, and each counted as made (the
    client said the server was not trioqueue's, and ``enqueue --count`` failed)."""
    job = {"id": "a", "task": "echo", "payload": 1, "priority": "medium", "status": "queued",
           "attempts": 0, "max_retries": 3, "timeout": None,
           "created_at": "2026-01-02T03:04:05.100000Z", "scheduled_for": None,
           "started_at": None, "finished_at": None, "result": None, "error": None,
           "traceback": None, "progress": None}
    body = json.dumps({"jobs": [job, {**job, "id": "b"}]}).encode()
    async with answering(202, body, "application/json") as http:
        client = Client("http://127.0.0.1", http=http)
        assert [j.id for j in await client.enqueue_many("echo", [1, 1])] == ["a", "b"]
        jobs, created = await client.enqueue_many_created("echo", [1, 1])
        assert ([j.id for j in jobs], created) == (["a", "b"], [True, True])


@pytest.mark.parametrize(("message", "raised"), [
    ("server busy: 67108864 bytes of responses are waiting ...", trioqueue.client.ServerError),
    ("server busy: 1000 connections open", trioqueue.client.ServerError),
    ("the server is shutting down and takes no new jobs", trioqueue.ShuttingDown),
])
async def test_a_busy_server_is_not_a_shutdown(message: str, raised: type[Exception]) -> None:
    """The server's 503s of an overload (retry later) are a ``ServerError``; only those of
    a shutdown are ``ShuttingDown``."""
    body = json.dumps({"error": message}).encode()
    async with answering(503, body, "application/json") as http:
        with pytest.raises(raised, match=re.escape(message)) as caught:
            await Client("http://127.0.0.1", http=http).list_jobs()
    assert type(caught.value) is raised


@pytest.mark.parametrize(("status", "body", "content_type", "why"), [
    (200, b"<html>a web page</html>", "text/html", "text/html; not a JSON object"),
    (404, b"<html>Not Found</html>", "text/html", "text/html; not a JSON object"),
    (502, b"Bad Gateway", "text/plain", "text/plain; not a JSON object"),
    (503, b"[1, 2]", "application/json", "application/json; not a JSON object"),
    (200, b"{not json", "application/json", "application/json; not a JSON object"),
    (200, b'{"something": "else"}', "application/json", "application/json; KeyError: "),
])
async def test_answers_no_trioqueue_server_gives_raise_server_error_saying_so(
    status: int, body: bytes, content_type: str, why: str
) -> None:
    """Not ``JobNotFound`` for another program's 404, not ``ShuttingDown`` for a proxy's
    503, and never a ``KeyError`` or ``TypeError`` from inside the client: a
    ``ServerError`` that names the request, the content type and what the answer began
    with."""
    async with answering(status, body, content_type) as http:
        client = Client("http://127.0.0.1", http=http)
        calls = [client.get("j1"), client.enqueue("echo"), client.list_jobs(),
                 client.tasks(), client.retry_all(), client.enqueue_many("echo", [1]),
                 client.cancel("j1")]
        if status != 200:
            calls.append(client.metrics())
        for call in calls:
            with pytest.raises(trioqueue.client.ServerError) as raised:
                await call
            assert raised.value.status == status
            assert f"answered in a way no trioqueue server does ({why}" in str(raised.value)
            assert f"The answer began {body.decode()[:20]!r}"[:-1] in str(raised.value)
        with pytest.raises(trioqueue.client.ServerError,
                           match="answered in a way no trioqueue server does"):
            await client.health()  # not True for any server answering 200 there


async def test_a_shape_the_server_never_sends_is_a_server_error() -> None:
    """JSON objects of the right kind with a wrong part: a job without its status, a
    task list of strings, a retried count that is not a number."""
    cases = [(b'{"id": "j1", "task": "echo", "priority": "high"}', "get", "KeyError"),
             (b'{"tasks": ["echo"]}', "tasks", "'tasks' is not a list of tasks"),
             (b'{"retried": "all"}', "retry_all", "'retried' is 'all', not a count"),
             (b'{"jobs": [{"id": 1}]}', "list_jobs", "KeyError")]
    for body, method, why in cases:
        async with answering(200, body, "application/json") as http:
            client = Client("http://127.0.0.1", http=http)
            args = ("j1",) if method == "get" else ()
            with pytest.raises(trioqueue.client.ServerError, match=why):
                await getattr(client, method)(*args)


def test_the_cli_pointed_at_another_web_server_says_so(tmp_path: Any) -> None:
    """``trioqueue list`` / ``tasks`` / ``metrics`` with ``--url`` at a plain web server
    (Python's own, serving files): exit 1 with one line saying what answered, no
    traceback (``tasks`` used to end in ``TypeError: string indices must be
    integers``)."""
    (tmp_path / "tasks").write_text("<html>a file called tasks</html>")
    (tmp_path / "metrics").write_text("<html>a file called metrics</html>")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    web = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                            "127.0.0.1"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        for command in ("list", "tasks", "metrics"):
            done = subprocess.run([sys.executable, "-m", "trioqueue", command, "--url", url],
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 1, (command, done.stderr)
            assert "Traceback" not in done.stderr
            lines = done.stderr.strip().splitlines()
            assert len(lines) == 1, lines
            assert lines[0].startswith(f"trioqueue {command}: ServerError: HTTP ")
            assert "answered in a way no trioqueue server does" in lines[0]
    finally:
        web.kill()
        web.wait()


async def test_health_is_false_while_the_server_shuts_down() -> None:
    """``/healthz`` answers 503 ``shutting_down`` once the server has begun to stop:
    ``health()`` is False then, True before."""
    config = trioqueue.QueueConfig(workers=1)
    async with trioqueue.open_queue(demo_registry, config) as q:
        app = App(q)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            client = Client("http://127.0.0.1", http=http)
            assert await client.health() is True
            app.state.closing = True
            assert await client.health() is False


async def upgrade_refusing_proxy(
    server_url: str, refusal: int | None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """An HTTP proxy in front of the server (its URL to ``task_status``) that does not
    pass websockets on, as nginx without its websocket block: the Upgrade and Connection
    headers of a connection's first request are dropped (the server then answers
    ``/events`` with its 426), or with ``refusal`` the proxy answers an upgrade itself with
    that status.  The rest of a connection is relayed as it is (a websocket client's
    upgrade is always the first request of its connection)."""
    target = urlsplit(server_url)
    host, port = target.hostname, target.port
    assert host is not None
    assert port is not None

    async def relay(source: trio.SocketStream, sink: trio.SocketStream,
                    done: trio.CancelScope) -> None:
        try:
            while data := await source.receive_some(65536):
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        done.cancel()

    async def handle(client: trio.SocketStream) -> None:
        async with client:
            received = b""
            while b"\r\n\r\n" not in received:
                chunk = await client.receive_some(65536)
                if not chunk:
                    return
                received += chunk
            head, _, rest = received.partition(b"\r\n\r\n")
            request, *fields = head.split(b"\r\n")
            hop = (b"upgrade:", b"connection:")
            if refusal is not None and any(f.lower().startswith(b"upgrade:") for f in fields):
                body = b"<html><h1>%d</h1>no websockets here</html>" % refusal
                await client.send_all(b"HTTP/1.1 %d Refused\r\ncontent-type: text/html\r\n"
                                      b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                                      % (refusal, len(body), body))
                return
            kept = [f for f in fields if not f.lower().startswith(hop)]
            upstream = await trio.open_tcp_stream(host, port)
            async with upstream, trio.open_nursery() as nursery:
                await upstream.send_all(b"\r\n".join([request, *kept, b"", rest]))
                nursery.start_soon(relay, client, upstream, nursery.cancel_scope)
                nursery.start_soon(relay, upstream, client, nursery.cancel_scope)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, handle, 0,
                                                          host="127.0.0.1"))
        task_status.started(f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}")


@pytest.mark.parametrize("refusal", [None, 403])
async def test_wait_polls_through_a_proxy_that_refuses_websockets(
    server: Server, refusal: int | None
) -> None:
    """The proxy answers the upgrade of ``/events`` (426 from the server behind it, or
    its own 403): ``wait`` looks at the job until it is done instead of raising
    trio-websocket's ``ConnectionRejected``."""
    async with trio.open_nursery() as nursery:
        url = await nursery.start(upgrade_refusing_proxy, server.url, refusal)
        async with Client(url, token="tok") as client:
            job = await client.enqueue("echo", {"via": "proxy"}, delay=0.3)
            with trio.fail_after(10):
                done = await client.wait(job.id, poll=0.1)
        nursery.cancel_scope.cancel()
    assert (done.status, done.result) == (JobStatus.COMPLETED, {"via": "proxy"})


@pytest.mark.parametrize(("refusal", "status", "began"), [
    (None, 426, '{"error":'), (403, 403, "<html><h1>403</h1>")])
async def test_events_through_a_proxy_that_refuses_websockets_say_so(
    server: Server, refusal: int | None, status: int, began: str
) -> None:
    """A refused upgrade is a ``ServerError`` with the status, naming the URL and the
    start of the answer, not trio-websocket's ``ConnectionRejected``."""
    async with trio.open_nursery() as nursery:
        url = await nursery.start(upgrade_refusing_proxy, server.url, refusal)
        async with Client(url, token="tok") as client:
            with pytest.raises(ServerError) as refused:
                async with client.events(types=["completed"]):
                    pass
        nursery.cancel_scope.cancel()
    assert type(refused.value) is ServerError
    assert refused.value.status == status
    ws = "ws" + url[len("http"):] + "/events"
    assert str(refused.value).startswith(
        f"HTTP {status}: the server (or a proxy in front of it) refused the websocket "
        f"upgrade of {ws} (is the proxy set up to pass websockets on?); the answer began "
        f"{began!r}"[:-1])


async def test_no_server_at_the_url_is_a_connect_error_for_events_and_wait_too() -> None:
    """Nothing listens there: ``events()`` and ``wait`` raise ``httpx.ConnectError`` as
    the other methods do (one ``except`` for all), naming the URL and the cause, not
    trio-websocket's ``HandshakeError`` with no message."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with Client(f"http://127.0.0.1:{port}") as client:
        with pytest.raises(httpx.ConnectError) as by_http:
            await client.get("j1")
        cause = str(by_http.value)
        assert str(port) in cause
        expected = f"cannot open the event stream ws://127.0.0.1:{port}/events: {cause}"
        with pytest.raises(httpx.ConnectError) as by_events:
            async with client.events(types=["completed"]):
                pass
        assert str(by_events.value) == expected
        assert isinstance(by_events.value.__cause__, OSError)
        with pytest.raises(httpx.ConnectError) as by_wait:
            await client.wait("j1")
        assert str(by_wait.value) == expected


async def test_a_status_that_is_not_one_is_invalid_job_as_the_library_says(
    server: Server,
) -> None:
    """Not a bare ``ValueError`` from ``JobStatus``: the library's ``InvalidJob``, its
    message word for word (``retry_all``'s names the two statuses it takes, as the
    server's 400 for ``POST /jobs/retry`` does)."""
    config = trioqueue.QueueConfig(workers=1)
    async with trioqueue.open_queue(demo_registry, config) as q:
        with pytest.raises(trioqueue.InvalidJob) as library:
            await q.list_jobs(status="bogus")
    assert str(library.value).startswith("status: expected one of queued, ")
    async with Client(server.url, token="tok") as client:
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: client.list_jobs("bogus"), lambda: client.list_page(status="bogus"),
            lambda: client.iter_jobs("bogus").__anext__()]
        for call in calls:
            with pytest.raises(trioqueue.InvalidJob) as raised:
                await call()
            assert str(raised.value) == str(library.value)
        for bad in ("bogus", 7):
            with pytest.raises(trioqueue.InvalidJob) as raised:
                await client.retry_all(bad)  # type: ignore[arg-type]
            assert str(raised.value) == f"status: expected 'failed' or 'cancelled', got {bad!r}"


async def test_a_url_that_is_one_of_the_servers_routes_is_refused(server: Server) -> None:
    """``--url http://host:8080/jobs`` used to ask ``GET /jobs/tasks`` (``JobNotFound: job
    'tasks' not found``).  Such a URL is a ``ValueError`` naming it and the root it should
    be; another path is a prefix the server may be mounted under behind a proxy."""
    names = {path.split("/")[1] for path in ROUTES if path != "/"} | {"events"}
    for name in sorted(names):
        for url, root in ((f"{server.url}/{name}", server.url),
                          (f"{server.url}/{name}/", server.url),
                          (f"https://host/trioqueue/{name}", "https://host/trioqueue")):
            expected = (f"url: expected the server's root, not its /{name} route: got "
                        f"{url!r} (the root would be {root!r})")
            with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
                Client(url, token="tok")
    async with Client(f"{server.url}/trioqueue/", token="tok") as client:
        assert client.url == f"{server.url}/trioqueue"
        with pytest.raises(ServerError, match=re.escape(
                "no route for /trioqueue/tasks: is the client's URL the server's root?")):
            await client.tasks()


def test_the_clients_exceptions_pickle_and_say_where_they_live() -> None:
    """They cross process boundaries (a worker pool, a result backend) as the library's
    do: ``ServerError`` and ``EventStreamClosed`` failed to unpickle (their ``__init__``
    takes more than the message)."""
    import pickle

    for exc in (ServerError(500, "boom"), Unauthorized(401, "no token"),
                EventStreamClosed(1008, "bad filter"), EventStreamClosed(1006, None)):
        again = pickle.loads(pickle.dumps(exc))
        assert (type(again), str(again), vars(again)) == (type(exc), str(exc), vars(exc))
        assert type(exc).__module__ == "trioqueue.client"


def test_certificates_are_loaded_only_where_tls_may_be_spoken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every client made httpx load its certificates (0.1-0.2 s of each CLI command's
    start), for a plain ``http://`` server too.  Not there, unless a proxy is set (the
    proxy may be reached over TLS)."""
    from trioqueue.testing import client_verify

    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                 "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert client_verify("http://127.0.0.1:8080") is False
    assert client_verify("https://queue.example") is True
    monkeypatch.setenv("HTTPS_PROXY", "https://proxy.example:3128")  # not for http://
    monkeypatch.setenv("NO_PROXY", "localhost")
    assert client_verify("http://127.0.0.1:8080") is False
    for name in ("HTTP_PROXY", "ALL_PROXY"):  # http:// through it: maybe over TLS
        with monkeypatch.context() as env:
            env.setenv(name, "https://proxy.example:3128")
            assert client_verify("http://127.0.0.1:8080") is True


async def test_a_ctrl_c_in_the_event_streams_reader_task_comes_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Trio raises a Ctrl+C in whichever task runs when it comes.  Landing in the
    websocket's reader task, it ended the stream, so the block reading events raised too
    (the stream closed: ``EventStreamClosed``), and the Ctrl+C was dropped for that:
    ``Client.wait`` took it for a lost stream and went on polling (``enqueue --wait``
    ignored a Ctrl+C)."""
    from trio_websocket import WebSocketConnection, WebSocketRequest, serve_websocket

    async def interrupted(self: WebSocketConnection, event: object) -> None:
        raise KeyboardInterrupt  # as the reader task handles the message

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.send_message(json.dumps({"type": "enqueued", "job_id": "a", "seq": 1}))
        await trio.sleep_forever()

    async def read_events(url: str) -> None:
        async with Client(url) as client, client.events() as events:
            async for _ in events:
                pass

    monkeypatch.setattr(WebSocketConnection, "_handle_message_event", interrupted)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
        with trio.fail_after(20), pytest.raises(KeyboardInterrupt):
            await read_events(f"http://127.0.0.1:{server.port}")
        nursery.cancel_scope.cancel()
