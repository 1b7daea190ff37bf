"""The benchmark's summary and table: medians per contender, ratios, and the aims of issue 9.

Ratios are the medians of each run's own ratio (side by side in one run), never ratios of
medians. Every contender's joined/s is set against the lean loop's (`REFERENCE`), and
every figure of the worker against each other contender's.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

# Contenders, in the table's order: the worker (at least once, then exactly once), the
# reference, the peers, the diagnostic.
WORKER = "worker"
WORKER_EOS = "worker-eos"
REFERENCE = "lean"
PEERS = ("kstreams", "quix")
CONTENDERS = (WORKER, WORKER_EOS, REFERENCE, *PEERS, "baseline")
# Contenders whose join promises every expected record; the peers' APIs cannot (see README).
COMPLETE_BY_DESIGN = (WORKER, WORKER_EOS, REFERENCE, "baseline")
# Contenders measured at the light rate too (`--light-rate`): the worker in both modes, and
# the reference beside them.
LIGHT = (WORKER, WORKER_EOS, REFERENCE)
# (figure, column title, format): medians per contender, and the worker's ratios.
FIGURES = (
    ("joined_per_s", "joined/s", "{:,.0f}"),
    ("completeness", "complete", "{:.1%}"),
    ("p50_ms", "p50 ms", "{:.1f}"),
    ("p99_ms", "p99 ms", "{:.1f}"),
    ("max_ms", "max ms", "{:.1f}"),
    ("cpu_s_per_1000", "CPU s/1k joins", "{:.3f}"),
    ("peak_rss_mib", "peak RSS MiB", "{:.0f}"),
    ("state_disk_mib", "state MiB", "{:.1f}"),
    ("restart_s", "restart s", "{:.1f}"),
)
AIM_LEAN_RATIO = 0.5
AIM_CPU_RATIO = 2.0
AIM_P99_MS = 50.0
AIM_EOS_RATIO = 0.7
AIM_EOS_P99_MS = 100.0
AIM_LABELS = {
    "worker_at_least_0_5x_lean": f"worker >= {AIM_LEAN_RATIO}x the lean loop's joined/s",
    "worker_cpu_at_most_2x_lean": f"worker CPU per join <= {AIM_CPU_RATIO:.0f}x the lean loop's",
    "worker_ahead_of_kstreams": "worker ahead of Kafka Streams",
    "worker_ahead_of_quix": "worker ahead of Quix Streams",
    "worker_p99_under_50_ms": f"worker p99 < {AIM_P99_MS:.0f} ms at that rate",
    "worker_p99_under_50_ms_light": f"worker p99 < {AIM_P99_MS:.0f} ms at the light rate",
    "eos_at_least_0_7x_worker": (
        f"worker-eos (exactly_once) >= {AIM_EOS_RATIO}x the worker's (at_least_once) joined/s"
    ),
    "eos_p99_under_100_ms": f"worker-eos p99 < {AIM_EOS_P99_MS:.0f} ms at that rate",
}
LATENCY_FIGURES = ("p50_ms", "p99_ms", "max_ms")


def figures(result: dict[str, Any]) -> dict[str, float]:
    """One contender's figures of one run, flat."""
    flat = {**result["throughput"], **result["latency"]}
    return {name: float(flat[name]) for name, _, _ in FIGURES}


def _median(values: list[float]) -> float:
    present = [value for value in values if not math.isnan(value)]
    return statistics.median(present) if present else math.nan


def _ratio(value: float, other: float) -> float:
    return value / other if other else math.nan


def median_ratio(runs: list[dict[str, Any]], name: str, other: str, figure: str) -> float:
    """The median over runs of `name`'s figure divided by `other`'s in the same run."""
    return _median(
        [_ratio(run[name]["figures"][figure], run[other]["figures"][figure]) for run in runs]
    )


def summarize(runs: list[dict[str, Any]], contenders: list[str]) -> dict[str, Any]:
    """Medians over runs, ratios to the lean loop, the worker's ratios, and the aims."""
    medians = {
        name: {f: _median([run[name]["figures"][f] for run in runs]) for f, _, _ in FIGURES}
        for name in contenders
    }
    to_lean = (
        {name: median_ratio(runs, name, REFERENCE, "joined_per_s") for name in contenders}
        if REFERENCE in contenders
        else {}
    )
    worker_to = (
        {
            other: {f: median_ratio(runs, WORKER, other, f) for f, _, _ in FIGURES}
            for other in contenders
            if other != WORKER
        }
        if WORKER in contenders
        else {}
    )
    ceiling = _median([run["ceiling"]["joined_per_s"] for run in runs])
    ceiling_to_lean = (
        _median(
            [
                _ratio(run["ceiling"]["joined_per_s"], run[REFERENCE]["figures"]["joined_per_s"])
                for run in runs
            ]
        )
        if REFERENCE in contenders
        else math.nan
    )
    must_complete = [name for name in contenders if name in COMPLETE_BY_DESIGN]
    complete = all(
        run[name][mode]["complete"]
        for run in runs
        for name in must_complete
        for mode in ("throughput", "latency", "light")
        if mode in run[name]
    )
    rate = runs[0]["rate"]
    light = {
        name: {f: _median([run[name]["light"][f] for run in runs]) for f in LATENCY_FIGURES}
        for name in contenders
        if all("light" in run[name] for run in runs)
    }
    eos_to_worker = (
        median_ratio(runs, WORKER_EOS, WORKER, "joined_per_s")
        if {WORKER, WORKER_EOS} <= set(contenders)
        else math.nan
    )
    return {
        "contenders": contenders,
        "median": medians,
        "to_lean": to_lean,
        "worker_to": worker_to,
        "sdk_log_per_s": _median([run["sdk_log_per_s"] for run in runs]),
        "latency_rate": rate,
        "latency_rate_share_of_worker_max": (
            rate / medians[WORKER]["joined_per_s"] if WORKER in medians else math.nan
        ),
        "duplicates": {
            name: _median([run[name]["throughput"]["duplicates"] for run in runs])
            for name in contenders
        },
        "apply": {
            figure: _median([run["apply"][figure] for run in runs])
            for figure in ("inputs_per_s", "joined_per_s", "cpu_s_per_1000")
        },
        "ceiling_joined_per_s": ceiling,
        "ceiling_to_lean": ceiling_to_lean,
        "counts_complete": complete and all(run["ceiling"]["complete"] for run in runs),
        "light_rate": runs[0].get("light_rate", math.nan),
        "light": light,
        "eos_to_worker": eos_to_worker,
        "aims": aims(medians, worker_to, light, eos_to_worker),
    }


def aims(
    medians: dict[str, dict[str, float]],
    worker_to: dict[str, Any],
    light: dict[str, dict[str, float]],
    eos_to_worker: float,
) -> dict[str, bool]:
    """The aims of issues 9 and 13 that this run's contenders can show."""
    found: dict[str, bool] = {}
    if WORKER_EOS in medians:
        found["eos_p99_under_100_ms"] = medians[WORKER_EOS]["p99_ms"] < AIM_EOS_P99_MS
        if not math.isnan(eos_to_worker):
            found["eos_at_least_0_7x_worker"] = eos_to_worker >= AIM_EOS_RATIO
    if WORKER not in medians:
        return found
    if WORKER in light:
        found["worker_p99_under_50_ms_light"] = light[WORKER]["p99_ms"] < AIM_P99_MS
    if REFERENCE in worker_to:
        found["worker_at_least_0_5x_lean"] = worker_to[REFERENCE]["joined_per_s"] >= AIM_LEAN_RATIO
        found["worker_cpu_at_most_2x_lean"] = (
            worker_to[REFERENCE]["cpu_s_per_1000"] <= AIM_CPU_RATIO
        )
    for peer in PEERS:
        if peer in worker_to:
            found[f"worker_ahead_of_{peer}"] = worker_to[peer]["joined_per_s"] > 1
    found["worker_p99_under_50_ms"] = medians[WORKER]["p99_ms"] < AIM_P99_MS
    return found


def _cell(template: str, value: float) -> str:
    return "n/a" if math.isnan(value) else template.format(value)


def _lay_out(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.rjust(w) if i else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]


def light_lines(summary: dict[str, Any]) -> list[str]:
    """The light-rate latency of the contenders measured there, and exactly once's cost."""
    lines = []
    light: dict[str, dict[str, float]] = summary.get("light", {})
    if light:
        figures = "; ".join(
            f"{name} " + " / ".join(_cell("{:.1f}", light[name][f]) for f in LATENCY_FIGURES)
            for name in light
        )
        lines.append(
            f"light load, {summary['light_rate']:,.0f} feedback/s, p50 / p99 / max ms: {figures}"
        )
    if not math.isnan(summary.get("eos_to_worker", math.nan)):
        lines.append(
            "worker-eos (exactly_once) joined/s over the worker's (at_least_once): "
            f"{summary['eos_to_worker']:.2f}x"
        )
    return lines


def table(summary: dict[str, Any], runs: int, skipped: dict[str, str]) -> str:
    """The summary as text: a row per contender, the worker's ratio rows, then notes and aims."""
    contenders: list[str] = summary["contenders"]
    header = ["contender", *(title for _, title, _ in FIGURES), "x lean"]
    rows = [
        [
            name,
            *(_cell(fmt, summary["median"][name][f]) for f, _, fmt in FIGURES),
            _cell("{:.2f}x", summary["to_lean"].get(name, math.nan)),
        ]
        for name in contenders
    ]
    for other, ratio in summary["worker_to"].items():
        cells = [_cell("{:.2f}x", ratio[f]) for f, _, _ in FIGURES]
        rows.append([f"worker/{other}", *cells, ""])
    blank = ["" for _ in FIGURES[1:]]
    rows.append(["ceiling", _cell("{:,.0f}", summary["ceiling_joined_per_s"]), *blank, ""])
    rows.append(["ceiling/lean", _cell("{:.2f}x", summary["ceiling_to_lean"]), *blank, ""])
    lines = _lay_out([header, *rows])
    share = summary["latency_rate_share_of_worker_max"]
    lines += [
        "",
        f"medians of {runs} run(s); latency at {summary['latency_rate']:,.0f} feedback/s"
        + ("" if math.isnan(share) else f" ({share:.0%} of the worker's max)"),
        *light_lines(summary),
        "joined/s: distinct expected joined records over the time from the contender's first "
        "input read to its last joined record; complete: those of the expected ones",
        f"sdk log (1 KB records, batches of 500): {summary['sdk_log_per_s']:,.0f} records/s",
        "per-input path without Kafka (bench.apply: decode, rules, table writes, n predictions "
        f"and their feedback): {summary['apply']['inputs_per_s']:,.0f} inputs/s, "
        f"{summary['apply']['joined_per_s']:,.0f} joined/s, "
        f"{summary['apply']['cpu_s_per_1000']:.3f} CPU s/1k joins",
        "ceiling: faust reading the same inputs with an agent that does nothing (same app "
        "settings, one event at a time), in joined records at this workload's mix",
    ]
    peers = [name for name in PEERS if name in contenders]
    if peers:
        repeats = ", ".join(f"{name} {summary['duplicates'][name]:,.0f}" for name in peers)
        lines.append(
            "peers (KStream-KTable join, join_asof) drop feedback read before its prediction "
            f"and emit duplicate feedback again (repeated records: {repeats})"
        )
    for name, reason in skipped.items():
        lines.append(f"skipped {name}: {reason.splitlines()[0]}")
    lines.append(
        f"joined counts complete ({', '.join(COMPLETE_BY_DESIGN)}): {summary['counts_complete']}"
    )
    for aim, met in summary["aims"].items():
        lines.append(f"aim {AIM_LABELS[aim]}: {'met' if met else 'NOT met'}")
    return "\n".join(lines)
