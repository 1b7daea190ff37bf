"""`python -m bench --quick` end to end: every figure is there, every count adds up.

Not a timing test: the figures only have to be sane (positive, ordered), and the
joined records have to be exactly the ones the workload asked for.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka.admin import AdminClient

from bench.run import CONTENDERS, FIGURES

pytestmark = pytest.mark.integration


def run_quick(bootstrap: str, out: Path) -> tuple[str, dict[str, Any]]:
    env = {**os.environ, "STREAMS_BOOTSTRAP_SERVERS": bootstrap}
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    [path] = out.glob("*.json")
    return done.stdout, orjson.loads(path.read_bytes())


@pytest.mark.timeout(600)
def test_quick_bench_reports_every_figure_with_counts_that_add_up(
    bootstrap: str, tmp_path: Path
) -> None:
    stdout, result = run_quick(bootstrap, tmp_path / "results")

    # The table: one row per contender, the ratio row, the SDK row and the aims.
    for row in (*CONTENDERS, "worker/baseline", "ceiling/baseline", "sdk log", "aim worker"):
        assert row in stdout
    assert not any(p.name.startswith("work-") for p in (tmp_path / "results").iterdir())

    [run] = result["runs"]
    for name in CONTENDERS:
        put = run[name]["throughput"]
        plan = put["plan"]
        # Throughput: exactly the joined records the workload asks for, no other.
        assert plan["expected_joined"] == plan["predictions"] - plan["unknown"] - plan["duplicates"]
        assert put["joined"] == plan["expected_joined"], name
        assert put["unexpected"] == 0, name
        assert put["joined_records"] >= put["joined"], name
        assert put["complete"], name
        assert put["restart_joined"] == put["restart_expected"] > 0, name
        # Latency: every feedback for a prediction joined once.
        lat = run[name]["latency"]
        assert lat["joined"] == lat["expected_joined"] > 0, name
        assert lat["complete"], name
        assert 0 < lat["p50_ms"] <= lat["p99_ms"] <= lat["max_ms"] < 60_000, name
        figures = run[name]["figures"]
        assert set(figures) == {figure for figure, _, _ in FIGURES}
        for figure, value in figures.items():
            assert math.isfinite(value) and value > 0, (name, figure, value)
    assert 900 < plan["prediction_bytes"] < 1200
    assert plan["feedback_bytes"] < 400
    assert run["sdk_log_per_s"] > 0
    # The ceiling (faust with a no-op agent) read every input record.
    assert run["ceiling"]["complete"]
    assert run["ceiling"]["records"] == plan["predictions"] + plan["feedback"]
    assert run["ceiling"]["joined_per_s"] > 0

    summary = result["summary"]
    assert summary["counts_complete"]
    assert math.isfinite(summary["worker_to_baseline"]["joined_per_s"])
    assert math.isfinite(summary["ceiling_to_baseline"])
    assert summary["latency_rate"] > 0
    assert set(summary["aims"]) == {"throughput_ratio_at_least_0_5", "worker_p99_under_100_ms"}

    # Every topic the benchmark made is gone again.
    app_ids = [
        run[name][mode]["app_id"] for name in CONTENDERS for mode in ("throughput", "latency")
    ] + [run["ceiling"]["app_id"]]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + 30  # deletion is asynchronous: metadata catches up
    while left := [t for t in admin.list_topics(timeout=10).topics if t.startswith(tuple(app_ids))]:
        assert time.monotonic() < deadline, f"topics left behind: {left}"
        time.sleep(0.5)
