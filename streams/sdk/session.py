"""The SDK's process-wide client: `init`, `get_application`, `flush`, `close`, the exit flush.

One client per process, as Gantry's: `init()` starts it (a previous one is flushed and
closed), `get_application(name)` logs through it, an exit hook flushes it and logs the
join keys of anything that was not delivered.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import warnings
from dataclasses import replace
from datetime import timedelta
from typing import Any

from streams.errors import DeliveryError, StreamsError
from streams.sdk.client import Application
from streams.sdk.producer import Client
from streams.sdk.records import LogError
from streams.security import VARIABLES as SECURITY_VARIABLES
from streams.security import security_from_env
from streams.settings import Settings

log = logging.getLogger(__name__)
# Gantry's `init` keywords that mean nothing here, and what to do instead.
GANTRY_INIT_IGNORED = {
    "api_key": "no key is needed: the SDK writes to your Kafka (STREAMS_BOOTSTRAP_SERVERS)",
    "environment": "tag the records instead: log(..., tags={'env': 'prod'})",
    "send_in_background": "logging is always in the background; streams.flush() waits for it",
}
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class GantryKeywordWarning(UserWarning):
    """A Gantry keyword was given that has no effect here; the message says what to use."""


_client: Client | None = None
_client_lock = threading.Lock()
_exit_hook: list[bool] = []


def init(
    bootstrap_servers: str | None = None,
    *,
    settings: Settings | None = None,
    logging_level: str | int | None = None,
    security_protocol: str | None = None,
    sasl_mechanism: str | None = None,
    sasl_username: str | None = None,
    sasl_password: str | None = None,
    sasl_password_file: str | None = None,
    ssl_ca_location: str | None = None,
    ssl_certificate_location: str | None = None,
    ssl_key_location: str | None = None,
    ssl_key_password: str | None = None,
    flush_timeout: float | None = None,
    **producer_config: Any,
) -> Client:
    """Start the SDK for this process (like Gantry's `init`); call once, before logging.

    `bootstrap_servers` defaults to STREAMS_BOOTSTRAP_SERVERS, else localhost:9092; topic
    names and the record size limit come from the other STREAMS_* variables (or
    `settings`). `logging_level` (`"DEBUG"` ... `"CRITICAL"`) sets the level of the SDK's
    loggers (`streams`), as Gantry's did. Gantry's `api_key`, `environment` and
    `send_in_background` are accepted and ignored, with one `GantryKeywordWarning` that
    says what to use instead. The security keywords stand for the variables of the same
    name (`sasl_username` for STREAMS_SASL_USERNAME, ...) and replace the environment's
    security settings (or those of `settings`) as a whole; a bad combination raises
    `ConfigError` naming the variable. `flush_timeout` (seconds; default
    STREAMS_FLUSH_TIMEOUT, 30 s) bounds the wait for delivery at exit and in
    `flush()`/`close()`. Other keywords are librdkafka settings (`linger_ms=20` or
    `**{"linger.ms": 20}`). A previous client is flushed and closed.
    """
    global _client
    ignored = {
        name: producer_config.pop(name) for name in GANTRY_INIT_IGNORED if name in producer_config
    }
    if ignored:
        advice = "; ".join(f"{name}: {GANTRY_INIT_IGNORED[name]}" for name in ignored)
        warnings.warn(
            f"streams.init: Gantry's keyword(s) {', '.join(ignored)} have no effect here "
            f"and were ignored ({advice})",
            GantryKeywordWarning,
            stacklevel=2,
        )
    if logging_level is not None:
        level = logging_level.upper() if isinstance(logging_level, str) else logging_level
        if level not in _LEVELS and not (isinstance(level, int) and not isinstance(level, bool)):
            raise LogError("logging_level", f"{logging_level!r} is not one of {', '.join(_LEVELS)}")
        logging.getLogger("streams").setLevel(level)
    given = {
        "STREAMS_SECURITY_PROTOCOL": security_protocol,
        "STREAMS_SASL_MECHANISM": sasl_mechanism,
        "STREAMS_SASL_USERNAME": sasl_username,
        "STREAMS_SASL_PASSWORD": sasl_password,
        "STREAMS_SASL_PASSWORD_FILE": sasl_password_file,
        "STREAMS_SSL_CA_LOCATION": ssl_ca_location,
        "STREAMS_SSL_CERTIFICATE_LOCATION": ssl_certificate_location,
        "STREAMS_SSL_KEY_LOCATION": ssl_key_location,
        "STREAMS_SSL_KEY_PASSWORD": ssl_key_password,
    }
    security = {name: value for name, value in given.items() if value is not None}
    settings = _init_settings(bootstrap_servers, settings, security)
    if flush_timeout is not None:
        if not isinstance(flush_timeout, int | float) or not 0 < flush_timeout < 1e9:
            raise LogError("flush_timeout", f"seconds above zero, not {flush_timeout!r}")
        settings = replace(settings, flush_timeout=timedelta(seconds=flush_timeout))
    client = Client(settings, producer_config)
    with _client_lock:
        previous, _client = _client, client
        if not _exit_hook:
            atexit.register(_flush_at_exit)
            _exit_hook.append(True)
    log.info(
        "sdk_init bootstrap_servers=%s topic_prefix=%s security_protocol=%s",
        settings.bootstrap_servers,
        settings.topic_prefix,
        settings.security.protocol,
    )
    if previous is not None and not previous.closed:
        previous.close()
    return client


def _init_settings(
    bootstrap_servers: str | None, settings: Settings | None, security: dict[str, str]
) -> Settings:
    """`init`'s settings: the environment's (or `settings`), then what the keywords change."""
    if settings is None:
        env = dict(os.environ)
        if bootstrap_servers is not None:
            env["STREAMS_BOOTSTRAP_SERVERS"] = bootstrap_servers
        if security:
            env = {k: v for k, v in env.items() if k not in SECURITY_VARIABLES} | security
        return Settings.from_env(env)
    if bootstrap_servers is not None:
        settings = replace(settings, bootstrap_servers=bootstrap_servers)
    if security:
        settings = replace(settings, security=security_from_env(security))
    return settings


def _current() -> Client:
    client = _client
    if client is None:
        raise StreamsError("the SDK is not started: call streams.init() first")
    return client


def get_application(name: str) -> Application:
    """The `Application` called `name`, logging through the client `init()` started."""
    return Application(_current(), name)


def flush(timeout: float | None = None) -> None:
    """Wait until every record logged so far is delivered; raise `DeliveryError` naming the rest.

    `timeout` defaults to the flush timeout `init()` set (STREAMS_FLUSH_TIMEOUT, 30 s).
    """
    _current().flush(timeout)


def close(timeout: float | None = None) -> None:
    """Flush and stop the SDK; raises like `flush`. `init()` starts it again."""
    global _client
    with _client_lock:
        client, _client = _client, None
    if client is not None and not client.closed:
        client.close(timeout)


def _flush_at_exit() -> None:
    client = _client
    if client is None or client.closed:
        return
    waiting = len(client.producer)
    if waiting:
        # Said before the wait, so a process that seems to hang at exit says why.
        log.warning(
            "exit_flush_waiting pending=%d timeout_s=%g (STREAMS_FLUSH_TIMEOUT bounds it)",
            waiting,
            client.settings.flush_timeout.total_seconds(),
        )
    try:
        client.close()
    except DeliveryError as error:
        log.error("exit_undelivered count=%d detail=%s", len(error.join_keys), error)
