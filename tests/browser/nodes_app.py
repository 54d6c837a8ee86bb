"""The task of the Redis nodes in tests/browser/test_dashboard_nodes.py
(``--app tests.browser.nodes_app:registry``).

- ``hold``: payload ``{"port": p}``.  Connects to the test on 127.0.0.1:``p``, says
  ``<job id> <pid>`` (so the test knows which process, which node, runs it), and holds
  its worker until the test closes the connection.  No retries: a job that cannot reach
  the test fails.
"""

from __future__ import annotations

import os

import trio

from trioqueue import Job, TaskRegistry

registry = TaskRegistry()


@registry.task(name="hold", max_retries=0)
async def hold(job: Job) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", int(job.payload["port"]))
    async with stream:
        await stream.send_all(f"{job.id} {os.getpid()}\n".encode())
        while await stream.receive_some():  # until the test lets it go (closes)
            pass
