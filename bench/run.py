"""`python -m bench` (`make bench`): the worker against a plain confluent-kafka loop.

The method is BENCHMARK.md's. Each run measures, on the same broker and side by side,
the project's worker (`streams worker`, as a user runs it) and the baseline
(`bench.baseline`): throughput on preloaded topics, restart, and latency at a
fixed rate (by default half of the worker's rate in the first run); then the SDK's log
throughput. Contenders alternate which goes first. Every contender gets its own topics
(4 partitions by default), consumer group and data directory, deleted afterwards.

Prints a table (medians over the runs; ratios are the medians of each run's ratio to
the baseline) and writes everything as JSON to `bench-results/<timestamp>.json`.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import shutil
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench.modes import ceiling, latency, throughput
from bench.proc import Contender, bench_env, cleanup
from bench.sdk import log_throughput
from streams.settings import Settings

log = logging.getLogger("bench")

CONTENDERS = ("worker", "baseline")
# (figure, column title, format): medians per contender, and ratios to the baseline.
FIGURES = (
    ("joined_per_s", "joined/s", "{:,.0f}"),
    ("p50_ms", "p50 ms", "{:.1f}"),
    ("p99_ms", "p99 ms", "{:.1f}"),
    ("max_ms", "max ms", "{:.1f}"),
    ("cpu_s_per_1000", "CPU s/1k joins", "{:.3f}"),
    ("peak_rss_mib", "peak RSS MiB", "{:.0f}"),
    ("state_disk_mib", "state MiB", "{:.1f}"),
    ("restart_s", "restart s", "{:.1f}"),
)
AIM_RATIO = 0.5
AIM_P99_MS = 100.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; `--quick` shrinks everything for a test."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--n", type=int, default=20_000, help="predictions per throughput run")
    parser.add_argument("--runs", type=int, default=3, help="runs; medians are reported")
    parser.add_argument("--rate", type=float, help="latency mode feedback/s (default: half max)")
    parser.add_argument("--latency-seconds", type=float, default=20.0, help="latency mode length")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of every topic")
    parser.add_argument("--sdk-n", type=int, help="records for the SDK row (default 2 x n)")
    parser.add_argument("--quick", action="store_true", help="small N, one run: for a test")
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="JSON folder")
    parser.add_argument("--keep", action="store_true", help="keep the data dirs and logs")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.runs, args.latency_seconds = min(args.n, 1000), 1, 5.0
    args.sdk_n = args.sdk_n or 2 * args.n
    args.bootstrap = os.environ.get("STREAMS_BOOTSTRAP_SERVERS", "localhost:9092")
    return args


def figures(result: dict[str, Any]) -> dict[str, float]:
    """One contender's figures of one run, flat."""
    flat = {**result["throughput"], **result["latency"]}
    return {name: float(flat[name]) for name, _, _ in FIGURES}


def one_run(
    index: int, args: argparse.Namespace, rate: float | None, workdir: Path
) -> dict[str, Any]:
    """Both contenders' throughput, restart and latency, then the SDK row."""
    order = CONTENDERS if index % 2 == 0 else CONTENDERS[::-1]
    tag = f"{time.strftime('%H%M%S')}-r{index + 1}"
    run: dict[str, Any] = {name: {} for name in order}

    def measure(name: str, mode: str) -> None:
        env = bench_env(name, args.bootstrap, args.partitions, workdir, tag)
        contender = Contender.make(name, env)
        log.info(
            "run=%d contender=%s mode=%s app_id=%s", index + 1, name, mode, env["STREAMS_APP_ID"]
        )
        try:
            if mode == "throughput":
                run[name][mode] = throughput(contender, args.n, args.seed + index)
            else:
                assert rate is not None
                run[name][mode] = latency(contender, rate, args.latency_seconds, args.seed + index)
        finally:
            contender.stop()
            cleanup(contender.settings)
        run[name][mode]["app_id"] = env["STREAMS_APP_ID"]
        log.info("run=%d contender=%s %s=%s", index + 1, name, mode, run[name][mode])

    for name in order:
        measure(name, "throughput")
    env = bench_env("ceiling", args.bootstrap, args.partitions, workdir, tag)
    contender = Contender.make("ceiling", env)
    try:
        run["ceiling"] = ceiling(contender, args.n, args.seed + index)
    finally:
        cleanup(contender.settings)
    run["ceiling"]["app_id"] = env["STREAMS_APP_ID"]
    log.info("run=%d ceiling=%s", index + 1, run["ceiling"])
    if rate is None:
        rate = AIM_RATIO * run["worker"]["throughput"]["joined_per_s"]
    run["rate"] = rate
    for name in order:
        measure(name, "latency")
    sdk = Settings.from_env(bench_env("sdk", args.bootstrap, args.partitions, workdir, tag))
    try:
        run["sdk_log_per_s"] = log_throughput(sdk, args.sdk_n, 500)
    finally:
        cleanup(sdk)
    for name in CONTENDERS:
        run[name]["figures"] = figures(run[name])
    return run


def _median(values: list[float]) -> float:
    present = [value for value in values if not math.isnan(value)]
    return statistics.median(present) if present else math.nan


def _ratio(value: float, baseline: float) -> float:
    return value / baseline if baseline else math.nan


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over runs, each figure's median ratio to the baseline, and the aims."""
    medians = {
        name: {f: _median([run[name]["figures"][f] for run in runs]) for f, _, _ in FIGURES}
        for name in CONTENDERS
    }
    ratios = {
        f: _median(
            [_ratio(run["worker"]["figures"][f], run["baseline"]["figures"][f]) for run in runs]
        )
        for f, _, _ in FIGURES
    }
    ceiling_rate = _median([run["ceiling"]["joined_per_s"] for run in runs])
    ceiling_ratio = _median(
        [
            _ratio(run["ceiling"]["joined_per_s"], run["baseline"]["figures"]["joined_per_s"])
            for run in runs
        ]
    )
    complete = all(
        run[name][mode]["complete"]
        for run in runs
        for name in CONTENDERS
        for mode in ("throughput", "latency")
    )
    rate = runs[0]["rate"]
    return {
        "median": medians,
        "worker_to_baseline": ratios,
        "sdk_log_per_s": _median([run["sdk_log_per_s"] for run in runs]),
        "latency_rate": rate,
        "latency_rate_share_of_worker_max": rate / medians["worker"]["joined_per_s"],
        "ceiling_joined_per_s": ceiling_rate,
        "ceiling_to_baseline": ceiling_ratio,
        "counts_complete": complete and all(run["ceiling"]["complete"] for run in runs),
        "aims": {
            "throughput_ratio_at_least_0_5": ratios["joined_per_s"] >= AIM_RATIO,
            "worker_p99_under_100_ms": medians["worker"]["p99_ms"] < AIM_P99_MS,
        },
    }


def _cell(template: str, value: float) -> str:
    return "n/a" if math.isnan(value) else template.format(value)


def table(summary: dict[str, Any], runs: int) -> str:
    """The summary as a text table: one row per contender, then the worker's ratios."""
    header = ["contender", *(title for _, title, _ in FIGURES)]
    rows = [
        [name, *(_cell(fmt, summary["median"][name][f]) for f, _, fmt in FIGURES)]
        for name in CONTENDERS
    ]
    ratio = summary["worker_to_baseline"]
    rows.append(["worker/baseline", *(_cell("{:.2f}x", ratio[f]) for f, _, _ in FIGURES)])
    rows.append(
        [
            "ceiling",
            _cell("{:,.0f}", summary["ceiling_joined_per_s"]),
            *("" for _ in FIGURES[1:]),
        ]
    )
    rows.append(
        [
            "ceiling/baseline",
            _cell("{:.2f}x", summary["ceiling_to_baseline"]),
            *("" for _ in FIGURES[1:]),
        ]
    )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.rjust(w) if i else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *rows]
    ]
    aims = summary["aims"]
    lines += [
        "",
        f"medians of {runs} run(s); latency at {summary['latency_rate']:,.0f} feedback/s "
        f"({summary['latency_rate_share_of_worker_max']:.0%} of the worker's max)",
        f"sdk log (1 KB records, batches of 500): {summary['sdk_log_per_s']:,.0f} records/s",
        "ceiling: faust reading the same inputs with an agent that does nothing (same app "
        "settings, one event at a time), in joined records at this workload's mix",
        f"joined counts complete: {summary['counts_complete']}",
        f"aim worker >= {AIM_RATIO} x baseline rate: "
        f"{'met' if aims['throughput_ratio_at_least_0_5'] else 'NOT met'}",
        f"aim worker p99 < {AIM_P99_MS:.0f} ms at that rate: "
        f"{'met' if aims['worker_p99_under_100_ms'] else 'NOT met'}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table and write the JSON."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("streams.sdk.client").setLevel(logging.WARNING)
    args = parse_args(argv)
    started = datetime.now(UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = args.out / f"work-{stamp}"
    runs: list[dict[str, Any]] = []
    rate: float | None = args.rate
    try:
        for index in range(args.runs):
            runs.append(one_run(index, args, rate, workdir))
            rate = runs[0]["rate"]  # every run at the same rate, so runs compare
    except BaseException:
        print(f"benchmark failed; contender logs are in {workdir}", file=sys.stderr)
        raise
    summary = summarize(runs)
    result = {
        "command": " ".join(["python -m bench", *(sys.argv[1:] if argv is None else argv)]),
        "date": started.isoformat(timespec="seconds"),
        "seconds": (datetime.now(UTC) - started).total_seconds(),
        "machine": {
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "config": {
            key: getattr(args, key)
            for key in ("n", "runs", "rate", "latency_seconds", "partitions", "sdk_n", "bootstrap")
        },
        "runs": runs,
        "summary": summary,
    }
    path = args.out / f"{stamp}.json"
    path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    print(table(summary, len(runs)))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
