"""`make demo`: the whole job on this machine, start to finish, in about a minute.

Starts a local broker if none answers, runs one worker, logs a realistic sample with
the SDK (predictions, delayed feedback, feedback before its prediction, feedback for
unknown keys, late feedback past retention, a few malformed records), then prints
what was joined, unmatched and dead-lettered and the % positive feedback over time
per application and version as the workers publish it (`streams stats`), writes a
chart, and stops what it started.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Producer

import streams
from streams.kafka_config import librdkafka_config
from streams.kafka_ping import answers
from streams.sdk.consumer import read_topic
from streams.settings import Settings, format_duration
from streams.stats.chart import plot_png
from streams.stats.query import format_table, read_feedback_stats, stats_series
from streams.topics import create_topics, delete_topics

ROOT = Path(__file__).resolve().parent.parent
SHORT_RETENTION_APP = "support-bot"
FEEDBACK_FIELDS = {"loan-approval": "approved_correct", SHORT_RETENTION_APP: "thumbs_up"}
# Loan predictions are logged with timestamps over the last hours, as if replayed from a
# day's traffic, so the % positive series has several hourly points.
LOAN_HOURS = 6


def broker_answers(servers: str) -> bool:
    """True when a Kafka broker answers at one of `servers`."""
    return any(answers(server.strip()) for server in servers.split(","))


def free_port() -> int:
    """A TCP port nothing listens on now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_healthy(port: int, worker: subprocess.Popen[bytes], timeout: float = 90) -> None:
    """Wait for the worker's /health to answer 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise SystemExit(f"demo: the worker exited with {worker.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit("demo: the worker did not become healthy")


def release_versions(name: str) -> dict[str, streams.Version]:
    """Two prompt versions of the completion application, released to prod and test."""
    bot = streams.get_application(name)
    bot.create_version("Answer briefly: {{question}}", "brief", "gpt-4o-mini", {"temperature": 0})
    bot.create_version("Answer step by step: {{question}}", "stepwise", "gpt-4o-mini")
    bot.release_version(1, "prod")
    bot.release_version(2, "test")
    running = {env: bot.get_version(env) for env in ("prod", "test")}
    print(
        f"demo: {name} versions: "
        + ", ".join(f"{env} runs {v.version_number}" for env, v in running.items() if v)
    )
    return {env: version for env, version in running.items() if version is not None}


def log_sample(
    app_names: list[str], count: int, rng: random.Random, running: dict[str, streams.Version]
) -> dict[str, Any]:
    """Log predictions and feedback the way applications do; return what was sent.

    The completion application picks the version prod or test runs (`running`) for
    each request.
    """
    sent: dict[str, Any] = {"predictions": 0, "feedback": 0, "early": 0, "unknown": 0, "late": []}
    loans = streams.get_application(app_names[0])
    bot = streams.get_application(app_names[1])
    # Some feedback arrives before its prediction: log it first, for keys made now.
    early_keys = [str(uuid.uuid4()) for _ in range(count // 20)]
    loans.log(feedbacks=[{"approved_correct": True} for _ in early_keys], join_keys=early_keys)
    sent["early"] = len(early_keys)
    sent["feedback"] += len(early_keys)
    loan_keys: dict[str, list[str]] = {}
    now = datetime.now(UTC)
    for version in ("v1", "v2"):
        rows = count // 2
        _, keys = loans.log(
            timestamps=[
                now - timedelta(seconds=rng.uniform(5, LOAN_HOURS * 3600)) for _ in range(rows)
            ],
            inputs=[
                {
                    "amount": rng.randint(500, 50_000),
                    "income": rng.randint(15_000, 200_000),
                    "term_months": rng.choice([12, 24, 36, 60]),
                }
                for _ in range(rows)
            ],
            outputs=[
                {"approved": rng.random() < 0.6, "score": round(rng.random(), 3)}
                for _ in range(rows)
            ],
            version=version,
            tags={"region": rng.choice(["eu", "us"])},
        )
        loan_keys[version] = keys
        sent["predictions"] += rows
    loans.log(
        inputs=[{"amount": 1000}] * len(early_keys),
        outputs=[{"approved": True}] * len(early_keys),
        join_keys=early_keys,
        version="v2",
    )
    sent["predictions"] += len(early_keys)
    bot_keys, bot_versions = [], []
    for i in range(count // 5):
        chosen = running[rng.choice(["prod", "test"])]
        request = {
            "model": chosen.config["model"],
            "messages": [
                {
                    "role": "user",
                    "content": streams.fill_prompt(
                        chosen.config["prompt"], {"question": f"question {i}"}
                    ),
                }
            ],
            **chosen.config["params"],
        }
        response = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "choices": [{"message": {"content": "answer"}}],
        }
        bot_keys.append(
            bot.log_completion(
                open_ai_api_request=request,
                open_ai_api_response=response,
                request_attributes={"question": f"question {i}"},
                version=chosen.version_number,
            )
        )
        bot_versions.append(chosen.version_number)
    sent["predictions"] += len(bot_keys)
    streams.flush()
    # Delayed feedback on 80% of the loans; v2 is right more often than v1.
    time.sleep(2)
    answered: list[str] = []
    for version_name, rate in (("v1", 0.55), ("v2", 0.75)):
        keys = rng.sample(loan_keys[version_name], int(len(loan_keys[version_name]) * 0.8))
        loans.log(
            feedbacks=[{"approved_correct": rng.random() < rate} for _ in keys], join_keys=keys
        )
        answered += keys
    # Thumbs up on half the answers: the stepwise prompt (version 2) pleases more often.
    half = len(bot_keys) // 2
    bot_answered = bot_keys[:half]
    bot.log(
        feedbacks=[
            {"thumbs_up": rng.random() < (0.6 if number == 1 else 0.8)}
            for number in bot_versions[:half]
        ],
        join_keys=bot_answered,
    )
    unknown = [str(uuid.uuid4()) for _ in range(count // 50)]
    loans.log(feedbacks=[{"approved_correct": False} for _ in unknown], join_keys=unknown)
    sent["unknown"] = len(unknown)
    sent["feedback"] += len(answered) + len(bot_answered) + len(unknown)
    streams.flush()
    sent["late"] = bot_keys[len(bot_keys) // 2 : len(bot_keys) // 2 + 20]
    return sent


def send_malformed(settings: Settings) -> int:
    """A few records no SDK would write, from a plain Kafka client."""
    producer = Producer({**librdkafka_config(settings), "partitioner": "murmur2_random"})
    topic = settings.topic("feedback")
    bad: list[tuple[bytes | None, bytes]] = [
        (b"k1", b"{this is not json"),
        (b"k2", b"\xff\xfe\x00binary"),
        (
            b"k3",
            orjson.dumps(
                {
                    "schema": "feedback/v1",
                    "application": "loan-approval",
                    "join_key": "k3",
                    "event_id": "e3",
                    "feedback": {},
                }
            ),
        ),
        (
            None,
            orjson.dumps(
                {
                    "schema": "feedback/v1",
                    "application": "loan-approval",
                    "join_key": "k4",
                    "event_id": "e4",
                    "feedback": {"ok": True},
                }
            ),
        ),
        (b"k5", orjson.dumps({"schema": "feedback/v7", "join_key": "k5"})),
    ]
    for key, value in bad:
        producer.produce(topic, key=key, value=value)
    producer.flush(30)
    return len(bad)


def positive_counts(
    joined: list[dict[str, Any]], fields: dict[str, str]
) -> dict[tuple[str, Any], list[int]]:
    """[predictions, positive] per (application, version), from joined records.

    Each prediction's latest joined record: what `feedback-stats` must say, computed the
    slow way, as a check.
    """
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for record in joined:
        key = (record["application"], record["join_key"])
        if key not in latest or record["feedback_revision"] >= latest[key]["feedback_revision"]:
            latest[key] = record
    counts: dict[tuple[str, Any], list[int]] = defaultdict(lambda: [0, 0])
    for record in latest.values():
        value = record["feedback"].get(fields[record["application"]])
        if isinstance(value, bool):
            group = counts[(record["application"], record["version"])]
            group[0] += 1
            group[1] += value
    return dict(counts)


def published_counts(
    records: list[dict[str, Any]], fields: dict[str, str]
) -> dict[tuple[str, Any], list[int]]:
    """[predictions, positive] per (application, version), as `feedback-stats` has them."""
    counts: dict[tuple[str, Any], list[int]] = {}
    for application, field in fields.items():
        series = stats_series(
            records, application, field, every=timedelta(days=365), by_version=True
        )
        for row in series.rows:
            group = counts.setdefault((application, row.version), [0, 0])
            group[0] += row.true + row.false
            group[1] += row.true
    return counts


def run(count: int, out_dir: Path) -> int:
    """The demo itself; returns an exit status."""
    servers = os.environ.get("STREAMS_BOOTSTRAP_SERVERS", "localhost:9092")
    started_broker = False
    # A secured cluster is the user's own: the demo starts only the local plain broker.
    secured = Settings.from_env().security.protocol != "PLAINTEXT"
    if not secured and not broker_answers(servers):
        print(f"demo: no broker at {servers}; starting the local one (make kafka-up)")
        subprocess.run([str(ROOT / "scripts" / "kafka.sh"), "up"], check=True)
        started_broker = True
    run_id = uuid.uuid4().hex[:8]
    data_dir = Path(tempfile.mkdtemp(prefix="streams-demo-"))
    env = {
        **os.environ,
        "STREAMS_BOOTSTRAP_SERVERS": servers,
        "STREAMS_TOPIC_PREFIX": f"demo-{run_id}.",
        "STREAMS_APP_ID": f"demo-{run_id}",
        "STREAMS_PARTITIONS": "4",
        "STREAMS_DATA_DIR": str(data_dir),
        "STREAMS_WEB_PORT": str(free_port()),
        "STREAMS_PENDING_TTL": "15s",
        "STREAMS_RETENTION_BY_APPLICATION": f"{SHORT_RETENTION_APP}=20s",
    }
    settings = Settings.from_env(env)
    create_topics(settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_file = (out_dir / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "worker"],
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_healthy(settings.web_port, worker)
        print(
            f"demo: worker up (topics {settings.topic_prefix}*, metrics http://localhost:{settings.web_port}/metrics)"
        )
        streams.init(settings=settings)
        rng = random.Random(7)
        running = release_versions(SHORT_RETENTION_APP)
        started = time.monotonic()
        sent = log_sample(["loan-approval", SHORT_RETENTION_APP], count, rng, running)
        malformed = send_malformed(settings)
        print(
            f"demo: logged {sent['predictions']} predictions, {sent['feedback']} feedback "
            f"({sent['early']} before their prediction, {sent['unknown']} for unknown keys), "
            f"{malformed} malformed records"
        )
        wait = 22 - (time.monotonic() - started)
        print(
            f"demo: waiting {max(wait, 0):.0f}s, then {len(sent['late'])} feedback past "
            f"{SHORT_RETENTION_APP}'s 20s retention"
        )
        time.sleep(max(wait, 0))
        streams.get_application(SHORT_RETENTION_APP).log(
            feedbacks=[{"thumbs_up": True} for _ in sent["late"]], join_keys=sent["late"]
        )
        streams.flush()
        print("demo: waiting for the unknown keys' feedback to time out (STREAMS_PENDING_TTL=15s)")
        time.sleep(16)
        outputs = {
            name: list(
                read_topic(settings, settings.topic(name), from_beginning=True, idle_timeout=4)
            )
            for name in ("joined", "unmatched", "deadletter")
        }
        report(settings, outputs, out_dir)
    finally:
        worker.terminate()
        worker.wait(60)
        log_file.close()
        streams.close()
        deleted = delete_topics(settings, (f"demo-{run_id}",))
        print(f"demo: deleted its {len(deleted)} topics")
        if started_broker:
            subprocess.run([str(ROOT / "scripts" / "kafka.sh"), "down"], check=False)
    return 0


def report(settings: Settings, outputs: dict[str, list[dict[str, Any]]], out_dir: Path) -> None:
    """Print the counts and the % positive series (`streams stats`), and write the chart."""
    joined = outputs["joined"]
    print(f"\njoined      {len(joined):6d} records ({len({r['id'] for r in joined})} distinct ids)")
    reasons = Counter(r["reason"] for r in outputs["unmatched"])
    print(
        f"unmatched   {len(outputs['unmatched']):6d}  "
        + ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items()))
    )
    dead = Counter(r["reason"] for r in outputs["deadletter"])
    print(
        f"deadletter  {len(outputs['deadletter']):6d}  "
        + ", ".join(f"{k}: {v}" for k, v in sorted(dead.items()))
    )
    # The worker publishes its aggregates before each commit: wait until they have
    # caught up with the joined records read above, then show them.
    expected = positive_counts(joined, FEEDBACK_FIELDS)
    deadline = time.monotonic() + 30
    records = read_feedback_stats(settings).records
    published = published_counts(records, FEEDBACK_FIELDS)
    while published != expected and time.monotonic() < deadline:
        time.sleep(1)
        records = read_feedback_stats(settings).records
        published = published_counts(records, FEEDBACK_FIELDS)
    agrees = "agrees" if published == expected else "DOES NOT agree"
    print(f"\nfeedback-stats {agrees} with the joined records: {sorted(published.items())}")
    for application, field, every in (
        ("loan-approval", "approved_correct", timedelta(hours=1)),
        (SHORT_RETENTION_APP, "thumbs_up", timedelta(minutes=1)),
    ):
        print(
            f"\n$ streams stats --application {application} --field {field} "
            f"--every {format_duration(every)} --by-version"
        )
        series = stats_series(records, application, field, every=every, by_version=True)
        print(format_table(series), end="")
        if application == "loan-approval":
            chart = out_dir / "positive-feedback.png"
            chart.write_bytes(plot_png(series))
    print(f"\nchart: {out_dir / 'positive-feedback.png'}")
    if joined:
        print(
            "\none joined record:\n" + orjson.dumps(joined[-1], option=orjson.OPT_INDENT_2).decode()
        )


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m streams.demo` (`make demo`)."""
    parser = argparse.ArgumentParser(prog="streams.demo", description=__doc__)
    parser.add_argument("--count", type=int, default=3000, help="predictions to log (default 3000)")
    parser.add_argument(
        "--out", type=Path, default=Path("demo-out"), help="where the chart and log go"
    )
    args = parser.parse_args(argv)
    return run(args.count, args.out)


if __name__ == "__main__":
    sys.exit(main())
