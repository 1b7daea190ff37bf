"""The `streams` command: worker, topics create, tail, stats, versions."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from confluent_kafka import KafkaException

from streams.errors import ConfigError, StreamsError
from streams.settings import Settings, parse_duration
from streams.topics import DEADLETTER, FEEDBACK_STATS, JOINED, UNMATCHED
from streams.versions_cli import add_parser as add_versions_parser


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streams", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("worker", help="run one join worker in the foreground")
    topics = commands.add_parser("topics", help="manage the topics")
    topics_commands = topics.add_subparsers(dest="topics_command", required=True)
    topics_commands.add_parser("create", help="create every topic with the configured partitions")
    tail = commands.add_parser("tail", help="print an output topic as JSON lines")
    tail.add_argument("topic", choices=[JOINED, UNMATCHED, DEADLETTER])
    tail.add_argument("--from-beginning", action="store_true", help="start at the oldest record")
    tail.add_argument("--max", type=int, default=None, help="stop after this many records")
    tail.add_argument(
        "--timeout", type=float, default=None, help="stop after this many idle seconds"
    )
    stats = commands.add_parser("stats", help="print feedback aggregates over time, or chart them")
    stats.add_argument("--application", required=True)
    stats.add_argument("--field", required=True, help="a feedback field, e.g. thumbs_up")
    stats.add_argument(
        "--every", type=_duration, default=timedelta(hours=1), help="bucket size (default 1h)"
    )
    stats.add_argument(
        "--since", type=_duration, default=None, help="only the last 7d, 12h, ... (default: all)"
    )
    stats.add_argument("--by-version", action="store_true", help="one row per bucket and version")
    stats.add_argument("--format", choices=["table", "json", "csv"], default="table")
    stats.add_argument("--plot", type=Path, metavar="OUT.png", help="also write a PNG chart")
    stats.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for the broker (default 30)"
    )
    add_versions_parser(commands)
    return parser


def _duration(text: str) -> timedelta:
    # argparse names the option in front of this message and exits 2.
    try:
        value = parse_duration(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix(f"{error.variable}: ")) from None
    if value % timedelta(milliseconds=1):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of milliseconds")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `streams` console command."""
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as error:
        print(f"streams: bad setting {error}", file=sys.stderr)
        return 2
    # The worker logs at STREAMS_LOG_LEVEL; the other commands say only what went wrong.
    level = logging.getLevelName(settings.log_level)
    if args.command != "worker":
        level = max(level, logging.WARNING)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        if args.command == "worker":
            from streams.worker.run import run_worker

            return run_worker(settings)
        if args.command == "topics":
            return _topics_create(settings)
        if args.command == "tail":
            return _tail(settings, args.topic, args.from_beginning, args.max, args.timeout)
        if args.command == "stats":
            return _stats(settings, args)
        if args.command == "versions":
            from streams.topics import check_broker
            from streams.versions_cli import run as run_versions

            check_broker(settings)
            return run_versions(settings, args)
    except StreamsError as error:
        print(f"streams: {error}", file=sys.stderr)
        return 1
    except KafkaException as error:
        print(f"streams: Kafka refused: {error.args[0] if error.args else error}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python's exit flush of
        # stdout from failing on the closed pipe too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130
    return 2


def _topics_create(settings: Settings) -> int:
    from streams.topics import copartition_problem, create_every_topic

    counts, created = create_every_topic(settings)
    for name, partitions in counts.items():
        state = "created" if name in created else "exists"
        unit = "partition" if partitions == 1 else "partitions"
        print(f"{name}\t{partitions} {unit}\t{state}")
    sys.stdout.flush()
    problem = copartition_problem(settings, counts)
    if problem is not None:
        print(f"streams: {problem}; the worker refuses to start on them", file=sys.stderr)
        return 1
    return 0


def _tail(
    settings: Settings, topic: str, from_beginning: bool, limit: int | None, timeout: float | None
) -> int:
    from streams.sdk.consumer import read_topic
    from streams.topics import CONNECT_TIMEOUT, check_broker

    check_broker(settings)
    out = sys.stdout.buffer
    records = read_topic(
        settings,
        settings.topic(topic),
        from_beginning=from_beginning,
        idle_timeout=timeout,
        down_timeout=CONNECT_TIMEOUT,  # a broker lost while tailing ends it too
        log_level=0,  # librdkafka's own log repeats what the errors say
    )
    with closing(records):
        for count, record in enumerate(records, 1):
            out.write(orjson.dumps(record) + b"\n")
            out.flush()
            if limit is not None and count >= limit:
                break
    return 0


def _stats(settings: Settings, args: argparse.Namespace) -> int:
    from streams.stats.chart import plot_png
    from streams.stats.query import StatsQuery, format_series, no_match, read_feedback_stats
    from streams.topics import check_broker

    check_broker(settings, timeout=min(args.timeout, 10.0))
    latest = read_feedback_stats(settings, timeout=args.timeout)
    topic = settings.topic(FEEDBACK_STATS)
    if latest.skipped:
        print(f"streams: skipped {latest.skipped} unreadable record(s) in {topic}", file=sys.stderr)
    nothing = no_match(latest.records, args.application, args.field)
    if nothing is not None:
        print(f"streams: nothing matched in {topic}: {nothing}", file=sys.stderr)
        return 1
    query = StatsQuery(
        args.application, args.field, args.every, args.since, args.by_version, args.format
    )
    series = query.series(latest.records, datetime.now(UTC))
    sys.stdout.write(format_series(series, query.format))
    sys.stdout.flush()
    if args.plot is not None:
        chart = plot_png(series)
        try:
            args.plot.write_bytes(chart)
        except OSError as error:
            raise StreamsError(f"cannot write the chart to {args.plot}: {error}") from None
        print(f"streams: wrote the chart to {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
