"""The `streams` command as a user types it: topics create, tail, bad settings, and `make demo`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from confluent_kafka.admin import AdminClient
from harness import RawProducer, feedback, prediction, read_topic

from streams.worker.join import joined_id

ROOT = Path(__file__).resolve().parent.parent


def streams_cli(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.unit
@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("STREAMS_PARTITIONS", "eight"),
        ("STREAMS_RETENTION", "3 weeks"),
        ("STREAMS_PROCESSING_GUARANTEE", "maybe"),
        ("STREAMS_RETENTION_BY_APPLICATION", "chat:7d"),
        ("STREAMS_BOOTSTRAP_SERVERS", "no-port"),
    ],
)
def test_a_bad_setting_stops_the_start_naming_the_variable(variable: str, value: str) -> None:
    result = streams_cli("worker", env={variable: value}, timeout=30)
    assert result.returncode == 2
    assert variable in result.stderr


@pytest.mark.integration
def test_topics_create_makes_every_topic_once(env: dict[str, str], topic_prefix: str) -> None:
    first = streams_cli("topics", "create", env=env)
    assert first.returncode == 0, first.stderr
    names = ["predictions", "feedback", "joined", "unmatched", "deadletter", "feedback-stats"]
    names += ["versions"]
    # The contract's topics first, then the worker's own (tests/test_cli_failures.py).
    assert [line.split("\t")[0] for line in first.stdout.splitlines()][: len(names)] == [
        topic_prefix + n for n in names
    ]
    assert all(line.endswith("created") for line in first.stdout.splitlines())
    again = streams_cli("topics", "create", env=env)
    assert again.returncode == 0, again.stderr
    app_id = env["STREAMS_APP_ID"]
    counts = {name: "1 partition" if name == "versions" else "4 partitions" for name in names}
    assert again.stdout.splitlines() == [
        *(f"{topic_prefix}{n}\t{counts[n]}\texists" for n in names),
        f"{app_id}-state-changelog\t4 partitions\texists",
        f"{app_id}-due-changelog\t4 partitions\texists",
        f"{app_id}-__assignor-__leader\t1 partition\texists",
    ]
    topics = (
        AdminClient({"bootstrap.servers": env["STREAMS_BOOTSTRAP_SERVERS"]})
        .list_topics(timeout=10)
        .topics
    )
    assert all(len(topics[topic_prefix + n].partitions) == 4 for n in names[:-1])
    assert len(topics[topic_prefix + "versions"].partitions) == 1  # its log numbers versions


@pytest.mark.integration
def test_tail_prints_json_lines(
    workers: object, env: dict[str, str], producer: RawProducer, bootstrap: str
) -> None:
    workers()  # type: ignore[operator]
    events = [feedback("loans", f"t{i}", {"thumbs_up": True}) for i in range(3)]
    for event in events:
        producer.send("predictions", prediction("loans", str(event["join_key"])))
        producer.send("feedback", event)
    producer.send("feedback", b"{oops", key="bad")
    producer.flush()
    read_topic(bootstrap, env["STREAMS_TOPIC_PREFIX"] + "joined", 3)
    joined = streams_cli(
        "tail", "joined", "--from-beginning", "--max", "3", "--timeout", "20", env=env
    )
    assert joined.returncode == 0, joined.stderr
    records = [orjson.loads(line) for line in joined.stdout.splitlines()]
    assert sorted(r["id"] for r in records) == sorted(
        joined_id("loans", str(e["join_key"]), str(e["event_id"])) for e in events
    )
    dead = streams_cli("tail", "deadletter", "--from-beginning", "--timeout", "8", env=env)
    assert [orjson.loads(line)["reason"] for line in dead.stdout.splitlines()] == ["invalid_json"]


@pytest.mark.integration
def test_make_demo_runs_the_whole_job(bootstrap: str, tmp_path: Path) -> None:
    """The demo on a small sample: a worker, the SDK, every outcome and the chart."""
    result = subprocess.run(
        [sys.executable, "-m", "streams.demo", "--count", "400", "--out", str(tmp_path)],
        env={**os.environ, "STREAMS_BOOTSTRAP_SERVERS": bootstrap},
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.split()}
    # --count 400: 320 loans answered (80%), 20 answered before their prediction, 40 of
    # the bot's 80 completions; 8 feedback for unknown keys; 20 past the bot's retention.
    assert lines["joined"][1:3] == ["380", "records"]
    assert lines["unmatched"][2:] == ["expired:", "20,", "no_prediction:", "8"]
    assert int(lines["deadletter"][1]) == 5
    # The % positive series comes from the worker's aggregates, checked against `joined`.
    assert "feedback-stats agrees with the joined records" in result.stdout, result.stdout
    assert "--field approved_correct --every 1h --by-version" in result.stdout
    # The completion application runs two released prompt versions, counted apart.
    assert "support-bot versions: prod runs 1, test runs 2" in result.stdout
    assert "('support-bot', 1)" in result.stdout
    assert "('support-bot', 2)" in result.stdout
    assert (tmp_path / "positive-feedback.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "positive-feedback.png").stat().st_size > 1000
