"""A CPU-bound image pipeline: Pillow in worker threads, with priorities you can see.

Each job makes a photo-sized source image (generated, so the example needs no files),
resizes it to three sizes and compresses each as JPEG.  Each job is a call of a plain
function, ``q.submit(make_renditions, width, height, seed)``: no task to register, and a
plain function runs in a worker thread; Pillow releases the GIL
while it resizes and encodes, so the threads really run in parallel.  There are as many
workers as CPUs: more would only queue up for the same cores.

Two kinds of work share the queue:

- LOW  "batch thumbnails": a big backlog enqueued at once (re-rendering a catalogue);
- HIGH "user uploads": arriving one by one while the backlog is being worked off.

The fair picker gives HIGH 10 picks for every 1 of LOW, so an upload waits only for a
worker to free up, not for the backlog; and LOW still gets its share, so the backlog
keeps moving.  The latency table at the end shows both.

    python examples/image_pipeline.py            # 400 + 40 images
    python examples/image_pipeline.py --quick    # 120 + 20 smaller images
"""

from __future__ import annotations

import argparse
import io
import os
import statistics

import trio
from PIL import Image, ImageDraw, ImageFilter

import trioqueue
from trioqueue import Priority

SIZES = (1024, 512, 160)


def make_renditions(width: int, height: int, seed: int) -> dict[str, int]:
    """Generate the 'uploaded' image, then resize and compress it to every size."""
    image = Image.effect_noise((width, height), 40 + seed % 30).convert("RGB")
    draw = ImageDraw.Draw(image)
    for k in range(12):  # some shapes, so the JPEG encoder has edges to work on
        x, y = (seed * 97 + k * 131) % width, (seed * 53 + k * 71) % height
        draw.ellipse((x, y, x + width // 4, y + height // 4),
                     fill=((seed * 40 + k * 20) % 256, (k * 60) % 256, (seed * 7) % 256))
    image = image.filter(ImageFilter.GaussianBlur(2))
    sizes = {}
    for size in SIZES:
        rendition = image.copy()
        rendition.thumbnail((size, size), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        rendition.save(out, "JPEG", quality=82, optimize=True, progressive=True)
        sizes[str(size)] = out.tell()
    return sizes


def summarize(label: str, latencies: list[float]) -> str:
    latencies = sorted(latencies)
    p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
    return (f"{label:<24} {len(latencies):>5} {statistics.median(latencies):>9.2f} "
            f"{p95:>9.2f} {latencies[-1]:>9.2f}")


async def main(quick: bool) -> None:
    workers = os.cpu_count() or 2
    batch, uploads = (120, 20) if quick else (400, 40)
    width, height = (640, 480) if quick else (1600, 1200)
    config = trioqueue.QueueConfig(workers=workers, capacity=1000)
    latency: dict[str, list[float]] = {"high": [], "low": []}
    finished: list[tuple[str, float, float]] = []  # (priority, created_at, finished_at)
    compressed = 0
    print(f"{workers} workers (one per CPU); {batch} LOW batch thumbnails enqueued at once, "
          f"{uploads} HIGH uploads arriving while they run")
    async with trioqueue.open_queue(trioqueue.TaskRegistry(), config) as q:

        async def track(job: trioqueue.Job) -> None:
            nonlocal compressed
            done = await q.wait(job.id)
            assert done.finished_at is not None, done.error
            latency[done.priority.label].append(done.finished_at - done.created_at)
            finished.append((done.priority.label, done.created_at, done.finished_at))
            compressed += sum(done.result.values())

        async with trio.open_nursery() as nursery:
            for i in range(batch):
                job = await q.submit(make_renditions, width, height, i,
                                     priority=Priority.LOW, max_retries=1, timeout=60.0)
                nursery.start_soon(track, job)
            await trio.sleep(0.5)  # the backlog is being worked on; now users upload
            for i in range(uploads):
                job = await q.submit(make_renditions, width, height, 10_000 + i,
                                     priority="high", max_retries=1, timeout=60.0)
                nursery.start_soon(track, job)
                await trio.sleep(0.1)
        m = q.metrics()
    print(f"done: {m.completed} jobs, {compressed / 1e6:.1f} MB of JPEG, "
          f"utilization {m.utilization:.0%}")
    print(f"{'latency (s), enqueue->done':<24} {'jobs':>5} {'p50':>9} {'p95':>9} {'max':>9}")
    print(summarize("HIGH  user uploads", latency["high"]))
    print(summarize("LOW   batch thumbnails", latency["low"]))
    # From the first upload to the last one done, how much of the batch got done?
    first = min(c for p, c, _ in finished if p == "high")
    last = max(f for p, _, f in finished if p == "high")
    low_in_window = sum(1 for p, _, f in finished if p == "low" and first <= f <= last)
    print(f"in the {last - first:.1f} s between the first upload and the last one done, "
          f"{uploads} uploads and {low_in_window} batch thumbnails finished: "
          f"LOW is slowed, never starved")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (a few seconds)")
    trio.run(main, parser.parse_args().quick)
