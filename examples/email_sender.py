"""A background email sender: many workers speaking real SMTP to a local mail server.

The mail server is aiosmtpd (an asyncio SMTP server) running in a thread of its own on
127.0.0.1, standing in for your relay.  Like a real relay it refuses mail now and then:

- greylisting: the first attempt for some recipients gets ``451 try again later``, and
  so does any retry that comes back too soon;
- a connection limit: clients beyond ``MAX_SESSIONS`` at once are greeted with
  ``421 too busy`` and disconnected.

A 4xx reply is temporary, so the handler raises and trioqueue retries the job with
exponential backoff.  A 5xx reply is permanent (``550 no such user``): retrying cannot
help, so the handler returns a "bounced" result instead of raising.

The handler is an ``async def``: each of the many workers is a Trio task waiting on the
network, not a thread.  The SMTP client is a small one written on Trio streams below.

    python examples/email_sender.py            # 400 messages
    python examples/email_sender.py --quick    # 60 messages, a few seconds
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import threading
import time
from collections import Counter
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from typing import Any

import trio

import trioqueue

MAX_SESSIONS = 12
GREYLIST_SECONDS = 0.3


# --------------------------------------------------------------------- the mail server


class Relay:
    """aiosmtpd handler: a mailbox, greylisting, a connection limit and unknown users."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.mailbox: list[dict[str, Any]] = []
        self.first_seen: dict[str, float] = {}
        self.sessions = 0
        self.refused: Counter[str] = Counter()

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        if address.startswith("nobody"):
            return "550 5.1.1 No such user"
        if address.startswith("grey"):  # greylisted recipients
            now = time.monotonic()
            with self.lock:
                first = self.first_seen.setdefault(address, now)
                if now - first < GREYLIST_SECONDS:
                    self.refused["451 greylisted"] += 1
                    return "451 4.7.1 Greylisted, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.mailbox.append({"to": envelope.rcpt_tos, "size": len(envelope.content)})
        return "250 Message accepted for delivery"


def start_relay(relay: Relay) -> tuple[int, Any]:
    """Run aiosmtpd in a thread on 127.0.0.1; return (port, stop)."""
    from aiosmtpd.smtp import SMTP

    class LimitedSMTP(SMTP):
        """Greets at most MAX_SESSIONS clients at once; the others get 421 and goodbye."""

        over_limit = False

        def connection_made(self, transport: Any) -> None:
            with relay.lock:
                self.over_limit = relay.sessions >= MAX_SESSIONS
                if self.over_limit:
                    relay.refused["421 too busy"] += 1
                else:
                    relay.sessions += 1
            if self.over_limit:
                transport.write(b"421 4.3.2 Too many connections, try again later\r\n")
                transport.close()
            else:
                super().connection_made(transport)

        def connection_lost(self, exc: Exception | None) -> None:
            if not self.over_limit:
                with relay.lock:
                    relay.sessions -= 1
                super().connection_lost(exc)

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # port 0: the OS picks a free port, no race
    port = sock.getsockname()[1]
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(
            loop.create_server(lambda: LimitedSMTP(relay, hostname="relay.local"), sock=sock)
        )
        ready.set()
        loop.run_forever()
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()

    thread = threading.Thread(target=serve, name="smtp-relay", daemon=True)
    thread.start()
    ready.wait(10)

    def stop() -> None:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)

    return port, stop


# --------------------------------------------------------------------- a Trio SMTP client


class SMTPReply(Exception):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code} {text}")
        self.code = code


async def smtp_send(host: str, port: int, sender: str, rcpt: str, msg: EmailMessage) -> str:
    """Deliver one message: EHLO, MAIL, RCPT, DATA, QUIT.  Raises SMTPReply on 4xx/5xx."""
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        buf = bytearray()

        async def reply() -> tuple[int, str]:
            lines = []
            while True:
                while b"\r\n" not in buf:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        raise ConnectionError("the server closed the connection")
                    buf.extend(chunk)
                line, _, rest = bytes(buf).partition(b"\r\n")
                buf[:] = rest
                lines.append(line[4:].decode())
                if line[3:4] != b"-":  # "250-..." continues, "250 ..." ends the reply
                    code = int(line[:3])
                    if code >= 400:
                        raise SMTPReply(code, " ".join(lines))
                    return code, " ".join(lines)

        async def command(line: str) -> tuple[int, str]:
            await stream.send_all(line.encode() + b"\r\n")
            return await reply()

        await reply()  # 220 greeting
        await command("EHLO sender.local")
        await command(f"MAIL FROM:<{sender}>")
        await command(f"RCPT TO:<{rcpt}>")
        await command("DATA")
        body = msg.as_bytes(policy=SMTP_POLICY)
        body = b"\r\n".join(b"." + ln if ln.startswith(b".") else ln for ln in body.split(b"\r\n"))
        _, text = await command(body.rstrip(b"\r\n").decode() + "\r\n.")
        await command("QUIT")
        return text


# --------------------------------------------------------------------- the job


registry = trioqueue.TaskRegistry()
RELAY: dict[str, Any] = {}


@registry.task(max_retries=8, timeout=10.0)
async def send_email(job: trioqueue.Job) -> dict[str, Any]:
    msg = EmailMessage()
    msg["From"] = "news@shop.example"
    msg["To"] = job.payload["to"]
    msg["Subject"] = job.payload["subject"]
    msg["Message-ID"] = f"<{job.id}@shop.example>"
    msg.set_content(job.payload["body"])
    try:
        reply = await smtp_send(
            "127.0.0.1", RELAY["port"], "news@shop.example", job.payload["to"], msg
        )
    except SMTPReply as exc:
        if exc.code >= 500:  # permanent: a retry cannot help, so do not raise
            return {"status": "bounced", "reply": str(exc), "attempts": job.attempts}
        raise  # 4xx: temporary, let trioqueue retry with backoff
    return {"status": "delivered", "reply": reply, "attempts": job.attempts}


async def main(quick: bool) -> None:
    count = 60 if quick else 400
    relay = Relay()
    RELAY["port"], stop_relay = start_relay(relay)
    print(f"SMTP relay (aiosmtpd) listening on 127.0.0.1:{RELAY['port']}")
    config = trioqueue.QueueConfig(
        workers=16, capacity=count, retry_base=0.1, retry_factor=2.0, retry_max=2.0
    )
    started = trio.current_time()
    try:
        async with trioqueue.open_queue(registry, config) as q:
            jobs = []
            for i in range(count):
                kind = "nobody" if i % 25 == 7 else "grey" if i % 5 == 0 else "user"
                jobs.append(await q.enqueue("send_email", {
                    "to": f"{kind}{i}@example.org",
                    "subject": f"Your order #{1000 + i} has shipped",
                    "body": f"Hello,\n\nOrder #{1000 + i} is on its way.\n.\nBye.\n",
                }))
            done = [await q.wait(job.id) for job in jobs]
            m = q.metrics()
    finally:
        stop_relay()
    elapsed = trio.current_time() - started
    outcomes = Counter(
        d.result["status"] if d.result else d.status.value for d in done
    )
    retried = [d for d in done if d.result and d.result["attempts"] > 1]
    print(f"{count} emails in {elapsed:.1f} s with {config.workers} workers: "
          + ", ".join(f"{n} {k}" for k, n in sorted(outcomes.items())))
    print(f"the relay refused {sum(relay.refused.values())} attempts "
          f"({', '.join(f'{n} {k}' for k, n in relay.refused.items())}); "
          f"trioqueue retried {m.retried} times, "
          f"{len(retried)} messages needed more than one attempt")
    print(f"mailbox on the relay: {len(relay.mailbox)} messages")
    for d in retried[:3]:
        print(f"  delivered: {d.payload['to']} on attempt {d.attempts}: {d.result['reply']}")
    for d in done:
        if d.status is trioqueue.JobStatus.FAILED:
            print(f"  FAILED: {d.payload['to']} after {d.attempts} attempts: {d.error}")
    bounced = [d for d in done if d.result and d.result["status"] == "bounced"]
    for d in bounced[:3]:
        print(f"  bounced: {d.payload['to']}: {d.result['reply']}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (a few seconds)")
    trio.run(main, parser.parse_args().quick)
