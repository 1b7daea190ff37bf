"""Asking for what is not there: unknown `/stats` parameters, unknown applications and fields."""

from __future__ import annotations

import subprocess
from pathlib import Path

import orjson
import pytest
from harness import RawProducer
from test_cli import streams_cli
from test_stats_query import NOW_MS, key_of, share, streams_stats

from streams.stats.query import StatsQuery, StatsRow, no_match


@pytest.mark.unit
@pytest.mark.parametrize("unknown", ["evry", "application_id", "by-version"])
def test_an_unknown_stats_parameter_is_refused_naming_it(unknown: str) -> None:
    params = {"application": "chat", "field": "thumbs_up", unknown: "1"}

    with pytest.raises(ValueError, match=rf"^{unknown}: unknown parameter; use application, "):
        StatsQuery.from_params(params)


@pytest.mark.unit
def test_no_match_lists_what_exists() -> None:
    records = [
        share(NOW_MS, application="chat", field="thumbs_up", true=1),
        share(NOW_MS, application="chat", field="rating", numbers=1, total=4),
        share(NOW_MS, application="loans", field="repaid", true=1),
    ]

    assert no_match(records, "chat", "thumbs_up") is None
    assert no_match(records, "search", "thumbs_up") == (
        "no feedback for application 'search'; applications: chat, loans"
    )
    assert no_match(records, "chat", "repaid") == (
        "application 'chat' has no feedback field 'repaid'; its fields: rating, thumbs_up"
    )
    assert no_match([], "chat", "x") == "no feedback for application 'chat'; applications: none yet"


@pytest.mark.unit
def test_positive_pct_is_the_percentage_the_readme_says() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()

    assert "`positive_pct` is `100 * true / (true + false)`" in readme
    assert StatsRow("b", None, 4, 3, 1, 0, 0.0).positive_pct == 100 * 3 / (3 + 1)


@pytest.mark.integration
def test_stats_for_an_unknown_application_or_field_says_nothing_matched(
    env: dict[str, str], producer: RawProducer
) -> None:
    topics = streams_cli("topics", "create", env=env)
    assert topics.returncode == 0, topics.stderr
    for record in (share(NOW_MS, true=2, false=1), share(NOW_MS, field="rating", numbers=1)):
        producer.send("feedback-stats", orjson.dumps(record), key=key_of(record))
    producer.flush()

    def stats(application: str, field: str) -> subprocess.CompletedProcess[str]:
        query = ("--application", application, "--field", field, "--timeout", "20")
        return streams_stats(*query, env=env)

    found = stats("chat", "thumbs_up")
    assert found.returncode == 0, found.stderr
    assert "66.7%" in found.stdout
    for application, field, listed in [
        ("search", "thumbs_up", "applications: chat"),
        ("chat", "thumbs_down", "its fields: rating, thumbs_up"),
    ]:
        result = stats(application, field)
        assert result.returncode == 1
        assert result.stdout == ""
        (line,) = result.stderr.splitlines()
        assert "nothing matched" in line and listed in line, line
