"""`streams worker`: check the settings and topics, then run the faust worker in the foreground.

Before anything is built, what would otherwise fail deep inside faust is checked and
refused in one line naming the setting: the broker answers, the data directory is this
worker's alone (a lock file holding the PID, released when the process ends, however it
ends), and the web port is free.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import sys
from pathlib import Path

from streams.errors import StreamsError
from streams.settings import Settings
from streams.topics import check_broker, check_copartitioned, create_topics
from streams.worker.memory import bound_malloc
from streams.worker.tables import changelog_specs

log = logging.getLogger(__name__)

LOCK_FILE = "streams-worker.lock"
# The open lock file: the lock lasts as long as this process (the descriptor is not inherited).
_held: list[int] = []


class SettingInUse(StreamsError):
    """Another process holds what this worker needs (its data directory, its web port)."""

    reason = "in_use"


def lock_data_dir(data_dir: Path) -> None:
    """Take the data directory for this process, or raise naming it and the PID holding it."""
    path = data_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        problem = f"cannot open {path}: {error.strerror}"
        raise StreamsError(f"STREAMS_DATA_DIR={data_dir}: {problem}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise SettingInUse(
            f"STREAMS_DATA_DIR={data_dir} is in use by another worker (pid {holder}): "
            "give each worker process its own STREAMS_DATA_DIR"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held.append(fd)


def check_web_port(host: str, port: int) -> None:
    """Raise naming STREAMS_WEB_PORT when something already listens on it (at `host`)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp binds
            probe.bind((host, port))
    except OSError as error:
        raise SettingInUse(
            f"STREAMS_WEB_PORT={port} cannot be used on STREAMS_WEB_HOST={host} "
            f"({error.strerror or error}): give each worker process its own STREAMS_WEB_PORT"
        ) from None


def prepare(settings: Settings) -> int:
    """Create missing topics and refuse co-partitioning mismatches; return the partition count.

    The tables' changelogs are created here too, partitioned like the inputs.
    """
    created = create_topics(settings)
    partitions = check_copartitioned(settings)
    created += create_topics(settings, changelog_specs(settings.app_id, partitions))
    if created:
        log.info("topics_created names=%s", ",".join(created))
    return partitions


def run_worker(settings: Settings) -> int:
    """Run one worker until SIGTERM/SIGINT; return the exit status."""
    malloc_bounded = bound_malloc()  # before any client starts a thread
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        print(f"streams worker: STREAMS_DATA_DIR={settings.data_dir}: {error}", file=sys.stderr)
        return 2
    try:
        lock_data_dir(settings.data_dir)
        check_web_port(settings.web_host, settings.web_port)
        check_broker(settings)
    except StreamsError as error:
        print(f"streams worker: {error}", file=sys.stderr)
        return 1
    try:
        partitions = prepare(settings)
    except StreamsError as error:
        print(f"streams worker: {error}", file=sys.stderr)
        return 2
    from faust.worker import Worker

    from streams.worker.app import JoinApp

    join_app = JoinApp(
        settings if partitions == settings.partitions else _with_partitions(settings, partitions)
    )
    log.info(
        "worker_starting app_id=%s partitions=%d data_dir=%s web_port=%d guarantee=%s "
        "malloc_bounded=%s",
        settings.app_id,
        partitions,
        settings.data_dir,
        settings.web_port,
        settings.processing_guarantee,
        malloc_bounded,
    )
    worker = Worker(
        join_app.app,
        loglevel=settings.log_level,
        quiet=True,
        redirect_stdouts=False,
        override_logging=True,
    )
    worker.execute_from_commandline()
    return 0


def _with_partitions(settings: Settings, partitions: int) -> Settings:
    # Existing topics decide: a worker started with another STREAMS_PARTITIONS follows them.
    from dataclasses import replace

    log.warning("partitions_from_topics configured=%d topics=%d", settings.partitions, partitions)
    return replace(settings, partitions=partitions)
