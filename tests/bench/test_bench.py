"""`python -m bench --quick` end to end: every contender runs, every figure is there, counts add up.

Not a timing test: the figures only have to be sane (positive, ordered), and the
joined records have to be exactly the ones the workload asked for (the worker, the lean
loop, the baseline) or a part of them with no other (the peers, whose joins drop feedback
read before its prediction). The peers are built on first use (`bench.peers`) and must
build: a peer the benchmark skips fails the test. The scale mode runs at a tiny N.
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

from bench.report import COMPLETE_BY_DESIGN, CONTENDERS, FIGURES, LIGHT, PEERS, REFERENCE

pytestmark = pytest.mark.integration


def run_bench(bootstrap: str, out: Path, *args: str) -> tuple[str, dict[str, Any]]:
    env = {**os.environ, "STREAMS_BOOTSTRAP_SERVERS": bootstrap}
    done = subprocess.run(
        [sys.executable, "-m", "bench", *args, "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    [path] = out.glob("*.json")
    return done.stdout, orjson.loads(path.read_bytes())


@pytest.mark.timeout(900)
def test_quick_bench_reports_every_figure_with_counts_that_add_up(
    bootstrap: str, tmp_path: Path
) -> None:
    stdout, result = run_bench(bootstrap, tmp_path / "results", "--quick")

    # The table: one row per contender, the worker's ratio rows, the SDK row and the aims.
    others = [f"worker/{name}" for name in CONTENDERS if name != "worker"]
    for row in (*CONTENDERS, *others, "ceiling/lean", "sdk log", "aim worker", "without Kafka"):
        assert row in stdout
    assert "skipped" not in stdout
    assert result["skipped"] == {}
    assert not any(p.name.startswith("work-") for p in (tmp_path / "results").iterdir())

    [run] = result["runs"]
    for name in CONTENDERS:
        put = run[name]["throughput"]
        plan = put["plan"]
        assert plan["expected_joined"] == plan["predictions"] - plan["unknown"] - plan["duplicates"]
        # No contender makes up a record: every id it emitted is one the workload expects.
        assert put["unexpected"] == 0, name
        assert 0 < put["joined"] <= plan["expected_joined"], name
        assert put["joined_records"] == put["joined"] + put["duplicates"], name
        assert put["completeness"] == put["joined"] / plan["expected_joined"], name
        assert put["restart_joined"] > 0, name
        lat = run[name]["latency"]
        assert lat["joined"] > 0, name
        assert 0 < lat["p50_ms"] <= lat["p99_ms"] <= lat["max_ms"] < 60_000, name
        figures = run[name]["figures"]
        assert set(figures) == {figure for figure, _, _ in FIGURES}
        for figure, value in figures.items():
            # CPU time is read in clock ticks (10 ms): in a run this small, what a
            # contender does after its first join can fit in less than one.
            least = 0.0 if figure == "cpu_s_per_1000" else math.ulp(0.0)
            assert math.isfinite(value) and value >= least, (name, figure, value)
    for name in LIGHT:
        # The light rate too (the worker in both guarantees, the lean loop): every join.
        light = run[name]["light"]
        assert light["rate"] == run["light_rate"] == 10.0, name
        assert light["joined"] == light["expected_joined"] > 0, name
        assert 0 < light["p50_ms"] <= light["p99_ms"] <= light["max_ms"] < 60_000, name
    for name in COMPLETE_BY_DESIGN:
        # Exactly the joined records the workload asks for, once each, in both modes.
        put, lat = run[name]["throughput"], run[name]["latency"]
        assert put["joined"] == put["plan"]["expected_joined"], name
        assert put["complete"] and put["duplicates"] == 0, name
        assert put["restart_joined"] == put["restart_expected"] > 0, name
        assert lat["joined"] == lat["expected_joined"] > 0, name
        assert lat["complete"], name
    for name in PEERS:
        # KStream-KTable and join_asof cannot join feedback older than its prediction (but
        # one in the same millisecond may pass), and join a duplicate again (same id).
        put = run[name]["throughput"]
        assert put["joined"] < put["plan"]["expected_joined"], name
        assert not put["complete"], name
        assert put["duplicates"] > 0, name
    assert 900 < plan["prediction_bytes"] < 1200
    assert plan["feedback_bytes"] < 400
    assert run["sdk_log_per_s"] > 0
    # The per-input path on its own (bench.apply): every prediction and its feedback.
    assert run["apply"]["inputs"] == 2 * plan["predictions"]
    assert run["apply"]["inputs_per_s"] > 0 and run["apply"]["cpu_s_per_1000"] > 0
    # The ceiling (faust with a no-op agent) read every input record.
    assert run["ceiling"]["complete"]
    assert run["ceiling"]["records"] == plan["predictions"] + plan["feedback"]
    assert run["ceiling"]["joined_per_s"] > 0

    summary = result["summary"]
    assert summary["counts_complete"]
    assert summary["to_lean"][REFERENCE] == 1.0
    assert all(math.isfinite(ratio) for ratio in summary["to_lean"].values())
    assert set(summary["worker_to"]) == set(CONTENDERS) - {"worker"}
    assert math.isfinite(summary["worker_to"]["lean"]["joined_per_s"])
    assert math.isfinite(summary["ceiling_to_lean"])
    assert summary["latency_rate"] > 0
    assert set(summary["light"]) == set(LIGHT)
    assert math.isfinite(summary["eos_to_worker"])
    assert set(summary["aims"]) == {
        "worker_at_least_0_5x_lean",
        "worker_cpu_at_most_2x_lean",
        "worker_ahead_of_kstreams",
        "worker_ahead_of_quix",
        "worker_p99_under_50_ms",
        "worker_p99_under_50_ms_light",
        "eos_at_least_0_7x_worker",
        "eos_p99_under_100_ms",
    }

    # Every topic the benchmark made is gone again (Quix's changelogs hold the app id inside).
    app_ids = [
        run[name][mode]["app_id"]
        for name in CONTENDERS
        for mode in ("throughput", "latency", "light")
        if mode in run[name]
    ] + [run["ceiling"]["app_id"]]
    assert_topics_gone(bootstrap, app_ids)


def assert_topics_gone(bootstrap: str, app_ids: list[str]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + 30  # deletion is asynchronous: metadata catches up
    while left := [t for t in admin.list_topics(timeout=10).topics if any(a in t for a in app_ids)]:
        assert time.monotonic() < deadline, f"topics left behind: {left}"
        time.sleep(0.5)


@pytest.mark.timeout(600)
def test_scale_mode_stores_then_rebuilds_from_the_changelog(bootstrap: str, tmp_path: Path) -> None:
    stdout, result = run_bench(
        bootstrap, tmp_path / "results", "--scale", "--scale-n", "2000", "--scale-partitions", "8"
    )
    assert "rebuild after deleting the data directory" in stdout
    assert result["n"] == 2000 and result["partitions"] == 8
    assert result["stored_per_s"] > 0 and result["peak_rss_mib"] > 0
    # The changelog holds at least a row per prediction, and the rebuild read it.
    assert result["changelog_records"] >= 2000
    assert 0 < result["healthy_s"] <= result["rebuild_s"]
    assert result["restored_per_s"] > 0
    assert set(result["aims"]) == {"peak_rss_under_400_mb", "rebuild_at_least_50k_per_s"}
    assert_topics_gone(bootstrap, [result["app_id"]])
