"""`python -m bench.sweep --quick`: the benchmark runs and prints what it promises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import sweep as sweep_bench


@pytest.mark.unit
def test_quick_sweep_costs_cover_every_fraction_and_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "costs.json"
    sweep_bench.main(["--quick", "--workdir", str(tmp_path), "--json", str(out)])
    printed = capsys.readouterr().out
    assert "us/key" in printed
    costs = json.loads(out.read_text())["costs"]
    assert {(c["stored"], c["fraction"]) for c in costs} == {
        (rows, fraction) for rows in (5_000, 20_000) for fraction in sweep_bench.FRACTIONS
    }
    for line in costs:
        assert line["expired"] == max(1, round(line["stored"] * line["fraction"]))
        assert line["us_per_expired_key"] > 0 and line["empty_sweep_after_ms"] > 0
    assert list(tmp_path.glob("sweep-bench-*")) == []  # the databases are cleaned up


@pytest.mark.integration
def test_quick_latency_run_sweeps_while_every_feedback_joins(
    bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMS_BOOTSTRAP_SERVERS", bootstrap)
    out = tmp_path / "latency.json"
    sweep_bench.main(["--quick", "--no-costs", "--latency", "--json", str(out)])
    latency = json.loads(out.read_text())["latency"]
    assert latency["missing_joins"] == 0
    assert latency["swept_rows"] == [latency["bulk"]]  # one sweep took the whole bulk
    # Feedback was sent and joined while the sweep ran (the point of the run), and outside it.
    assert latency["quiet"]["n"] > 0 and latency["sweep"]["n"] > 0
    assert latency["sweep_seconds"][0] > 0
