"""`python -m bench` (`make bench`): the worker, the lean reference loop and the peers.

The method is BENCHMARK.md's. Each run measures, on the same broker and side by side,
the project's worker (`streams worker`, as a user runs it, in `at_least_once` and as
`worker-eos` in `exactly_once`), the lean durable loop
(`bench/lean_loop.py`, the reference), Kafka Streams (`bench/kstreams/`) and Quix
Streams (`bench/quix/`), and the baseline (`bench.baseline`, the project's rules on a
plain loop, a diagnostic row): throughput on preloaded topics, restart, and latency at a
fixed rate (by default half of the worker's rate in the first run), and for the worker in
both modes and the lean loop latency at a light rate too (`--light-rate`, 10 feedback/s:
light traffic must not wait for a batch to fill); then faust's ceiling, the worker's
per-input path without Kafka (`bench.apply`) and the SDK's log throughput. The order of
contenders rotates from run to run. Every contender gets its own topics (4 partitions by
default), consumer group and data directory, deleted afterwards. The peers are built on
demand (`bench.peers`); one whose build fails is skipped, and the table says why.

Prints a table (medians over the runs; ratios are the medians of each run's ratio, see
`bench.report`) and writes everything as JSON to `bench-results/<timestamp>.json`.
`--scale` runs the scale mode instead (`bench.scale`).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench import apply, peers, report, scale
from bench.modes import ceiling, latency, throughput
from bench.peers import PeerUnavailable
from bench.proc import Contender, bench_env, cleanup
from bench.report import CONTENDERS, LIGHT, WORKER
from bench.sdk import log_throughput
from streams.settings import Settings

log = logging.getLogger("bench")
FALLBACK_RATE = 100  # feedback/s, when the paced contender's rate could not be measured

LATENCY_SHARE = 0.5  # latency mode at half of the worker's throughput, by default


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; `--quick` shrinks everything for a test."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--n", type=int, default=20_000, help="predictions per throughput run")
    parser.add_argument("--runs", type=int, default=3, help="runs; medians are reported")
    parser.add_argument("--rate", type=float, help="latency mode feedback/s (default: half max)")
    parser.add_argument("--latency-seconds", type=float, default=20.0, help="latency mode length")
    parser.add_argument(
        "--light-rate", type=float, default=10.0, help="feedback/s of the light-load latency"
    )
    parser.add_argument("--partitions", type=int, default=4, help="partitions of every topic")
    parser.add_argument("--sdk-n", type=int, help="records for the SDK row (default 2 x n)")
    parser.add_argument("--quick", action="store_true", help="small N, one run: for a test")
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="JSON folder")
    parser.add_argument("--keep", action="store_true", help="keep the data dirs and logs")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--contenders",
        default=",".join(CONTENDERS),
        help=f"comma-separated, of {','.join(CONTENDERS)} (default: all)",
    )
    scale.add_arguments(parser)
    args = parser.parse_args(argv)
    args.contenders = [name.strip() for name in args.contenders.split(",") if name.strip()]
    unknown = set(args.contenders) - set(CONTENDERS)
    if unknown or not args.contenders:
        parser.error(f"--contenders: unknown {sorted(unknown)}; pick from {CONTENDERS}")
    if args.quick:
        args.n, args.runs, args.latency_seconds = min(args.n, 1000), 1, 5.0
    args.sdk_n = args.sdk_n or 2 * args.n
    args.bootstrap = os.environ.get("STREAMS_BOOTSTRAP_SERVERS", "localhost:9092")
    return args


def one_run(
    index: int, args: argparse.Namespace, rate: float | None, workdir: Path, names: list[str]
) -> dict[str, Any]:
    """Every contender's throughput, restart and latency, the ceiling, then the SDK row."""
    shift = index % len(names)
    order = names[shift:] + names[:shift]
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
                paced = rate if mode == "latency" else args.light_rate
                run[name][mode] = latency(contender, paced, args.latency_seconds, args.seed + index)
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
        paced_by = WORKER if WORKER in names else names[0]
        measured = run[paced_by]["throughput"]["joined_per_s"]
        # A tiny run can drain before its first input read is seen (no span, NaN):
        # pace the latency mode at a modest fixed rate then, and say so.
        if not math.isfinite(measured) or measured <= 0:
            log.warning("rate_unmeasured contender=%s using=%d", paced_by, FALLBACK_RATE)
            measured = FALLBACK_RATE / LATENCY_SHARE
        rate = LATENCY_SHARE * measured
    run["rate"] = rate
    run["light_rate"] = args.light_rate
    for name in order:
        measure(name, "latency")
    for name in order:
        if name in LIGHT:
            measure(name, "light")
    # The worker's per-input path on its own (decode, rules, table writes; no Kafka).
    run["apply"] = apply.measure(args.n, where=workdir)
    log.info("run=%d apply=%s", index + 1, run["apply"])
    sdk = Settings.from_env(bench_env("sdk", args.bootstrap, args.partitions, workdir, tag))
    try:
        run["sdk_log_per_s"] = log_throughput(sdk, args.sdk_n, 500)
    finally:
        cleanup(sdk)
    for name in names:
        run[name]["figures"] = report.figures(run[name])
    return run


def available(names: list[str]) -> tuple[list[str], dict[str, str]]:
    """The contenders that can run here, and why the others cannot (a peer's build failed)."""
    ready, skipped = [], {}
    for name in names:
        try:
            if name in report.PEERS:
                peers.COMMANDS[name]()
            ready.append(name)
        except PeerUnavailable as error:
            skipped[name] = str(error)
            print(f"skipping {name}: {error}", file=sys.stderr, flush=True)
    return ready, skipped


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table and write the JSON."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("streams.sdk.client").setLevel(logging.WARNING)
    args = parse_args(argv)
    if args.scale:
        return scale.main(args)
    names, skipped = available(args.contenders)
    started = datetime.now(UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = args.out / f"work-{stamp}"
    runs: list[dict[str, Any]] = []
    rate: float | None = args.rate
    try:
        for index in range(args.runs):
            runs.append(one_run(index, args, rate, workdir, names))
            rate = runs[0]["rate"]  # every run at the same rate, so runs compare
    except BaseException:
        print(f"benchmark failed; contender logs are in {workdir}", file=sys.stderr)
        raise
    summary = report.summarize(runs, names)
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
            for key in (
                "n",
                "runs",
                "rate",
                "latency_seconds",
                "light_rate",
                "partitions",
                "sdk_n",
                "bootstrap",
                "contenders",
            )
        },
        "skipped": skipped,
        "runs": runs,
        "summary": summary,
    }
    path = args.out / f"{stamp}.json"
    path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    print(report.table(summary, len(runs), skipped))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
