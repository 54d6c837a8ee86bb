"""trioqueue's benchmark harness: ``python -m benchmarks`` (see docs/benchmarks.md).

Every measurement runs in a fresh subprocess (:mod:`benchmarks.child`), so one system's
memory and GC state cannot skew another's, and asyncio-based peers never share a process
with Trio.  The parent (:mod:`benchmarks.cli`) plans the cases, runs the repetitions
interleaved, and prints one table with every figure also as a ratio to the bare-Trio
baseline measured in the same run.
"""
