"""Helpers shared by the benchmarks: medians with their spread, resident memory, store size.

Nothing here imports dtrio or a peer, so a measuring subprocess imports only what it measures.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import sys
import time


def new_db(tmp: str, name: str) -> str:
    return os.path.join(tmp, f"{name}-{time.monotonic_ns()}.sqlite3")


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> float:
    """(max - min) / median, the variation between runs as a fraction of the median."""
    if len(values) < 2:
        return 0.0
    mid = statistics.median(values)
    return (max(values) - min(values)) / mid if mid else 0.0


def rss_bytes() -> int:
    """This process's resident set size (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def sqlite_used_bytes(path: str) -> int:
    """Bytes a SQLite file holds in used pages, once its WAL is checkpointed into it."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        return (pages - free) * page
    finally:
        conn.close()


def markdown_table(head: list[str], rows: list[list[object]]) -> list[str]:
    """`head` and `rows` as the lines of a Markdown table, each column padded to its widest."""
    cells = [[str(c) for c in row] for row in [head, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
             for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return lines


def python_banner() -> str:
    return f"Python {sys.version.split()[0]}, {os.cpu_count()} cores"


def calibrate() -> float:
    """Milliseconds a fixed pure-Python loop takes (best of 5): how fast this machine was
    while a figure was taken, to compare runs taken while other work shared it."""
    import time

    best = float("inf")
    for _ in range(5):
        begin = time.perf_counter()
        total = 0
        for i in range(200_000):
            total += i * i % 7
        best = min(best, time.perf_counter() - begin)
    return best * 1000
