"""`python -m bench.latency`: join latency of the worker and other contenders at several rates.

The latency mode of `bench` at each rate of `--rates`, each contender of `--contenders`
(by default the worker and the plain-loop baseline; `worker-eos` is the worker with
`exactly_once`, `lean` the reference loop) side by side on fresh topics, printed as a
table of p50/p99/max per rate. It shows up to which load the contract's "p99 under
100 ms" holds on this machine.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.modes import latency
from bench.proc import Contender, bench_env, cleanup

CONTENDERS = ("worker", "worker-eos", "lean", "baseline")


def main(argv: list[str] | None = None) -> int:
    """Measure each contender at each rate; print one row per rate and contender."""
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__)
    parser.add_argument("--rates", default="50,100,150", help="feedback/s, comma-separated")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each measurement")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument(
        "--contenders",
        default="worker,baseline",
        help=f"comma-separated, of {','.join(CONTENDERS)}",
    )
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.contenders.split(",") if name.strip()]
    if not names or set(names) - set(CONTENDERS):
        parser.error(f"--contenders: pick from {CONTENDERS}")
    logging.basicConfig(level=logging.WARNING)
    bootstrap = os.environ.get("STREAMS_BOOTSTRAP_SERVERS", "localhost:9092")
    workdir = Path(tempfile.mkdtemp(prefix="streams-bench-latency-"))
    rows = []
    try:
        for rate in (float(r) for r in args.rates.split(",")):
            for name in names:
                env = bench_env(name, bootstrap, args.partitions, workdir, time.strftime("%H%M%S"))
                contender = Contender.make(name, env)
                try:
                    result = latency(contender, rate, args.seconds, seed=7)
                finally:
                    contender.stop()
                    cleanup(contender.settings)
                rows.append((rate, name, result))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{'feedback/s':>10}  {'contender':<11}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}  complete")
    for rate, name, result in rows:
        print(
            f"{rate:>10.0f}  {name:<11}{result['p50_ms']:>8.1f}{result['p99_ms']:>8.1f}"
            f"{result['max_ms']:>8.1f}  {result['complete']}"
        )
    return 0 if all(result["complete"] for _, _, result in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
