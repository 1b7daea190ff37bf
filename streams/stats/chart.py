"""The chart of a feedback series: % positive (or the mean) per bucket, a line per version."""

from __future__ import annotations

import io
import math

from streams.errors import StreamsError
from streams.records import parse_ts
from streams.settings import format_duration
from streams.stats.query import StatsRow, StatsSeries, Version


def plot_png(series: StatsSeries) -> bytes:
    """A PNG line chart of % positive per bucket, one line per version when split.

    When no row has a boolean value it draws the mean instead, and the axis says so.
    Needs matplotlib (the `stats` extra); draws off-screen, so it works headless.
    """
    try:
        import numpy as np
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise StreamsError("charts need matplotlib: pip install 'streams[stats]'") from None
    positive = any(row.positive_pct is not None for row in series.rows)
    lines: dict[Version, list[StatsRow]] = {}
    for row in series.rows:
        lines.setdefault(row.version if series.by_version else None, []).append(row)
    # A Figure on its own Agg canvas, not pyplot: no global state, safe in a web worker.
    figure = Figure(figsize=(10, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    drawn = 0
    for version, rows in lines.items():
        values = [row.positive_pct if positive else row.mean for row in rows]
        if all(value is None for value in values):
            continue  # a version without booleans (or numbers) has nothing to draw
        axes.plot(
            # datetime64 is UTC to matplotlib (its default timezone).
            np.array([parse_ts(row.bucket) for row in rows], dtype="datetime64[ms]"),
            [math.nan if value is None else value for value in values],
            marker="o",
            label=_version_label(version) if series.by_version else series.application,
        )
        drawn += 1
    what = "% positive" if positive else f"mean of {series.field}"
    axes.set_ylabel(what)
    axes.set_xlabel(f"bucket start (UTC), every {format_duration(series.every)}")
    if positive:
        axes.set_ylim(-2, 102)  # room for the markers at 0 and 100
    axes.set_title(f"{series.application}: {what} ({series.field})")
    axes.grid(alpha=0.3)
    if series.by_version and drawn:
        axes.legend()
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()


def _version_label(version: Version) -> str:
    return "no version" if version is None else f"version {version}"
