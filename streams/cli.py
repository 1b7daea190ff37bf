"""The `streams` command: worker, topics create, tail, stats."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import orjson

from streams.errors import ConfigError, StreamsError
from streams.settings import Settings
from streams.topics import DEADLETTER, JOINED, UNMATCHED


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `streams` console command."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = Settings.from_env()
    except ConfigError as error:
        print(f"streams: bad setting {error}", file=sys.stderr)
        return 2
    try:
        if args.command == "worker":
            from streams.worker import run_worker

            return run_worker(settings)
        if args.command == "topics":
            from streams.topics import create_topics, topic_specs

            created = set(create_topics(settings))
            for spec in topic_specs(settings):
                state = "created" if spec.name in created else "exists"
                print(f"{spec.name}\t{spec.partitions} partitions\t{state}")
            return 0
        if args.command == "tail":
            return _tail(settings, args.topic, args.from_beginning, args.max, args.timeout)
    except StreamsError as error:
        print(f"streams: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


def _tail(
    settings: Settings, topic: str, from_beginning: bool, limit: int | None, timeout: float | None
) -> int:
    from streams.consumer import read_topic

    out = sys.stdout.buffer
    for count, record in enumerate(
        read_topic(
            settings, settings.topic(topic), from_beginning=from_beginning, idle_timeout=timeout
        ),
        1,
    ):
        out.write(orjson.dumps(record) + b"\n")
        out.flush()
        if limit is not None and count >= limit:
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
