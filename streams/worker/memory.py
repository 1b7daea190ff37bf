"""Where the worker bounds its memory outside RocksDB (`streams.worker.tables` bounds that).

- librdkafka prefetches: each consumer queues up to `queued.max.messages.kbytes` (64 MiB
  by default) of records ahead of the application, and a fetch response may overshoot
  that by `fetch.max.bytes` (50 MiB by default). The input consumer and each restore
  consumer get the bounds below: a fraction of a second of work at the rates they run.
  A partition whose queue is full is fetched again after `fetch.queue.backoff.ms`,
  1 s by default: with queues this short, that would stall the reader every time.
- glibc's malloc keeps what is freed for reuse, in an arena per thread that allocates
  (up to 8 per core: librdkafka's threads, RocksDB's, the restore and commit threads),
  and after the first large block (a fetch response, a write batch) is freed it stops
  giving such blocks their own mapping (its dynamic mmap threshold, up to 32 MiB): they
  come from the arenas, whose freed memory is not given back while anything above it
  lives. Measured at 200,000 stored predictions: 491 MiB of arenas, 395 MiB of it free.
  `bound_malloc` caps the arenas and fixes the threshold, at the worker's start.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# The input consumer: about half a second of input at the worker's rate (1 KB records).
INPUT_QUEUE = {
    "queued.max.messages.kbytes": 8 * 1024,
    "fetch.max.bytes": 4 * 1024**2,
    "fetch.queue.backoff.ms": 10,
}
# Each restore consumer (two restore at once): the restore writes what it reads at once.
RESTORE_QUEUE = {
    "queued.max.messages.kbytes": 8 * 1024,
    "fetch.max.bytes": 8 * 1024**2,
    "max.partition.fetch.bytes": 4 * 1024**2,
    "fetch.queue.backoff.ms": 10,
}
MALLOC_ARENAS = 2
# Blocks this large or larger get their own mapping, returned to the system when freed.
MMAP_THRESHOLD = 256 * 1024
# glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def bound_malloc(arenas: int = MALLOC_ARENAS, mmap_threshold: int = MMAP_THRESHOLD) -> bool:
    """Cap glibc's malloc arenas and fix its mmap threshold; False where that is not glibc.

    As `MALLOC_ARENA_MAX` and `MALLOC_MMAP_THRESHOLD_` would, but set by the worker
    itself; either variable set in the environment is left to glibc. Call it before the
    threads start: a thread keeps the arena it was given. What it costs: threads that
    allocate at the same moment wait for each other's arena lock, and each large block
    is mapped, faulted in and unmapped every time (up to about 10 % on the per-input
    path, measured on a loaded machine: BENCHMARKS.md, 2026-12-02 16:33).
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    done = True
    for variable, option, value in (
        ("MALLOC_ARENA_MAX", _M_ARENA_MAX, arenas),
        ("MALLOC_MMAP_THRESHOLD_", _M_MMAP_THRESHOLD, mmap_threshold),
    ):
        if variable not in os.environ:
            done = bool(mallopt(option, value)) and done
    return done
