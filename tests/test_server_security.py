"""The server's guards against browsers and the network, end to end.

Each test runs :func:`trioqueue.server.serve` in-process on 127.0.0.1 port 0 and speaks
to it over real sockets (httpx, or raw bytes where the exact request matters), with a
bound on real time.  What is guarded (docs/operations.md, "Security"):

- DNS rebinding: a page whose name is made to resolve to 127.0.0.1 is same-origin to the
  browser, so its ``Origin`` matches its ``Host``; only the Host check stops it (400).
- Cross-site requests: ``Sec-Fetch-Site: cross-site`` on a POST is 403, token or not.
- Refusals (400 host, 403, 401) come before the body is read, with ``connection: close``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import attrs
import httpx
import pytest
import trio
from trio_websocket import open_websocket_url
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Message, RejectConnection, Request

from tests.test_server import running_server
from trioqueue import QueueConfig
from trioqueue.cli import UsageError, build_parser, serve_options
from trioqueue.demo import registry as demo_registry
from trioqueue.server import ServerSettings, serve

LIMIT = 20.0
"""Real seconds any one server conversation may take (a hang fails, not a slow machine)."""
EVIL = "rebind.evil.example"


@attrs.frozen
class Running:
    url: str
    port: int

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=LIMIT, **kwargs)


@asynccontextmanager
async def served(**settings: Any) -> AsyncIterator[Running]:
    """``serve()`` with the demo tasks on 127.0.0.1:0 for the block; then its shutdown."""
    stop = trio.Event()
    config = QueueConfig(workers=1, shutdown_timeout=0.5)
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(
                serve, demo_registry, config, ServerSettings(port=0, **settings), stop=stop))
            try:
                yield Running(url, int(url.rsplit(":", 1)[1]))
            finally:
                stop.set()


async def enqueued(srv: Running, **headers: str) -> int:
    """Jobs the server has taken (asked with an answered Host)."""
    async with srv.client() as client:
        response = await client.get("/metrics", headers=headers)
        assert response.status_code == 200, response.text
        count: int = response.json()["enqueued"]
        return count


def browser(host: str, site: str = "same-origin") -> dict[str, str]:
    """The headers a browser sends with a fetch() POST from a page at http://HOST."""
    return {"host": host, "origin": f"http://{host}", "sec-fetch-site": site}


# ---------------------------------------------------------------------------- the Host check


async def test_dns_rebinding_gets_400_and_enqueues_nothing() -> None:
    """The reproduction of issue 14: no token, Host and Origin of the rebound name."""
    async with served() as srv, srv.client() as client:
        host = f"{EVIL}:{srv.port}"
        response = await client.post("/jobs", json={"task": "echo"}, headers=browser(host))
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error.startswith("host: ")
        assert host in error
        assert "--allowed-hosts" in error
        assert response.headers["connection"] == "close"
        # Reads are refused as well: the page learns nothing about the queue's jobs.
        for path in ("/jobs", "/metrics", "/openapi.json", "/jobs/x", "/nowhere"):
            assert (await client.get(path, headers={"host": host})).status_code == 400, path
        assert await enqueued(srv) == 0


async def test_a_host_in_allowed_hosts_is_answered() -> None:
    async with served(allowed_hosts="queue.example.com, other.example") as srv, \
            srv.client() as client:
        for host in (f"queue.example.com:{srv.port}", "QUEUE.Example.com.", "other.example"):
            response = await client.post("/jobs", json={"task": "echo"}, headers=browser(host))
            assert response.status_code == 202, (host, response.text)
        refused = await client.post("/jobs", json={"task": "echo"},
                                    headers=browser(f"{EVIL}:{srv.port}"))
        assert refused.status_code == 400
        assert await enqueued(srv) == 3


async def test_star_answers_any_host() -> None:
    async with served(allowed_hosts="*") as srv, srv.client() as client:
        response = await client.post("/jobs", json={"task": "echo"},
                                     headers=browser(f"{EVIL}:{srv.port}"))
        assert response.status_code == 202


async def test_healthz_answers_any_host() -> None:
    async with served() as srv, srv.client() as client:
        for host in (f"{EVIL}:{srv.port}", "10.1.2.3", "not a host"):
            response = await client.get("/healthz", headers={"host": host})
            assert response.status_code == 200, host
            assert response.json() == {"status": "ok"}
            assert (await client.get("/metrics", headers={"host": host})).status_code == 400


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("127.0.0.1", 200),  # no port: judged by the name
        ("127.0.0.1:{port}", 200),
        ("127.0.0.1:1", 200),  # another port: still the name that counts
        ("localhost", 200),
        ("LocalHost:{port}", 200),
        ("localhost.:{port}", 200),
        ("[::1]", 200),
        ("[::1]:{port}", 200),
        ("[0:0:0:0:0:0:0:1]:{port}", 200),
        ("10.0.0.1:{port}", 400),  # an IP literal, but not the bind address
        ("[::2]:{port}", 400),
        ("rebind.evil.example", 400),
        ("localhost.evil.example:{port}", 400),
        ("127.0.0.1.nip.io:{port}", 400),
        ("::1", 400),  # an IPv6 address must be in brackets
        ("localhost:http", 400),
        ("localhost:{port}:1", 400),
        ("[::1", 400),
        ("[localhost]", 400),
        ("", 400),
        ("local host", 400),
    ],
)
async def test_host_forms(host: str, status: int) -> None:
    async with served() as srv, srv.client() as client:
        value = host.format(port=srv.port)
        response = await client.get("/metrics", headers={"host": value})
        assert response.status_code == status, (value, response.text)
        if status == 400:
            assert response.json()["error"].startswith("host: ")


async def test_bind_address_by_name_is_answered() -> None:
    async with served(host="localhost") as srv, srv.client() as client:
        assert (await client.get("/metrics", headers={"host": "localhost"})).status_code == 200
        assert (await client.get("/metrics", headers={"host": EVIL})).status_code == 400


async def test_two_host_headers_are_refused() -> None:
    async with served() as srv:
        status, _, body, closed = await raw_exchange(
            srv.port, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: %s\r\n\r\n"
            % EVIL.encode())
        assert status == 400
        assert "more than one" in json.loads(body)["error"]
        assert closed


@pytest.mark.parametrize(
    ("target", "host", "status"),
    [
        # RFC 9112 3.2.2: a server must accept the absolute form, and judge the request
        # by the target's authority, the received Host ignored.
        ("http://127.0.0.1:{port}/metrics", "127.0.0.1:{port}", 200),
        ("HTTP://localhost:{port}/metrics?format=json", EVIL, 200),
        ("http://127.0.0.1:{port}", "127.0.0.1", 200),  # path "/": the dashboard
        ("http://" + EVIL + "/metrics", "127.0.0.1:{port}", 400),  # no bypass either way
        ("http://" + EVIL + ":{port}/jobs", "127.0.0.1:{port}", 400),
        ("http://user@127.0.0.1:{port}/metrics", "127.0.0.1:{port}", 400),
        ("http://127.0.0.1:99999/metrics", "127.0.0.1:{port}", 400),
        ("ftp://127.0.0.1/metrics", "127.0.0.1:{port}", 404),  # another scheme: no route
    ],
)
async def test_an_absolute_form_target_is_routed_and_judged_by_its_authority(
        target: str, host: str, status: int) -> None:
    async with served() as srv:
        port = srv.port
        got, _, body, _ = await raw_exchange(port, (
            f"GET {target.format(port=port)} HTTP/1.1\r\nHost: {host.format(port=port)}"
            "\r\nConnection: close\r\n\r\n").encode())
        assert got == status, body
        if status == 200:
            assert (b"<!doctype html>" if target.endswith("}") else b'"enqueued"') in body
        if status == 400:
            error = json.loads(body)["error"]
            assert error.startswith(("host: ", "target: ")), error
            assert EVIL not in target or EVIL in error


async def test_an_absolute_form_target_is_judged_in_http_1_0_and_opens_a_websocket(
        ) -> None:
    """HTTP/1.0 needs no Host: the URL's host is judged all the same."""
    async with served() as srv:
        got, _, body, _ = await raw_exchange(
            srv.port, b"GET http://%s/metrics HTTP/1.0\r\n\r\n" % EVIL.encode())
        assert got == 400, body
        assert EVIL in json.loads(body)["error"]
        got, _, body, _ = await raw_exchange(
            srv.port, b"GET http://127.0.0.1:%d/metrics HTTP/1.0\r\n\r\n" % srv.port)
        assert got == 200, body
        kind, message = await websocket(
            srv.port, f"127.0.0.1:{srv.port}",
            target=f"http://127.0.0.1:{srv.port}/events?snapshot=true")
        assert kind == "message", message
        assert json.loads(message)["type"] == "metrics"
        kind, closed = await websocket(
            srv.port, f"127.0.0.1:{srv.port}", target=f"http://{EVIL}/events")
        assert kind == "closed", closed
        assert EVIL in closed[1], closed


# ---------------------------------------------------------------------------- cross-site


@pytest.mark.parametrize("token", [None, "s3cret"])
async def test_cross_site_post_403_with_or_without_a_token(token: str | None) -> None:
    async with served(token=token) as srv, srv.client() as client:
        host = f"127.0.0.1:{srv.port}"
        auth = {"authorization": f"Bearer {token}"} if token else {}
        for with_token in (auth, {}):
            for path in ("/jobs", "/jobs/x/cancel", "/jobs/x/retry"):
                response = await client.post(path, json={"task": "echo"}, headers={
                    **browser(host, site="cross-site"), **with_token})
                assert response.status_code == 403, (path, with_token, response.text)
                assert "cross-site" in response.json()["error"]
                assert response.headers["connection"] == "close"
        # The same request from the server's own page, or typed by hand, is taken.
        for site in ("same-origin", "none"):
            response = await client.post("/jobs", json={"task": "echo"},
                                         headers={**browser(host, site=site), **auth})
            assert response.status_code == 202, (site, response.text)
        # Reads change nothing and stay open to a cross-site fetch (which cannot read
        # the answer without CORS, and this API sends none).
        response = await client.get("/metrics", headers={
            **browser(host, site="cross-site"), **auth})
        assert response.status_code == 200
        assert "access-control-allow-origin" not in response.headers
        assert await enqueued(srv, **auth) == 2


async def test_same_origin_browser_post_is_answered() -> None:
    async with served() as srv, srv.client() as client:
        for host in (f"127.0.0.1:{srv.port}", f"localhost:{srv.port}", f"[::1]:{srv.port}"):
            response = await client.post("/jobs", json={"task": "echo"}, headers=browser(host))
            assert response.status_code == 202, (host, response.text)


async def test_origin_of_another_site_is_still_403() -> None:
    """The Origin check stays: a browser that sends no Sec-Fetch-Site is caught by it."""
    async with served() as srv, srv.client() as client:
        response = await client.post("/jobs", json={"task": "echo"}, headers={
            "host": f"127.0.0.1:{srv.port}", "origin": "http://evil.example"})
        assert response.status_code == 403
        assert await enqueued(srv) == 0


# ---------------------------------------------------------------------------- bodies


async def raw_exchange(port: int, data: bytes) -> tuple[int, dict[str, str], bytes, bool]:
    """Send ``data``, read one response; ``closed``: the server then ended the connection.

    Only ``data`` is sent: if the server waited for a body, this would time out.
    """
    with trio.fail_after(LIMIT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(data)
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = await stream.receive_some(65536)
                assert chunk, f"closed before a response: {buf!r}"
                buf += chunk
            head, _, rest = buf.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers["content-length"])
            while len(rest) < length:
                chunk = await stream.receive_some(65536)
                assert chunk
                rest += chunk
            body, extra = rest[:length], rest[length:]
            assert not extra
            try:
                closed = await stream.receive_some(65536) == b""
            except trio.BrokenResourceError:  # a reset is a close as well
                closed = True
            return status, headers, body, closed


@pytest.mark.parametrize(
    ("host", "extra", "status"),
    [
        ("127.0.0.1:{port}", "authorization: Bearer wrong\r\n", 401),
        ("127.0.0.1:{port}", "", 401),
        (EVIL + ":{port}", "authorization: Bearer s3cret\r\n", 400),
        ("127.0.0.1:{port}", "authorization: Bearer s3cret\r\nsec-fetch-site: cross-site\r\n",
         403),
    ],
)
async def test_refusals_come_before_the_body_and_close(host: str, extra: str, status: int
                                                       ) -> None:
    """A 100 MB body is declared and none of it sent: the refusal comes at once, with
    ``connection: close``, and the server ends the connection."""
    async with served(token="s3cret") as srv:
        head = (f"POST /jobs HTTP/1.1\r\nHost: {host.format(port=srv.port)}\r\n"
                f"content-type: application/json\r\ncontent-length: 100000000\r\n{extra}\r\n")
        got, headers, body, closed = await raw_exchange(srv.port, head.encode())
        assert got == status, body
        assert headers["connection"] == "close"
        assert "error" in json.loads(body)
        assert closed


# ---------------------------------------------------------------------------- websocket


async def websocket(port: int, host: str, target: str = "/events?snapshot=true"
                    ) -> tuple[str, Any]:
    """Open ``/events`` with ``Host: host`` (and a matching Origin, as a page would).

    Returns ``("message", text)`` for the first message, ``("closed", (code, reason))``
    if the server closed first, or ``("rejected", status)``.
    """
    ws = WSConnection(ConnectionType.CLIENT)
    with trio.fail_after(LIMIT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(ws.send(Request(
                host=host, target=target, extra_headers=[(b"origin", f"http://{host}".encode())]
            )))
            while True:
                data = await stream.receive_some(65536)
                ws.receive_data(data or None)
                for event in ws.events():
                    if isinstance(event, AcceptConnection):
                        continue
                    if isinstance(event, RejectConnection):
                        return "rejected", event.status_code
                    if isinstance(event, Message):
                        return "message", event.data
                    if isinstance(event, CloseConnection):
                        return "closed", (event.code, event.reason)
                assert data, "the server hung up without a close frame"


async def test_websocket_with_a_bad_host_is_refused() -> None:
    async with served() as srv:
        kind, got = await websocket(srv.port, f"127.0.0.1:{srv.port}")
        assert kind == "message"
        assert json.loads(got)["type"] == "metrics"
        kind, got = await websocket(srv.port, f"{EVIL}:{srv.port}")
        assert kind == "closed", got
        code, reason = got
        assert code == 1008
        assert reason.startswith("host: ")
        assert EVIL in reason


# ---------------------------------------------------------------------------- connections


async def test_max_connections_reaches_the_http_server() -> None:
    """Two websockets hold both connections of ``max_connections=2``: a third connection
    is answered 503 at once (the HTTP server's rule when every connection is busy)."""
    async with served(max_connections=2) as srv:
        url = f"ws://127.0.0.1:{srv.port}/events?snapshot=true"
        async with open_websocket_url(url) as first, open_websocket_url(url) as second:
            for ws in (first, second):
                with trio.fail_after(LIMIT):
                    assert json.loads(await ws.get_message())["type"] == "metrics"
            with trio.fail_after(LIMIT):
                stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
                async with stream:
                    answer = b""
                    while chunk := await stream.receive_some(65536):
                        answer += chunk
            assert answer.startswith(b"HTTP/1.1 503 "), answer
            assert b"2 connections" in answer


# ---------------------------------------------------------------------------- CLI


def options(argv: list[str], env: dict[str, str]) -> Any:
    return serve_options(build_parser().parse_args(["serve", *argv]), env)[2]


def test_cli_allowed_hosts_and_max_connections() -> None:
    settings = options([], {})
    assert (settings.allowed_hosts, settings.max_connections) == ((), 1000)
    env = {"TRIOQUEUE_ALLOWED_HOSTS": "a.example,B.example.", "TRIOQUEUE_MAX_CONNECTIONS": "50"}
    settings = options([], env)
    assert settings.allowed_hosts == ("a.example", "b.example")
    assert settings.max_connections == 50
    settings = options(["--allowed-hosts", "queue.example.com,[::1],10.0.0.5",
                        "--max-connections", "7"], env)
    assert settings.allowed_hosts == ("queue.example.com", "::1", "10.0.0.5")
    assert settings.max_connections == 7
    assert options(["--allowed-hosts", "*"], {}).allowed_hosts == ("*",)


@pytest.mark.parametrize(
    ("argv", "env", "needles"),
    [
        (["--allowed-hosts", "a.example,b.example:8080"], {},
         ["--allowed-hosts", "'b.example:8080'", "port"]),
        ([], {"TRIOQUEUE_ALLOWED_HOSTS": "*.example.com"},
         ["TRIOQUEUE_ALLOWED_HOSTS", "'*.example.com'"]),
        (["--allowed-hosts", "http://a.example"], {}, ["'http://a.example'"]),
        (["--max-connections", "0"], {}, ["--max-connections"]),
        ([], {"TRIOQUEUE_MAX_CONNECTIONS": "lots"}, ["TRIOQUEUE_MAX_CONNECTIONS"]),
    ],
)
def test_cli_bad_hosts_and_connections_are_usage_errors(
    argv: list[str], env: dict[str, str], needles: list[str]
) -> None:
    with pytest.raises(UsageError) as err:
        options(argv, env)
    for needle in needles:
        assert needle in str(err.value)


SLOW = ("expected seconds > 0, at most 2147483 (about 24.8 days: TCP_USER_TIMEOUT holds "
        "milliseconds in a C int), got ")


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        # Each names the one that was wrong (all four were named, whichever it was), by
        # its flag or by the variable it came from.
        (["--max-body", "0"], {}, "--max-body: expected an integer >= 1, got 0"),
        ([], {"TRIOQUEUE_EVENT_BUFFER": "0"},
         "TRIOQUEUE_EVENT_BUFFER: expected an integer >= 1, got 0"),
        ([], {"TRIOQUEUE_MAX_CONNECTIONS": "-1"},
         "TRIOQUEUE_MAX_CONNECTIONS: expected an integer >= 1, got -1"),
        (["--event-buffer", "-2"], {"TRIOQUEUE_MAX_BODY": "0"},
         "TRIOQUEUE_MAX_BODY: expected an integer >= 1, got 0"),
        (["--slow-client-timeout", "0"], {}, f"--slow-client-timeout: {SLOW}0.0"),
        # What TCP_USER_TIMEOUT cannot take was a traceback once the port was bound.
        (["--slow-client-timeout", "nan"], {}, f"--slow-client-timeout: {SLOW}nan"),
        (["--slow-client-timeout", "inf"], {}, f"--slow-client-timeout: {SLOW}inf"),
        (["--slow-client-timeout", "2147484"], {}, f"--slow-client-timeout: {SLOW}2147484.0"),
        ([], {"TRIOQUEUE_SLOW_CLIENT_TIMEOUT": "1e9"},
         f"TRIOQUEUE_SLOW_CLIENT_TIMEOUT: {SLOW}1000000000.0"),
    ],
)
def test_cli_a_bad_limit_is_named_by_its_flag_or_variable(
    argv: list[str], env: dict[str, str], message: str
) -> None:
    with pytest.raises(UsageError) as err:
        options(argv, env)
    assert str(err.value) == message


def test_cli_slow_client_timeout_up_to_what_tcp_user_timeout_holds() -> None:
    assert options(["--slow-client-timeout", "2147483"], {}).slow_client_timeout == 2147483
    assert options([], {"TRIOQUEUE_SLOW_CLIENT_TIMEOUT": "0.5"}).slow_client_timeout == 0.5
    with pytest.raises(ValueError, match=r"^slow_client_timeout: expected seconds > 0"):
        ServerSettings(slow_client_timeout=float("inf"))
    with pytest.raises(ValueError, match=r"^event_buffer: expected an integer >= 1, got 0$"):
        ServerSettings(event_buffer=0)


async def test_a_slow_client_timeout_under_a_millisecond_is_one_not_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """0.0004 s was ``int(0.4)``: 0 ms, which sets no TCP_USER_TIMEOUT at all."""
    import socket

    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if option is None:
        pytest.skip("no TCP_USER_TIMEOUT here")
    bound: list[trio.SocketListener] = []
    open_listeners = trio.open_tcp_listeners

    async def recorded(*args: Any, **kwargs: Any) -> list[trio.SocketListener]:
        listeners = await open_listeners(*args, **kwargs)
        bound.extend(listeners)
        return listeners

    monkeypatch.setattr(trio, "open_tcp_listeners", recorded)
    stop = trio.Event()
    settings = ServerSettings(port=0, slow_client_timeout=0.0004)
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve, demo_registry, QueueConfig(), settings,
                                        stop=stop))
            assert [listener.socket.getsockopt(socket.IPPROTO_TCP, option)
                    for listener in bound] == [1]
            stop.set()


def test_cli_has_no_http_server_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["serve", "--http-server", "hypercorn"])
    assert exited.value.code == 2
    assert "--http-server" in capsys.readouterr().err


def test_the_environment_variable_of_the_old_server_choice_is_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    options([], {"TRIOQUEUE_HTTP_SERVER": "hypercorn"})
    assert "TRIOQUEUE_HTTP_SERVER is no longer read" in caplog.text


@pytest.fixture(params=["flag", "env"])
def served_cli(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "flag":
        with running_server("--allowed-hosts", "queue.example.com") as srv:
            yield srv.url
    else:
        with running_server(env={"TRIOQUEUE_ALLOWED_HOSTS": "queue.example.com"}) as srv:
            yield srv.url


def test_trioqueue_serve_allowed_hosts(served_cli: str) -> None:
    port = served_cli.rsplit(":", 1)[1]
    with httpx.Client(base_url=served_cli, timeout=LIMIT) as client:
        ok = client.post("/jobs", json={"task": "echo"},
                         headers=browser(f"queue.example.com:{port}"))
        assert ok.status_code == 202, ok.text
        refused = client.post("/jobs", json={"task": "echo"}, headers=browser(f"{EVIL}:{port}"))
        assert refused.status_code == 400
        assert client.get("/metrics").json()["enqueued"] == 1


def test_a_misspelt_variable_is_named_with_the_one_meant(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``TRIOQUEUE_REDIS=redis://...`` (``--redis`` is ``TRIOQUEUE_REDIS_URL``) was ignored
    without a word: the node ran in memory."""
    env = {"TRIOQUEUE_REDIS": "redis://127.0.0.1:6379/0", "TRIOQUEUE_WORKRES": "3",
           "TRIOQUEUE_PORT": "8081"}
    _, config, _ = serve_options(build_parser().parse_args(["serve"]), env)
    assert config.redis_url is None
    assert ("TRIOQUEUE_REDIS is not a trioqueue setting and is ignored; did you mean "
            "TRIOQUEUE_REDIS_URL?") in caplog.text
    assert "TRIOQUEUE_WORKRES is not a trioqueue setting and is ignored; did you mean " \
        "TRIOQUEUE_WORKERS?" in caplog.text
    assert "TRIOQUEUE_PORT" not in caplog.text


def test_every_variable_the_source_reads_is_known() -> None:
    """:data:`KNOWN_ENV` (what is not warned of) is every ``TRIOQUEUE_*`` name the package
    source reads, and no other."""
    import re
    from pathlib import Path

    import trioqueue
    from trioqueue.testing import KNOWN_ENV

    root = Path(trioqueue.__file__).parent
    named = set()
    for path in root.rglob("*.py"):
        named |= set(re.findall(r"TRIOQUEUE_[A-Z][A-Z_]*[A-Z]", path.read_text()))
    named -= {"TRIOQUEUE_HTTP_SERVER"}  # named only to say it is no longer read
    assert named == KNOWN_ENV
