"""The one place that turns `Settings` into each Kafka client library's connection settings.

Every client of the project starts from here: librdkafka (confluent-kafka: the SDK's
producer, the worker's outbox and input clients, the admin client, `streams tail`,
`streams stats`, the demo, the benchmark) takes `librdkafka_config(settings)`; faust
(aiokafka underneath) takes `faust_broker_options(settings)`. Callers add their own
tuning on top, never connection or security settings.

librdkafka retries a refused login or a failed TLS handshake forever, logging each
attempt. `auth_failure(error)` recognises those errors so clients can stop at once
with `AuthenticationFailed`, whose message names the settings to check and never
holds a secret. A new librdkafka client is built as

    Consumer({**librdkafka_config(settings), "error_cb": error_callback(settings, log), ...})

so that poll/consume/flush raise `AuthenticationFailed`; ask for metadata with
`list_topics(client, timeout)`, which a refused login cannot keep waiting.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException

from streams.errors import StreamsError
from streams.settings import Settings

METADATA_SLICE_SECONDS = 0.25
# librdkafka (2.10 and later) forgets a broker that a metadata response leaves out, and a
# broker shutting down answers without itself: a client of a single-broker cluster (or of
# brokers all restarted) then knows no broker at all, and goes back to bootstrap.servers
# only after `metadata.recovery.rebootstrap.trigger.ms`, 5 minutes by default. Seen with
# the worker's producer across a 10 s broker restart: nothing sent until its transaction
# timed out. Clients that must outlive a broker restart (the worker's) set it shorter.
REBOOTSTRAP = {"metadata.recovery.rebootstrap.trigger.ms": 10_000}


class AuthenticationFailed(StreamsError):
    """The broker refused our credentials, or TLS with it failed: retrying will not help."""

    reason = "authentication"


def librdkafka_config(settings: Settings) -> dict[str, str]:
    """`bootstrap.servers` and the security settings, in librdkafka's names."""
    s = settings.security
    config = {"bootstrap.servers": settings.bootstrap_servers, "security.protocol": s.protocol}
    if s.uses_sasl:
        # Settings made sure all three are there.
        assert s.sasl_mechanism is not None
        assert s.sasl_username is not None
        assert s.sasl_password is not None
        config["sasl.mechanism"] = s.sasl_mechanism
        config["sasl.username"] = s.sasl_username
        config["sasl.password"] = s.sasl_password.reveal()
    if s.ssl_ca_location is not None:
        config["ssl.ca.location"] = str(s.ssl_ca_location)
    if s.ssl_certificate_location is not None and s.ssl_key_location is not None:
        config["ssl.certificate.location"] = str(s.ssl_certificate_location)
        config["ssl.key.location"] = str(s.ssl_key_location)
    if s.ssl_key_password is not None:
        config["ssl.key.password"] = s.ssl_key_password.reveal()
    return config


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """A TLS context for Python clients (aiokafka): the CA (else the system's) and client cert."""
    s = settings.security
    if not s.uses_tls:
        return None
    ca = s.ssl_ca_location
    context = ssl.create_default_context(
        cafile=str(ca) if ca is not None and ca.is_file() else None,
        capath=str(ca) if ca is not None and ca.is_dir() else None,
    )
    if s.ssl_certificate_location is not None and s.ssl_key_location is not None:
        password = s.ssl_key_password.reveal() if s.ssl_key_password is not None else None
        context.load_cert_chain(s.ssl_certificate_location, s.ssl_key_location, password)
    return context


class RedactSaslExchange(logging.Filter):
    """Hides the SASL messages aiokafka logs at DEBUG: PLAIN's carries the password as is."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Replace every SaslAuthenticate request or response among the record's arguments."""
        if isinstance(record.args, tuple) and any(
            type(arg).__name__.startswith("SaslAuthenticate") for arg in record.args
        ):
            record.args = tuple(
                f"<{type(arg).__name__} redacted>"
                if type(arg).__name__.startswith("SaslAuthenticate")
                else arg
                for arg in record.args
            )
        return True


_REDACT = RedactSaslExchange()


def faust_broker_options(settings: Settings) -> dict[str, Any]:
    """`broker` and `broker_credentials` for `faust.App(...)`, from the same settings.

    Also keeps aiokafka's DEBUG log of each request from showing the SASL exchange.
    """
    from faust.auth import SASLCredentials, SSLCredentials  # only the worker needs faust

    logging.getLogger("aiokafka.conn").addFilter(_REDACT)  # adding it twice adds it once
    s = settings.security
    options: dict[str, Any] = {
        "broker": [f"kafka://{server.strip()}" for server in settings.bootstrap_servers.split(",")]
    }
    context = ssl_context(settings)
    if s.uses_sasl:
        assert s.sasl_password is not None  # checked by Settings
        options["broker_credentials"] = SASLCredentials(
            username=s.sasl_username,
            password=s.sasl_password.reveal(),
            ssl_context=context,
            mechanism=s.sasl_mechanism,
        )
    elif context is not None:
        options["broker_credentials"] = SSLCredentials(context)
    return options


def auth_failure(settings: Settings, error: KafkaError) -> AuthenticationFailed | None:
    """The error to stop with when `error` says the login or the TLS handshake failed, else None."""
    code, text = error.code(), error.str()
    s = settings.security
    if code == KafkaError._AUTHENTICATION:
        if s.uses_sasl:
            check = (
                f"STREAMS_SASL_USERNAME={s.sasl_username!r}, STREAMS_SASL_PASSWORD and "
                f"STREAMS_SASL_MECHANISM={s.sasl_mechanism}"
            )
        else:
            check = "STREAMS_SECURITY_PROTOCOL and the client certificate"
        return AuthenticationFailed(f"the broker refused the login ({text}); check {check}")
    # A refused client certificate arrives as a transport error carrying a TLS alert.
    if code == KafkaError._SSL or (code == KafkaError._TRANSPORT and "SSL routines" in text):
        return AuthenticationFailed(
            f"TLS with the broker failed ({text}); check STREAMS_SSL_CA_LOCATION (the CA "
            "that signed the broker's certificate) and, for mutual TLS, "
            "STREAMS_SSL_CERTIFICATE_LOCATION and STREAMS_SSL_KEY_LOCATION"
        )
    return None


def error_callback(
    settings: Settings, logger: logging.Logger | None
) -> Callable[[KafkaError], None]:
    """An `error_cb` raising `AuthenticationFailed` (out of poll/consume/flush); logs the rest.

    confluent-kafka re-raises an exception of a callback from the call that served it.
    With no `logger` the rest is not logged: the caller reports the failure itself.
    """

    def on_error(error: KafkaError) -> None:
        failure = auth_failure(settings, error)
        if failure is not None:
            raise failure
        if logger is not None:
            logger.warning("kafka_error error=%s", error.str())

    return on_error


class MetadataClient(Protocol):
    """An AdminClient or a Consumer: both list topics and serve their callbacks in poll()."""

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any: ...  # noqa: D102
    def poll(self, timeout: float) -> Any: ...  # noqa: D102


def list_topics(client: MetadataClient, timeout: float, topic: str | None = None) -> Any:
    """The cluster's metadata; raises `AuthenticationFailed` within a second of a refused login.

    A metadata request does not serve the error callback (`error_callback`), and
    librdkafka would retry a refused login until `timeout` (a failed TLS handshake
    about 20 times a second, each logged): ask in short slices and serve the callbacks
    in between. The connection carries on across slices, so a slow cluster only takes
    more of them.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            wait = max(0.05, min(METADATA_SLICE_SECONDS, deadline - time.monotonic()))
            return client.list_topics(topic, timeout=wait)
        except KafkaException as error:
            if error.args[0].code() not in (KafkaError._TRANSPORT, KafkaError._TIMED_OUT):
                raise
            client.poll(0)  # raises AuthenticationFailed when that is why
            if time.monotonic() >= deadline:
                raise
