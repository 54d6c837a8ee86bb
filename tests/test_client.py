"""``trioqueue.client`` against a real ``trioqueue serve``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio

import trioqueue
from tests.test_server import Server, running_server
from trioqueue import JobStatus
from trioqueue.client import Client, EventStreamClosed, Unauthorized


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
