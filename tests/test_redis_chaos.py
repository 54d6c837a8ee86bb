"""Node processes on one Redis queue, attacked: fairness across nodes, a node stopped past
its lease, every connection killed, Redis itself killed and restarted (real processes, a
real Redis; tests/redis_node_child.py is the node)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from functools import partial
from pathlib import Path
from typing import IO, TypeVar

import trio

from trioqueue import JobStatus, Priority
from trioqueue.testing import FairPicker, NewJob, RedisState, RedisUnavailable, StoredJob, connect

from .redis_util import REDIS_URL, admin, delete_queue, free_port, kill_clients, unique

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


class Node:
    """One node process: ``python -m tests.redis_node_child``, its stdout a pipe (lines
    ``ready``, ``stopped <id>``, ``done <id>``), its stderr a file (warnings)."""

    def __init__(self, url: str, queue: str, runs: Path, err: Path, *, workers: int = 3,
                 lease: float = 2.0, prefetch: int = 0, start: Path | None = None) -> None:
        """``start``: the node opens the queue only once that file exists."""
        self.err = err
        self.err_file = err.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.redis_node_child", url, queue, str(workers),
             str(runs), str(lease), str(prefetch), *(() if start is None else (str(start),))],
            cwd=ROOT, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, stderr=self.err_file,
        )
        self.pid = self.proc.pid

    async def line(self, timeout: float = 30.0) -> str:
        """The next line of its stdout (the thread reading it is abandoned on timeout, and
        ends when the process is killed)."""
        stdout = self.proc.stdout
        assert stdout is not None
        with trio.fail_after(timeout):
            got = await trio.to_thread.run_sync(stdout.readline, abandon_on_cancel=True)
        return got.decode()

    async def ready(self) -> None:
        line = await self.line()
        assert line == "ready\n", (line, self.err.read_text())

    def kill(self) -> None:
        """Kill by its own pid (if still running) and release its pipes."""
        kill_proc(self.proc)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.err_file.close()


async def stop_all(nodes: list[Node]) -> None:
    """SIGTERM every node at once, then each must exit with status 0."""
    for n in nodes:
        n.proc.send_signal(signal.SIGTERM)
    for n in nodes:
        assert await trio.to_thread.run_sync(n.proc.wait, 30) == 0, _read(n.err)


def kill_proc(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()  # SIGKILL ends a SIGSTOPped process too
    proc.wait()


@asynccontextmanager
async def nodes_on() -> AsyncIterator[list[Node]]:
    """Every node appended to the list is killed (by pid) at the end, whatever happens."""
    nodes: list[Node] = []
    try:
        yield nodes
    finally:
        for n in nodes:
            n.kill()


@asynccontextmanager
async def queue_state(queue: str, url: str = REDIS_URL) -> AsyncIterator[RedisState]:
    """This test's own client (its own connection name, so that killing the nodes'
    connections spares it) on ``queue``, reading its events (so that every event is
    written: :func:`events`); the queue's keys are deleted at the end."""
    try:
        async with connect(url, client_name=unique("test")) as client:
            state = RedisState(client, queue)
            await state.read_events("test", 3600)
            yield state
    finally:
        if url == REDIS_URL:
            with trio.CancelScope(shield=True):
                async with admin() as a:
                    await delete_queue(a, queue)


async def until(check: Callable[[], Awaitable[T | None]], timeout: float = 30.0,
                interval: float = 0.01) -> T:
    """Poll ``check`` (another process' progress cannot be awaited) until it returns
    something not ``None``; :class:`RedisUnavailable` counts as not yet."""
    with trio.fail_after(timeout):
        while True:
            with suppress(RedisUnavailable):
                got = await check()
                if got is not None:
                    return got
            await trio.sleep(interval)


def run_lines(runs: Path) -> list[tuple[int, str, int]]:
    """The runs file: (pid, job id, attempt) per handler start."""
    if not runs.exists():
        return []
    out = []
    for line in runs.read_text().splitlines():
        pid, job_id, attempt = line.split()
        out.append((int(pid), job_id, int(attempt)))
    return out


async def all_finished(state: RedisState, ids: list[str]) -> dict[str, tuple[JobStatus, int,
                                                                              object]]:
    """(status, attempts, result) of every job of ``ids``, once all are terminal (polled
    on the queue's totals first: one call, where reading every job is hundreds)."""

    async def check() -> dict[str, tuple[JobStatus, int, object]] | None:
        counts = await state.counts()
        if sum(counts.total(t) for t in ("completed", "failed", "cancelled")) < len(ids):
            return None
        out = {}
        for job_id in ids:
            sj = await state.get(job_id)
            assert sj is not None, job_id
            if not sj.job.status.terminal:
                return None
            out[job_id] = (sj.job.status, sj.job.attempts, sj.job.result)
        return out

    return await until(check)


async def completed_at_least(state: RedisState, n: int) -> None:
    async def check() -> bool | None:
        return True if (await state.counts()).total("completed") >= n else None

    await until(check)


async def events(state: RedisState) -> list[tuple[str, str, str, int]]:
    """(type, job id, node, attempt) of every event of the queue, in ``seq`` order."""
    reader = await state.event_reader(from_start=True)
    out: list[tuple[str, str, str, int]] = []
    seqs: list[int] = []
    while True:
        batch = await reader.read(count=1000, block_ms=1)
        if not batch.events:
            break
        assert batch.dropped == 0
        out += [(e.type, e.job_id, e.node, e.attempt) for e in batch.events]
        seqs += [e.seq for e in batch.events]
    assert seqs == list(range(1, len(seqs) + 1))
    return out


# ---------------------------------------------------------------------------- fairness


async def test_fairness_is_exact_across_two_nodes_with_prefetch_0(tmp_path: Path) -> None:
    """A backlog of 50 high, 20 medium and 10 low jobs, enqueued before any node runs; two
    nodes of 3 workers, prefetch 0, claim it together.  Their claims, in the order Redis
    made them (the ``started`` events' queue-wide sequence), are exactly what one process'
    FairPicker picks over the same backlog (10:3:1 while all three have work), whichever
    node made each claim; both nodes took part (each held 3 jobs at a gate before any job
    could finish)."""
    queue = unique("fair")
    runs = tmp_path / "runs.txt"
    gate = tmp_path / "gate"
    backlog = {Priority.HIGH: 50, Priority.MEDIUM: 20, Priority.LOW: 10}
    model: list[list[str]] = [[], [], []]
    batch = []
    for prio, count in backlog.items():
        for i in range(count):
            job_id = f"{prio.name.lower()}{i:03d}"
            model[prio].append(job_id)
            batch.append(NewJob.build(job_id, "record", {"gate": str(gate), "in": None},
                                      priority=prio))
    picker = FairPicker()
    expected: list[str] = []
    while (pick := picker.pick(model)) >= 0:
        expected.append(model[pick].pop(0))
    assert "".join(i[0] for i in expected[:14]) == "hhmhhlhhmhhhmh"
    async with queue_state(queue) as state, nodes_on() as nodes:
        await state.enqueue(batch)
        for i in range(2):
            nodes.append(Node(REDIS_URL, queue, runs, tmp_path / f"{i}.err"))
        for n in nodes:
            await n.ready()
        first = await until(lambda: _lines_at_least(runs, 6))  # 3 held at the gate by each
        assert Counter(pid for pid, _, _ in first) == {n.pid: 3 for n in nodes}
        gate.touch()
        done = await all_finished(state, expected)
        claims = [(job_id, node) for kind, job_id, node, _ in await events(state)
                  if kind == "started"]
        await stop_all(nodes)
    assert [job_id for job_id, _ in claims] == expected
    assert len({node for _, node in claims}) == 2
    assert set(done.values()) == {(JobStatus.COMPLETED, 1, nodes[0].pid),
                                  (JobStatus.COMPLETED, 1, nodes[1].pid)}
    assert Counter(job_id for _, job_id, _ in run_lines(runs)) == Counter(expected)


async def _lines_at_least(runs: Path, n: int) -> list[tuple[int, str, int]] | None:
    await trio.lowlevel.checkpoint()
    lines = run_lines(runs)
    return lines if len(lines) >= n else None


# ---------------------------------------------------------------------------- SIGSTOP


async def test_a_node_stopped_past_its_lease_has_its_late_ack_refused(tmp_path: Path) -> None:
    """Node A (lease 1 s) runs two jobs: ``hang`` (never returns in A) and ``late``
    (returns once a gate file of its process exists).  A is SIGSTOPped; node B starts and
    reaps both after A's lease: it completes ``hang`` and holds ``late`` (attempt 2) at its
    own gate.  A's gate is opened and A SIGCONTinued: ``late`` returns in A's first step,
    and its outcome, under the old fence, is refused while B still runs the job (A logs
    it); ``hang`` is cancelled in A when its renewal reports the lease lost.  Then B
    finishes ``late``: each job is COMPLETED once, by B, at attempt 2, counted once."""
    queue = unique("stop")
    runs = tmp_path / "runs.txt"
    gate = str(tmp_path / "gate-{pid}")
    async with queue_state(queue) as state, nodes_on() as nodes:
        a = Node(REDIS_URL, queue, runs, tmp_path / "a.err", lease=1.0)
        nodes.append(a)
        await a.ready()
        await state.enqueue([NewJob.build("hang", "record", {"hang_in": a.pid}),
                             NewJob.build("late", "record", {"gate": gate, "in": None})])
        started = await until(lambda: _lines_at_least(runs, 2))
        assert sorted(started) == [(a.pid, "hang", 1), (a.pid, "late", 1)]
        os.kill(a.pid, signal.SIGSTOP)
        b = Node(REDIS_URL, queue, runs, tmp_path / "b.err", lease=1.0)
        nodes.append(b)
        await b.ready()
        assert await all_finished(state, ["hang"]) == {"hang": (JobStatus.COMPLETED, 2, b.pid)}
        hang = await state.get("hang")
        assert hang is not None
        b_node = hang.owner
        await until(lambda: _lines_at_least(runs, 4))  # B runs late, attempt 2, at its gate
        assert sorted(run_lines(runs)) == sorted([(a.pid, "hang", 1), (a.pid, "late", 1),
                                                  (b.pid, "hang", 2), (b.pid, "late", 2)])
        open_gate(gate, a.pid)
        os.kill(a.pid, signal.SIGCONT)
        assert {await a.line(), await a.line()} == {"done late\n", "stopped hang\n"}
        # A's late outcome goes out once and is refused (A logs it when the answer
        # arrives); taken, it would finish the job B still runs.
        refused = ("refused, the job's lease moved on (it was taken by another node): "
                   "late (completed)")

        async def answered() -> StoredJob | None:
            sj = await state.get("late")
            assert sj is not None
            return sj if refused in _read(a.err) or sj.job.status.terminal else None

        sj = await until(answered)
        assert (sj.job.status, sj.job.attempts, sj.owner) == (JobStatus.PROCESSING, 2, b_node)
        assert refused in _read(a.err)
        open_gate(gate, b.pid)
        assert await b.line() == "done late\n"
        done = await all_finished(state, ["hang", "late"])
        await stop_all(nodes)
        err = a.err.read_text()
        counts = await state.counts()
        log = await events(state)
    assert done == {"hang": (JobStatus.COMPLETED, 2, b.pid),
                    "late": (JobStatus.COMPLETED, 2, b.pid)}
    assert "job hang: this node lost its lease; stopping it" in err
    assert "job late: this node lost its lease" not in err  # refused by Redis' fence
    assert counts.total("completed") == 2
    # The reaper's two requeues, then B's two completions at attempt 2; nothing from A.
    assert Counter((kind, job_id, attempt) for kind, job_id, _, attempt in log
                   if kind in ("recovered", "completed")) == Counter(
        [("recovered", "hang", 1), ("recovered", "late", 1), ("completed", "hang", 2),
         ("completed", "late", 2)])
    assert len(run_lines(runs)) == 4


async def test_a_node_stopped_past_its_lease_starts_none_of_its_prefetched_jobs(
    tmp_path: Path,
) -> None:
    """Node A (1 worker, prefetch 4, lease 1 s) holds its worker with ``first`` (at a gate)
    and has ``p0``..``p3`` claimed in its buffer (and has told Redis it holds them) when
    it is SIGSTOPped.  Node B reaps and completes all five: ``first`` at attempt 2, the
    four A never started at attempt 1.  Once A is SIGCONTinued (its gate open),
    ``first``'s outcome is refused, and A must start none of ``p0``..``p3``: their leases
    ended during the stop (A's own clock says so), another node has run them."""
    queue = unique("stopbuf")
    runs = tmp_path / "runs.txt"
    gate = str(tmp_path / "gate-{pid}")
    buffered = [f"p{i}" for i in range(4)]
    async with queue_state(queue) as state, nodes_on() as nodes:
        a = Node(REDIS_URL, queue, runs, tmp_path / "a.err", workers=1, lease=1.0,
                 prefetch=4)
        nodes.append(a)
        await a.ready()
        await state.enqueue([NewJob.build("first", "record", {"gate": gate, "in": a.pid})])
        await until(lambda: _lines_at_least(runs, 1))
        first = await state.get("first")
        assert first is not None
        await state.enqueue([NewJob.build(j, "record", None) for j in buffered])

        async def all_claimed_by_a() -> bool | None:
            for j in buffered:
                sj = await state.get(j)
                assert sj is not None
                if (sj.job.status, sj.owner) != (JobStatus.PROCESSING, first.owner):
                    return None
            return True

        await until(all_claimed_by_a)

        async def all_marked_held() -> bool | None:
            async with admin() as r:
                marks = await r.hgetall(state.key("held"))
            return True if all(j in marks for j in buffered) else None

        await until(all_marked_held)
        assert len(run_lines(runs)) == 1  # claimed, not started: the worker is busy
        os.kill(a.pid, signal.SIGSTOP)
        b = Node(REDIS_URL, queue, runs, tmp_path / "b.err", lease=1.0)
        nodes.append(b)
        await b.ready()
        done = await all_finished(state, ["first", *buffered])
        assert done == {"first": (JobStatus.COMPLETED, 2, b.pid),
                        **{j: (JobStatus.COMPLETED, 1, b.pid) for j in buffered}}
        beat = await heartbeat_of(state, first.owner)
        open_gate(gate, a.pid)
        os.kill(a.pid, signal.SIGCONT)
        assert await a.line() == "done first\n"
        for _ in range(2):  # A renews, then beats: two beats, and its renewal was handled
            beat = await until(partial(_beat_after, state, first.owner, beat))
        await stop_all(nodes)
    started_in_a = sorted(j for pid, j, _ in run_lines(runs) if pid == a.pid)
    assert started_in_a == ["first"]
    # Said once for the four, not once a job (an outage's whole buffer at once).
    said = [line for line in _read(tmp_path / "a.err").splitlines() if "not started" in line]
    assert len(said) == 1, said
    assert said[0].endswith("4 job(s) not started, their lease ended before a worker here "
                            "took them (this node could not renew it): p0, p1, p2, p3"), said


async def heartbeat_of(state: RedisState, node: str | None) -> float:
    """A node's last heartbeat (Redis' clock)."""
    (beat,) = [n.heartbeat for n in await state.nodes() if n.node == node]
    return beat


async def _beat_after(state: RedisState, node: str | None, after: float) -> float | None:
    beat = await heartbeat_of(state, node)
    return beat if beat > after else None


def open_gate(template: str, pid: int) -> None:
    Path(template.replace("{pid}", str(pid))).touch()


def _read(path: Path) -> str:
    return path.read_text()


# ---------------------------------------------------------------------------- CLIENT KILL


async def kill_node_connections(state: RedisState) -> int:
    """CLIENT KILL every connection of this queue's live nodes (found by their client
    names, ``trioqueue:<node>``); other users of the Redis are left alone."""
    names = [f"trioqueue:{n.node}" for n in await state.nodes()]
    assert names
    killed = 0
    async with admin() as a:
        for name in names:
            killed += await kill_clients(a, name)
    return killed


async def every_node_connected(state: RedisState) -> bool | None:
    """True once every live node of the queue has a connection to Redis."""
    names = {f"trioqueue:{n.node}" for n in await state.nodes()}
    async with admin() as a:
        have = {dict(c).get("name") for c in await a.client_list()}
    return True if names <= have else None


async def test_nodes_recover_when_every_connection_is_killed(tmp_path: Path) -> None:
    """Two nodes (lease 2 s) run 150 short jobs; three times mid-run, and six times while
    both are idle in their blocking wait, every connection of both is killed.  The nodes
    reconnect by themselves, and every job runs once and ends COMPLETED: an outcome or a
    claim whose reply was lost is re-sent (by coredis, or by the fetcher half a second
    later) under the same fence or request id, which Redis applies once; only an outcome
    kept from Redis longer than the lease could run its job again, and a kill costs far
    less."""
    queue = unique("kill")
    runs = tmp_path / "runs.txt"
    async with queue_state(queue) as state, nodes_on() as nodes:
        for i in range(2):
            nodes.append(Node(REDIS_URL, queue, runs, tmp_path / f"{i}.err"))
        for n in nodes:
            await n.ready()
        ids = [f"j{i:03d}" for i in range(150)]
        await state.enqueue([NewJob.build(j, "record", {"sleep": 0.005}) for j in ids])
        for done in (30, 70, 110):
            await completed_at_least(state, done)
            # (Each node back from the last kill first: on a busy machine one may still be
            # reconnecting when the other has run 40 more jobs.)
            await until(lambda: every_node_connected(state))
            assert await kill_node_connections(state) >= 2
        await all_finished(state, ids)
        # Idle: both blocked in BLPOP.  Kill them there (they wait there again), then give
        # them work.
        async def both_waiting() -> bool | None:
            names = {f"trioqueue:{x.node}" for x in await state.nodes()}
            async with admin() as a:
                clients = [dict(c) for c in await a.client_list()]
            waiting = [c for c in clients if c.get("name") in names and c.get("cmd") == "blpop"]
            return True if len(waiting) >= 2 else None

        for _ in range(6):  # more than a lane's connections: a lost slot would add up
            await until(both_waiting)
            assert await kill_node_connections(state) >= 2
        more = [f"k{i:02d}" for i in range(20)]
        await state.enqueue([NewJob.build(j, "record", {"sleep": 0.005}) for j in more])
        done_all = await all_finished(state, ids + more)
        await stop_all(nodes)
    pids = {n.pid for n in nodes}
    assert {(s, r in pids) for s, _, r in done_all.values()} == {(JobStatus.COMPLETED, True)}
    ran = Counter(job_id for _, job_id, _ in run_lines(runs))
    assert ran == Counter(ids + more)  # each once
    # A claim whose reply every re-send lost leaves its jobs leased to nobody: they run
    # once, after the lease, at attempt 2.  Nothing else counts a second attempt.
    assert {a for _, a, _ in done_all.values()} <= {1, 2}


# ---------------------------------------------------------------------------- Redis restart


class OwnRedis:
    """A redis-server of this test's own on 127.0.0.1, AOF fsynced at every write, in
    ``dir``; killed (by pid) and restarted on the same port and files.  ``persist=False``:
    no AOF and no RDB snapshot (``--save ''``), so a restart starts empty (Redis lost its
    data); ``port``: that port rather than any free one."""

    def __init__(self, dir: Path, *, persist: bool = True, port: int | None = None) -> None:
        self.dir = dir
        self.persist = persist
        self.port = free_port() if port is None else port
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_file: IO[bytes] | None = None

    async def start(self) -> None:
        self.log_file = (self.dir / "redis.log").open("ab")
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port),
             *(("--appendonly", "yes", "--appendfsync", "always") if self.persist
               else ("--appendonly", "no")),
             "--save", "", "--dir", str(self.dir), "--protected-mode", "yes"],
            stdin=subprocess.DEVNULL, stdout=self.log_file, stderr=subprocess.STDOUT,
        )

        proc = self.proc
        assert proc is not None

        async def answers() -> bool | None:
            if proc.poll() is not None:  # (the port was taken, say)
                raise RuntimeError(f"redis-server on port {self.port} exited: "
                                   f"{(self.dir / 'redis.log').read_text()[-2000:]}")
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", self.port)
            except OSError:
                return None
            async with stream:
                await stream.send_all(b"PING\r\n")
                reply = await stream.receive_some(64)
                if reply != b"+PONG\r\n":  # -LOADING
                    return None
                # This test's own server, not another one on the port it had before.
                await stream.send_all(b"INFO server\r\n")
                info = b""
                while b"process_id:" not in info or not info.split(
                        b"process_id:", 1)[1].count(b"\r\n"):
                    got = await stream.receive_some(4096)
                    if not got:
                        return None
                    info += got
            pid = int(info.split(b"process_id:", 1)[1].split(b"\r\n", 1)[0])
            if pid != proc.pid:
                raise RuntimeError(f"port {self.port} answers for another redis-server")
            return True

        await until(answers, timeout=10)

    def kill(self) -> None:
        if self.proc is not None:
            kill_proc(self.proc)
            self.proc = None
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None


async def test_a_redis_restart_with_aof_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """Two nodes (lease 2 s) on a redis-server of the test's own (AOF, fsync always, an
    empty directory) run 60 jobs; a third of the way the server is killed with SIGKILL
    and started again on its files.  The nodes reconnect by themselves, finish those and
    20 jobs enqueued after the restart: every enqueued job ends COMPLETED, every one that
    was COMPLETED before the kill still is (same attempt, same result), and each ran
    once (an outcome or claim cut off by the kill is sent again under the same fence or
    request id; a claim whose every send failed leaves its jobs to run once, after the
    lease, at attempt 2)."""
    queue = unique("aof")
    runs = tmp_path / "runs.txt"
    data = tmp_path / "redis"
    data.mkdir()
    server = OwnRedis(data)
    try:
        await server.start()
        async with queue_state(queue, server.url) as state, nodes_on() as nodes:
            for i in range(2):
                nodes.append(Node(server.url, queue, runs, tmp_path / f"{i}.err"))
            for n in nodes:
                await n.ready()
            ids = [f"j{i:03d}" for i in range(60)]
            await state.enqueue([NewJob.build(j, "record", {"sleep": 0.005}) for j in ids])
            await completed_at_least(state, 20)
            before = {}
            for j in ids:
                sj = await state.get(j)
                assert sj is not None
                if sj.job.status is JobStatus.COMPLETED:
                    before[j] = (sj.job.status, sj.job.attempts, sj.job.result)
            server.kill()
            await server.start()
            more = [f"k{i:02d}" for i in range(20)]  # taken after the restart
            await until(lambda: state.enqueue(
                [NewJob.build(j, "record", {"sleep": 0.005}) for j in more]))
            done = await all_finished(state, ids + more)
            await stop_all(nodes)
    finally:
        server.kill()
    assert len(before) >= 20
    assert {j: done[j] for j in before} == before
    pids = {n.pid for n in nodes}
    assert {(s, r in pids) for s, _, r in done.values()} == {(JobStatus.COMPLETED, True)}
    assert Counter(job_id for _, job_id, _ in run_lines(runs)) == Counter(ids + more)
    assert {a for _, a, _ in done.values()} <= {1, 2}  # 2: a claim whose reply was lost
