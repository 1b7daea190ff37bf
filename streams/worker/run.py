"""`streams worker`: check the settings and topics, then run the faust worker in the foreground."""

from __future__ import annotations

import logging
import os
import sys

from streams.errors import StreamsError
from streams.settings import Settings
from streams.topics import check_copartitioned, create_topics
from streams.worker.tables import changelog_specs

log = logging.getLogger(__name__)


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
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        print(f"streams worker: STREAMS_DATA_DIR={settings.data_dir}: {error}", file=sys.stderr)
        return 2
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
        "worker_starting app_id=%s partitions=%d data_dir=%s web_port=%d guarantee=%s",
        settings.app_id,
        partitions,
        settings.data_dir,
        settings.web_port,
        settings.processing_guarantee,
    )
    worker = Worker(
        join_app.app,
        loglevel=os.environ.get("STREAMS_LOG_LEVEL", "INFO"),
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
