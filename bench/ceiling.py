"""The benchmark's ceiling: the worker's faust app with an agent that does nothing.

`python -m bench.ceiling` (with the worker's STREAMS_* variables) consumes
both input topics exactly as the worker does (same faust settings, one event at a time)
but only counts the records. Once it has read every record the topics held when it
started, it prints `{"records": ..., "seconds": ...}` (from the first record read to
the last) and exits. No join, no table, no output: what it reaches is what faust's
consumer path alone allows on this machine, so no worker built on it can go faster.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import orjson

from bench.proc import records_in
from streams.settings import Settings
from streams.topics import FEEDBACK, PREDICTIONS
from streams.worker.app import RAW, faust_app


def main() -> int:
    """Count the input records through faust; print the figures; exit."""
    settings = Settings.from_env()
    topics = [settings.topic(PREDICTIONS), settings.topic(FEEDBACK)]
    expected = records_in(settings, topics)
    app = faust_app(settings)
    seen = {"records": 0, "first": 0.0}

    async def count(stream: Any) -> None:
        async for _ in stream.events():
            if not seen["records"]:
                seen["first"] = time.monotonic()
            seen["records"] += 1
            if seen["records"] >= expected:
                seconds = time.monotonic() - seen["first"]
                print(orjson.dumps({"records": seen["records"], "seconds": seconds}).decode())
                sys.stdout.flush()
                os._exit(0)

    app.agent(app.topic(*topics, **RAW), name="count")(count)
    from faust.worker import Worker

    Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False).execute_from_commandline()
    return 1


if __name__ == "__main__":
    sys.exit(main())
