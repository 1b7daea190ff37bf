"""The worker's web pages: /health, /stats (the feedback series) and /metrics."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol

import faust

from streams.errors import StreamsError
from streams.settings import Settings
from streams.stats.query import StatsQuery, format_series, no_match, read_feedback_stats
from streams.worker.metrics import Metrics

# `GET /stats` reads `feedback-stats` to its end on each request, in a thread.
STATS_PAGE_TIMEOUT = 10.0


class WebHost(Protocol):
    """What the pages need of the worker (`streams.worker.app.JoinApp`)."""

    app: faust.App
    metrics: Metrics
    settings: Settings

    def crashed(self) -> list[str]:
        """What crashed, with the reasons."""
        ...

    def recovered(self) -> bool:
        """True once the tables are rebuilt and the agent runs."""
        ...


def install_pages(join_app: WebHost) -> None:
    """Serve /health, /stats and /metrics on the faust app's web server."""
    metrics = join_app.metrics
    app = join_app.app

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        crashed = join_app.crashed()
        if crashed:
            return web.json({"status": "crashed", "reasons": crashed}, status=503)
        ready = join_app.recovered() and not app.should_stop
        return web.json({"status": "ok" if ready else "starting"}, status=200 if ready else 503)

    @app.page("/stats")
    async def stats_page(web: Any, request: Any) -> Any:
        try:
            query = StatsQuery.from_params(request.query)
        except ValueError as error:
            return web.json({"error": str(error)}, status=400)
        loop = asyncio.get_running_loop()
        try:
            latest = await loop.run_in_executor(
                None, partial(read_feedback_stats, join_app.settings, STATS_PAGE_TIMEOUT)
            )
            nothing = no_match(latest.records, query.application, query.field)
            series = query.series(latest.records, datetime.now(UTC))
        except StreamsError as error:
            return web.json({"error": str(error)}, status=503)
        except ValueError as error:
            return web.json({"error": str(error)}, status=400)
        if nothing is not None:
            return web.json({"error": nothing}, status=404)
        if query.format == "json":
            return web.json(series.as_dict())
        return web.text(format_series(series, query.format))

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        # aiohttp refuses a charset here; the exposition format is ASCII.
        return web.bytes(metrics.render(), content_type="text/plain; version=0.0.4")
