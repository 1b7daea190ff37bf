"""Security settings: each library gets the same values in its own names; bad combinations named."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from confluent_kafka import KafkaError
from faust.auth import SASLCredentials, SSLCredentials
from faust.types.auth import AuthProtocol

import streams
from streams.errors import ConfigError, DeliveryError
from streams.kafka_config import (
    AuthenticationFailed,
    auth_failure,
    faust_broker_options,
    librdkafka_config,
    ssl_context,
)
from streams.sdk.producer import Client
from streams.security import Secret
from streams.settings import Settings

pytestmark = pytest.mark.unit

PASSWORD = "s3cr3t-never-shown"
OPENSSL_REQ = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-days", "1"]


def make_ca(directory: Path) -> Path:
    """A self-signed CA certificate (openssl), enough for a TLS context to load."""
    directory.mkdir(parents=True, exist_ok=True)
    key, cert = str(directory / "ca.key"), str(directory / "ca.pem")
    subprocess.run(
        [*OPENSSL_REQ, "-nodes", "-keyout", key, "-out", cert, "-subj", "/CN=a-test-ca"],
        check=True,
        capture_output=True,
    )
    return directory / "ca.pem"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_ca(tmp_path_factory.mktemp("ca"))


def sasl_env(**extra: str) -> dict[str, str]:
    return {
        "STREAMS_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "STREAMS_SASL_MECHANISM": "SCRAM-SHA-256",
        "STREAMS_SASL_USERNAME": "alice",
        "STREAMS_SASL_PASSWORD": PASSWORD,
        **extra,
    }


def test_plaintext_is_the_default_and_adds_nothing() -> None:
    settings = Settings.from_env({})
    assert settings.security.protocol == "PLAINTEXT"
    assert librdkafka_config(settings) == {
        "bootstrap.servers": "localhost:9092",
        "security.protocol": "PLAINTEXT",
    }
    assert faust_broker_options(settings) == {"broker": ["kafka://localhost:9092"]}
    assert ssl_context(settings) is None


def test_sasl_ssl_reaches_librdkafka_and_faust_in_their_own_names(ca: Path) -> None:
    env = sasl_env(
        STREAMS_BOOTSTRAP_SERVERS="a:9096,b:9096",
        STREAMS_SECURITY_PROTOCOL="sasl_ssl",
        STREAMS_SASL_MECHANISM="scram-sha-512",
        STREAMS_SSL_CA_LOCATION=str(ca),
    )
    settings = Settings.from_env(env)
    assert librdkafka_config(settings) == {
        "bootstrap.servers": "a:9096,b:9096",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "alice",
        "sasl.password": PASSWORD,
        "ssl.ca.location": str(ca),
    }
    options = faust_broker_options(settings)
    assert options["broker"] == ["kafka://a:9096", "kafka://b:9096"]
    credentials = options["broker_credentials"]
    assert isinstance(credentials, SASLCredentials)
    assert credentials.protocol == AuthProtocol.SASL_SSL
    assert credentials.mechanism.value == "SCRAM-SHA-512"
    assert (credentials.username, credentials.password) == ("alice", PASSWORD)
    assert credentials.ssl_context is not None
    assert PASSWORD not in repr(credentials)


def test_sasl_plaintext_gives_faust_sasl_without_tls() -> None:
    credentials = faust_broker_options(Settings.from_env(sasl_env()))["broker_credentials"]
    assert isinstance(credentials, SASLCredentials)
    assert credentials.protocol == AuthProtocol.SASL_PLAINTEXT
    assert credentials.ssl_context is None


def test_mutual_tls_passes_the_client_certificate(tmp_path: Path, ca: Path) -> None:
    key, cert = tmp_path / "client.key", tmp_path / "client.pem"
    subprocess.run(
        [
            *OPENSSL_REQ,
            "-subj",
            "/CN=client",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-passout",
            "pass:key-pass",
        ],
        check=True,
        capture_output=True,
    )
    env = {
        "STREAMS_SECURITY_PROTOCOL": "SSL",
        "STREAMS_SSL_CA_LOCATION": str(ca),
        "STREAMS_SSL_CERTIFICATE_LOCATION": str(cert),
        "STREAMS_SSL_KEY_LOCATION": str(key),
        "STREAMS_SSL_KEY_PASSWORD": "key-pass",
    }
    settings = Settings.from_env(env)
    config = librdkafka_config(settings)
    assert config["ssl.certificate.location"] == str(cert)
    assert config["ssl.key.location"] == str(key)
    assert config["ssl.key.password"] == "key-pass"
    assert "sasl.mechanism" not in config
    credentials = faust_broker_options(settings)["broker_credentials"]
    assert isinstance(credentials, SSLCredentials)  # the key loaded with its password
    assert "key-pass" not in repr(settings)


def test_the_password_can_come_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    env = sasl_env(STREAMS_SASL_PASSWORD_FILE=str(secret))
    del env["STREAMS_SASL_PASSWORD"]
    settings = Settings.from_env(env)
    assert librdkafka_config(settings)["sasl.password"] == PASSWORD


@pytest.mark.parametrize(
    ("given", "variable"),
    [
        ({"STREAMS_SECURITY_PROTOCOL": "TLS"}, "STREAMS_SECURITY_PROTOCOL"),
        (sasl_env(STREAMS_SASL_MECHANISM="GSSAPI"), "STREAMS_SASL_MECHANISM"),
        (sasl_env(STREAMS_SASL_MECHANISM=""), "STREAMS_SASL_MECHANISM"),
        (sasl_env(STREAMS_SASL_USERNAME=""), "STREAMS_SASL_USERNAME"),
        (sasl_env(STREAMS_SASL_PASSWORD=""), "STREAMS_SASL_PASSWORD"),
        # A mechanism without credentials, on a protocol that would not send them anyway.
        ({"STREAMS_SASL_MECHANISM": "PLAIN"}, "STREAMS_SASL_MECHANISM"),
        ({"STREAMS_SASL_PASSWORD": PASSWORD}, "STREAMS_SASL_PASSWORD"),
        (sasl_env(STREAMS_SASL_PASSWORD_FILE="/nonexistent/pw"), "STREAMS_SASL_PASSWORD_FILE"),
        (
            {"STREAMS_SECURITY_PROTOCOL": "SSL", "STREAMS_SSL_CA_LOCATION": "/nonexistent/ca.pem"},
            "STREAMS_SSL_CA_LOCATION",
        ),
        ({"STREAMS_SSL_CA_LOCATION": "/etc/hostname"}, "STREAMS_SSL_CA_LOCATION"),
        (
            {"STREAMS_SECURITY_PROTOCOL": "SSL", "STREAMS_SSL_CERTIFICATE_LOCATION": "/etc/hosts"},
            "STREAMS_SSL_KEY_LOCATION",
        ),
        (
            {"STREAMS_SECURITY_PROTOCOL": "SSL", "STREAMS_SSL_KEY_LOCATION": "/etc/hostname"},
            "STREAMS_SSL_CERTIFICATE_LOCATION",
        ),
        (
            {"STREAMS_SECURITY_PROTOCOL": "SSL", "STREAMS_SSL_KEY_PASSWORD": "x"},
            "STREAMS_SSL_KEY_PASSWORD",
        ),
        ({"STREAMS_WEB_HOST": "0.0.0.0 8080"}, "STREAMS_WEB_HOST"),
    ],
)
def test_a_bad_combination_stops_naming_the_variable(given: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(given)
    assert raised.value.variable == variable
    assert str(raised.value).startswith(f"{variable}: ")
    assert PASSWORD not in str(raised.value)


def test_password_and_password_file_together_are_refused(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text(PASSWORD)
    with pytest.raises(ConfigError, match="not both") as raised:
        Settings.from_env(sasl_env(STREAMS_SASL_PASSWORD_FILE=str(secret)))
    assert raised.value.variable == "STREAMS_SASL_PASSWORD_FILE"


def test_an_empty_password_file_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("\n")
    env = sasl_env(STREAMS_SASL_PASSWORD_FILE=str(secret))
    del env["STREAMS_SASL_PASSWORD"]
    with pytest.raises(ConfigError, match="empty"):
        Settings.from_env(env)


def test_secrets_never_show_in_the_settings_repr() -> None:
    settings = Settings.from_env(sasl_env())
    assert PASSWORD not in repr(settings)
    assert PASSWORD not in str(settings.security)
    assert "Secret('***')" in repr(settings)
    assert settings.security.sasl_password == Secret(PASSWORD)
    assert hash(settings) == hash(Settings.from_env(sasl_env()))


def test_the_web_server_binds_loopback_unless_told() -> None:
    assert Settings.from_env({}).web_host == "127.0.0.1"
    assert Settings.from_env({"STREAMS_WEB_HOST": "0.0.0.0"}).web_host == "0.0.0.0"


@pytest.mark.usefixtures("clean_environ")
def test_init_takes_the_security_settings_as_keywords(ca: Path) -> None:
    client = streams.init(
        "broker:9096",
        security_protocol="SASL_SSL",
        sasl_mechanism="PLAIN",
        sasl_username="key",
        sasl_password=PASSWORD,
        ssl_ca_location=str(ca),
    )
    try:
        security = client.settings.security
        assert (security.protocol, security.sasl_mechanism) == ("SASL_SSL", "PLAIN")
        assert security.ssl_ca_location == ca
    finally:
        streams.close(timeout=0.1)


@pytest.mark.usefixtures("clean_environ")
def test_init_keywords_replace_the_environment_and_a_bad_one_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STREAMS_SASL_MECHANISM", "PLAIN")  # bad alone; replaced as a whole
    client = streams.init("broker:9094", **{"security_protocol": "PLAINTEXT"})
    assert client.settings.security.sasl_mechanism is None
    streams.close(timeout=0.1)
    with pytest.raises(ConfigError) as raised:
        streams.init("broker:9094", security_protocol="SASL_SSL", sasl_mechanism="PLAIN")
    assert raised.value.variable == "STREAMS_SASL_USERNAME"
    with pytest.raises(ConfigError) as raised:
        streams.init(settings=Settings(), sasl_password=PASSWORD)
    assert raised.value.variable == "STREAMS_SASL_PASSWORD"


def test_refused_logins_and_failed_tls_are_told_apart_from_other_errors() -> None:
    settings = Settings.from_env(sasl_env())
    refused = auth_failure(
        settings, KafkaError(KafkaError._AUTHENTICATION, "SASL authentication error: invalid")
    )
    assert refused is not None
    assert "STREAMS_SASL_USERNAME='alice'" in str(refused)
    assert PASSWORD not in str(refused)
    tls = auth_failure(
        settings,
        KafkaError(KafkaError._TRANSPORT, "Receive failed: error:0A000412:SSL routines::bad cert"),
    )
    assert tls is not None
    assert "STREAMS_SSL_CA_LOCATION" in str(tls)
    assert auth_failure(settings, KafkaError(KafkaError._TRANSPORT, "Connection refused")) is None
    assert auth_failure(settings, KafkaError(KafkaError._ALL_BROKERS_DOWN)) is None


class QueuedForever:
    """A producer whose records never leave (a broker that refuses the login)."""

    purged = False

    def produce(self, topic: str, value: bytes, key: bytes) -> None:
        return None

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        time.sleep(min(timeout, 0.05))
        return 0 if self.purged else 1

    def purge(self, in_queue: bool, in_flight: bool, blocking: bool) -> None:
        self.purged = True

    def __len__(self) -> int:
        return 0 if self.purged else 1


def test_a_refused_login_ends_the_sdk_flush_at_once_and_lets_the_producer_go() -> None:
    settings = Settings.from_env(sasl_env())
    stuck = QueuedForever()
    client = Client(settings, producer=stuck)
    client.send("prediction", [b"k"], [b"{}"])
    client.on_error(KafkaError(KafkaError._AUTHENTICATION, "SASL authentication error"))
    started = time.monotonic()
    with pytest.raises(DeliveryError, match="refused the login") as raised:
        client.flush(timeout=30)
    assert time.monotonic() - started < 5
    assert PASSWORD not in str(raised.value)
    assert stuck.purged
    assert client.producer is not stuck  # librdkafka would retry (and log) forever
    with pytest.raises(AuthenticationFailed):
        client.send("prediction", [b"k"], [b"{}"])
