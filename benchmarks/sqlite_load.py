"""A second process that writes job rows into its own SQLite store at a fixed rate:
``python -m benchmarks.sqlite_load ROWS_PER_S DIR``.

For the ``noop/ceiling/await-1-beside-sqlite`` case: the SQLite work of the store
(the same :meth:`SqliteStore.write_values`, 4,096-row statements of completed no-op jobs)
on the machine's other core, with no GIL shared with the measured event loop.  It
builds every row before it starts, prints ``ready``, writes until stdin closes, then
prints the rows it wrote and its CPU seconds as JSON.
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from pathlib import Path

from trioqueue._store.sqlite import SqliteStore

CHUNK = 4096
CHUNKS = 64  # distinct chunks of new ids; after these, the same ids are upserted again


def main(argv: list[str]) -> int:
    rate = float(argv[1])
    store = SqliteStore.open(Path(argv[2]) / "load.db")
    nan = math.nan
    chunks = []
    for c in range(CHUNKS):
        values: list[object] = []
        for i in range(c * CHUNK, (c + 1) * CHUNK):
            values.extend((f"{i:032x}", "noop", "null", 1, "completed", 1, 3, nan,
                           1.7e9, nan, 1.7e9 + i, 1.7e9 + i, "", "", "", ""))
        chunks.append(tuple(values))
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    print("ready", flush=True)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    written = 0
    while not stop.is_set():
        store.write_values(chunks[(written // CHUNK) % CHUNKS])
        written += CHUNK
        wait = t0 + written / rate - time.perf_counter()
        if wait > 0:
            stop.wait(wait)
    elapsed = time.perf_counter() - t0
    store.close()
    print(json.dumps({"rows": written, "rows_per_s": written / elapsed,
                      "cpu_s": time.process_time() - cpu0}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
