"""The worker's memory is bounded however many partitions it holds (issue 9: 1M rows in 400 MB).

- Every table database shares one block cache of `BLOCK_CACHE_BYTES` (its memtables are
  charged to it): the cache a worker reserves does not grow with its partitions.
- Every consumer the worker makes bounds what librdkafka prefetches.
- glibc's malloc is bounded at the worker's start: a large block freed is given back.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, ClassVar, cast

import pytest
from test_processing import NoKafka

from streams.settings import Settings
from streams.worker import consumer, restore
from streams.worker.memory import INPUT_QUEUE, RESTORE_QUEUE
from streams.worker.metrics import Metrics
from streams.worker.outbox import Outbox
from streams.worker.tables import BLOCK_CACHE_BYTES, Tables

pytestmark = pytest.mark.unit

# librdkafka's defaults: 64 MiB queued per consumer, fetches of up to 50 MiB on top.
DEFAULT_QUEUE_BYTES = 64 * 1024**2
PREFETCH_BUDGET = 16 * 1024**2  # what one consumer may hold ahead of the worker, at most


def test_every_database_shares_one_bounded_block_cache(tmp_path: Path) -> None:
    tables = Tables(tmp_path, "test", cast(Outbox, NoKafka()))
    partitions = [tables.open(p) for p in range(8)]
    try:
        for number, partition in enumerate(partitions):
            for i in range(500):  # rows of different sizes per partition
                partition.state.db[f"key-{i}".encode()] = b"v" * 100 * (number + 1)
            partition.state.db.flush()
            for i in range(0, 500, 3):
                partition.state.db.get(f"key-{i}".encode())
        databases = [table.db for partition in partitions for table in partition.tables]
        assert len(databases) == 16
        capacities = {db.property_int_value("rocksdb.block-cache-capacity") for db in databases}
        assert capacities == {BLOCK_CACHE_BYTES}
        # One cache: every database reports the same usage, the whole cache's.
        usages = {db.property_int_value("rocksdb.block-cache-usage") for db in databases}
        assert usages == {tables.rocks.cache.get_usage()}
        assert 0 < tables.rocks.cache.get_usage() <= BLOCK_CACHE_BYTES
    finally:
        tables.close_all()


class Recorded:
    """Stands in for confluent-kafka's Consumer: keeps the configuration it was given."""

    configs: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, config: dict[str, Any]) -> None:
        Recorded.configs.append(config)

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError("not connected")  # the restore stops at its first call

    def close(self) -> None:
        return None


def prefetch_bytes(config: dict[str, Any]) -> int:
    """What librdkafka may queue ahead of the application, at most, under `config`."""
    queued = int(config.get("queued.max.messages.kbytes", DEFAULT_QUEUE_BYTES // 1024)) * 1024
    return queued + int(config.get("fetch.max.bytes", 50 * 1024**2))


def test_every_consumer_of_the_worker_bounds_its_prefetch(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    Recorded.configs = []
    monkeypatch.setattr(consumer, "Consumer", Recorded)
    monkeypatch.setattr(restore, "Consumer", Recorded)
    consumer.InputConsumer(Settings.from_env({}), {"predictions": "predictions"}, Metrics())
    tables = Tables(tmp_path, "test", cast(Outbox, NoKafka()))
    try:
        with pytest.raises(RuntimeError, match="not connected"):
            restore.restore_partition({}, tables.open(0), restore.threading.Event(), print)
    finally:
        tables.close_all()
    input_config, restore_config = Recorded.configs
    assert input_config.items() >= INPUT_QUEUE.items()
    assert restore_config.items() >= RESTORE_QUEUE.items()
    for config in Recorded.configs:
        assert prefetch_bytes(config) <= PREFETCH_BUDGET
        # librdkafka refuses a fetch.max.bytes below message.max.bytes (1,000,000).
        assert int(config["fetch.max.bytes"]) >= Settings().max_record_bytes


BLOCK_FREED_THEN_SMALLER = """
import ctypes, sys
from streams.worker.memory import bound_malloc

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "bounded":
    assert bound_malloc()
libc.free(libc.malloc(8 * 1024**2))  # a fetch response, say: mapped, then unmapped
before = libc.mallinfo2().hblks
block = libc.malloc(1024**2)  # smaller, but above the bound's threshold
print(libc.mallinfo2().hblks - before)
libc.free(block)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
@pytest.mark.parametrize(("mode", "mapped"), [("bounded", 1), ("default", 0)])
def test_a_large_block_keeps_its_own_mapping_once_malloc_is_bounded(mode: str, mapped: int) -> None:
    # glibc raises its mmap threshold to the size of a mapped block freed: the next such
    # blocks come from the arenas, which keep them once freed (see streams.worker.memory).
    script = textwrap.dedent(BLOCK_FREED_THEN_SMALLER)
    out = subprocess.run(
        [sys.executable, "-c", script, mode], capture_output=True, text=True, check=True
    ).stdout
    assert int(out) == mapped
