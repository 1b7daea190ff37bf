"""Every client over a secured broker: SASL (SCRAM, PLAIN), TLS, mutual TLS; secrets kept secret.

One secured broker for the session, started from the same jars by `scripts/kafka.sh`
(KAFKA_SECURE=1) with its own state directory and ports, and stopped at the end: the
shared broker is never touched. The script makes the CA, the broker's and a client's
certificates with openssl and creates the SCRAM users when it formats the storage.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer
from harness import WorkerProcess, free_port_range, kafka_script, own_broker_env
from test_cli import streams_cli
from test_security import make_ca

import streams
from streams.errors import DeliveryError
from streams.kafka_config import librdkafka_config
from streams.kafka_ping import answers
from streams.settings import Settings

pytestmark = pytest.mark.integration

# listener name -> (port offset from the PLAINTEXT port, protocol)
LISTENERS = {"sasl_plaintext": 2, "ssl": 3, "sasl_ssl": 4}
# A refused login or TLS handshake must stop a client within this many seconds.
FAIL_FAST_SECONDS = 15.0


@dataclass
class SecureBroker:
    """The session's secured broker: its ports and the secrets its script made."""

    state: Path
    port: int

    @property
    def secrets(self) -> Path:
        return self.state / "secure"

    @property
    def password(self) -> str:
        return (self.secrets / "sasl-password").read_text().strip()

    @property
    def key_password(self) -> str:
        return (self.secrets / "key-password").read_text().strip()

    def address(self, listener: str) -> str:
        return f"localhost:{self.port + LISTENERS[listener]}"

    def env(self, listener: str, mechanism: str = "SCRAM-SHA-256") -> dict[str, str]:
        """STREAMS_* security variables a user would set for one listener."""
        env = {"STREAMS_BOOTSTRAP_SERVERS": self.address(listener)}
        if listener.startswith("sasl"):
            env |= {
                "STREAMS_SECURITY_PROTOCOL": listener.upper(),
                "STREAMS_SASL_MECHANISM": mechanism,
                "STREAMS_SASL_USERNAME": "streams",
                # The file, as a container's secret would be mounted.
                "STREAMS_SASL_PASSWORD_FILE": str(self.secrets / "sasl-password"),
            }
        if listener.endswith("ssl"):
            env["STREAMS_SECURITY_PROTOCOL"] = listener.upper()
            env["STREAMS_SSL_CA_LOCATION"] = str(self.secrets / "ca.pem")
        if listener == "ssl":  # mutual TLS: the listener requires a client certificate
            env |= {
                "STREAMS_SSL_CERTIFICATE_LOCATION": str(self.secrets / "client.pem"),
                "STREAMS_SSL_KEY_LOCATION": str(self.secrets / "client.key"),
                "STREAMS_SSL_KEY_PASSWORD": self.key_password,
            }
        return env


@pytest.fixture(scope="session")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    """A second broker, secured, from the same jars; started once, stopped at the end."""
    state = tmp_path_factory.mktemp("kafka-secure")
    port = free_port_range(5)
    env = own_broker_env(state, port, KAFKA_SECURE="1")
    kafka_script("up", env)
    try:
        assert answers(f"localhost:{port}")
        yield SecureBroker(state, port)
    finally:
        kafka_script("down", env)


@pytest.fixture
def run_env(tmp_path: Path) -> dict[str, str]:
    """This test's own topics, group, data dir and web port (no security yet)."""
    prefix = f"s-{uuid.uuid4().hex[:12]}."
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        web_port = sock.getsockname()[1]
    return {
        "STREAMS_TOPIC_PREFIX": prefix,
        "STREAMS_APP_ID": f"app-{prefix.strip('.')}",
        "STREAMS_PARTITIONS": "2",
        "STREAMS_DATA_DIR": str(tmp_path / "data"),
        "STREAMS_WEB_PORT": str(web_port),
    }


def cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`streams ARGS` as a user runs it, the settings in its environment."""
    return streams_cli(*args, env=env, timeout=timeout)


def process_list() -> str:
    """Every process's command line, as `ps` shows them to any user (from /proc)."""
    lines = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            lines.append(cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:  # the process ended meanwhile
            continue
    assert len(lines) > 3, "no process list"
    return "\n".join(lines)


@pytest.mark.parametrize(
    ("listener", "mechanism"),
    [
        ("sasl_plaintext", "SCRAM-SHA-256"),
        ("sasl_ssl", "SCRAM-SHA-512"),
        ("sasl_ssl", "PLAIN"),  # as managed clouds (Confluent Cloud) take it
        ("ssl", ""),
    ],
)
def test_every_client_works_over_a_secured_listener_and_no_output_holds_a_secret(
    secure_broker: SecureBroker,
    run_env: dict[str, str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    listener: str,
    mechanism: str,
) -> None:
    """The SDK logs, the worker joins, tail/stats/versions read; no output holds a secret."""
    caplog.set_level(logging.DEBUG)
    env = {**run_env, **secure_broker.env(listener, mechanism), "STREAMS_LOG_LEVEL": "DEBUG"}
    secrets = [secure_broker.password, secure_broker.key_password]
    if listener == "sasl_ssl":  # one run passes the password directly, as a cloud user would
        del env["STREAMS_SASL_PASSWORD_FILE"]
        env["STREAMS_SASL_PASSWORD"] = secure_broker.password
    outputs: dict[str, str] = {}

    created = cli(env, "topics", "create")
    assert created.returncode == 0, created.stderr
    outputs["topics create"] = created.stdout + created.stderr

    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        worker.start()
        marker = f"contents-{uuid.uuid4().hex}"
        settings = Settings.from_env(env)
        streams.init(settings=settings)
        app = streams.get_application("secured")
        keys = [f"{marker}-{i}" for i in range(5)]
        app.log(
            inputs=[{"text": marker}] * 5,
            outputs=[{"label": marker}] * 5,
            join_keys=keys,
        )
        app.log(feedbacks=[{"thumbs_up": True}] * 5, join_keys=keys)
        streams.flush()
        bad = Producer({**librdkafka_config(settings), "partitioner": "murmur2_random"})
        bad.produce(settings.topic("feedback"), key=b"k", value=b"{not json")
        assert bad.flush(30) == 0

        joined = cli(env, "tail", "joined", "--from-beginning", "--max", "5", "--timeout", "60")
        assert joined.returncode == 0, joined.stderr
        records = [orjson.loads(line) for line in joined.stdout.splitlines()]
        assert sorted(r["join_key"] for r in records) == keys
        assert all(r["feedback"] == {"thumbs_up": True} for r in records)
        dead = cli(env, "tail", "deadletter", "--from-beginning", "--max", "1", "--timeout", "60")
        assert dead.returncode == 0, dead.stderr
        assert orjson.loads(dead.stdout)["reason"] == "invalid_json"
        stats = cli(env, "stats", "--application", "secured", "--field", "thumbs_up")
        assert stats.returncode == 0, stats.stderr
        version = ["--application", "secured"]
        created = cli(env, "versions", "create", *version, "--prompt", "Hi {{n}}", "--model", "m")
        assert created.returncode == 0, created.stderr
        listed = cli(env, "versions", "list", *version, "--format", "json")
        assert listed.returncode == 0, listed.stderr
        assert "Hi {{n}}" in listed.stdout
        outputs |= {
            "versions": created.stdout + created.stderr + listed.stdout + listed.stderr,
            "tail joined": joined.stdout + joined.stderr,
            "tail deadletter": dead.stdout + dead.stderr,
            "stats": stats.stdout + stats.stderr,
        }
        pages = {path: worker.http(path) for path in ("/metrics", "/health")}
        pages["/stats"] = worker.http("/stats?application=secured&field=thumbs_up")
        assert pages["/stats"][0] == 200, pages["/stats"]
        for path, (_, body) in pages.items():
            outputs[path] = body.decode()
            # The pages count and aggregate; they never show what a record held.
            assert marker not in outputs[path], f"{path} shows record contents"
        outputs["process list"] = process_list()
        assert worker.process is not None
        outputs["worker argv"] = Path(f"/proc/{worker.process.pid}/cmdline").read_text()
    finally:
        streams.close()
        worker.stop()
    outputs["worker log"] = worker.log_path.read_text()
    assert "DEBUG" in outputs["worker log"], "the worker did not log at every level"
    outputs["sdk log"] = "\n".join(
        f"{r.levelname} {r.name} {r.getMessage()} {r.args!r}" for r in caplog.records
    )
    for name, text in outputs.items():
        for secret in secrets:
            assert secret not in text, f"a secret appears in {name}"


@dataclass(frozen=True)
class Refusal:
    """A client set up wrong: the override, and what the message must point at."""

    listener: str
    override: dict[str, str]
    expected: str


def refusals(broker: SecureBroker, tmp_path: Path) -> dict[str, Refusal]:
    other_ca = make_ca(tmp_path / "other-ca")  # a CA the broker never heard of
    wrong = tmp_path / "wrong-password"
    wrong.write_text("wrong-" + uuid.uuid4().hex)
    return {
        "wrong_password": Refusal(
            "sasl_plaintext", {"STREAMS_SASL_PASSWORD_FILE": str(wrong)}, "refused the login"
        ),
        "untrusted_certificate": Refusal(
            "sasl_ssl", {"STREAMS_SSL_CA_LOCATION": str(other_ca)}, "TLS"
        ),
        "no_client_certificate": Refusal(
            "ssl",
            {
                "STREAMS_SSL_CERTIFICATE_LOCATION": "",
                "STREAMS_SSL_KEY_LOCATION": "",
                "STREAMS_SSL_KEY_PASSWORD": "",
            },
            "TLS",
        ),
    }


@pytest.mark.parametrize(
    "case", ["wrong_password", "untrusted_certificate", "no_client_certificate"]
)
def test_a_refused_client_stops_within_seconds_with_a_clear_message(
    secure_broker: SecureBroker,
    run_env: dict[str, str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    case: str,
) -> None:
    """Worker, tail, topics create, stats and the SDK stop with a clear message, not retries."""
    refusal = refusals(secure_broker, tmp_path)[case]
    env = {**run_env, **secure_broker.env(refusal.listener), **refusal.override}
    wrong_secret = Path(env.get("STREAMS_SASL_PASSWORD_FILE", "/dev/null")).read_text()
    outputs: dict[str, str] = {}
    commands = (
        ["worker"],
        ["tail", "joined", "--timeout", "120"],
        ["topics", "create"],
        ["stats", "--application", "a", "--field", "f", "--timeout", "120"],
    )
    for command in commands:
        started = time.monotonic()
        result = cli(env, *command, timeout=120)
        took = time.monotonic() - started
        text = result.stdout + result.stderr
        outputs[" ".join(command)] = text
        assert result.returncode != 0, text
        assert took < FAIL_FAST_SECONDS, f"streams {command[0]} took {took:.1f}s to give up"
        assert refusal.expected in text, text
        assert "check STREAMS_" in text, text
        # librdkafka logs each retry: a handful at most, not a loop.
        retries = sum("FAIL" in line for line in text.splitlines())
        assert retries <= 10, f"{retries} retry lines from streams {command[0]}"

    caplog.set_level(logging.DEBUG)
    streams.init(settings=Settings.from_env(env))
    try:
        started = time.monotonic()
        streams.get_application("refused").log(inputs={"a": 1}, outputs={"b": 2})
        with pytest.raises(DeliveryError) as raised:
            streams.flush(timeout=60)
        assert time.monotonic() - started < FAIL_FAST_SECONDS
        assert refusal.expected in str(raised.value)
        # Then quiet: the SDK let go of its producer instead of letting it retry forever.
        logged = len(caplog.records)
        time.sleep(2)
        assert caplog.records[logged:] == [], [r.getMessage() for r in caplog.records[logged:]]
    finally:
        streams.close(timeout=1)
    outputs["sdk"] = str(raised.value) + "\n".join(r.getMessage() for r in caplog.records)
    for name, text in outputs.items():
        assert secure_broker.password not in text, f"the password appears in {name}"
        if wrong_secret:
            assert wrong_secret not in text, f"the wrong password appears in {name}"
