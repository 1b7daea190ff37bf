"""Settings: every `STREAMS_*` variable, parsed once into a frozen object.

A bad value raises `ConfigError` naming the variable, so a worker refuses to start
instead of running with a guess.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType

from streams.errors import ConfigError
from streams.security import Security, security_from_env

MAX_RETENTION = timedelta(days=90)
# How long feedback for an already swept prediction still reports `expired`.
EXPIRED_MEMORY = timedelta(days=1)

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_TOPIC_PREFIX = re.compile(r"^[A-Za-z0-9._-]*$")
_APP_ID = re.compile(r"^[A-Za-z0-9._-]+$")
GUARANTEES = ("at_least_once", "exactly_once")
# The broker's defaults for group.min.session.timeout.ms and group.max.session.timeout.ms:
# a session timeout outside them is refused when the worker joins its groups.
SESSION_TIMEOUT_RANGE = (timedelta(seconds=6), timedelta(minutes=30))
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def parse_duration(text: str, variable: str = "duration") -> timedelta:
    """Parse `250ms`, `3s`, `5m`, `12h`, `90d` or plain seconds into a timedelta."""
    match = _DURATION.match(text)
    if not match:
        raise ConfigError(
            variable, f"{text!r} is not a duration (use e.g. 250ms, 3s, 5m, 12h, 90d or seconds)"
        )
    number, unit = match.groups()
    try:
        value = timedelta(seconds=float(number) * _UNITS[unit or "s"])
    except OverflowError:
        raise ConfigError(variable, f"{text!r} is too long") from None
    # Compare the timedelta, not the float: `0.0001ms` rounds to zero microseconds.
    if value <= timedelta(0):
        raise ConfigError(variable, f"{text!r} must be longer than zero")
    return value


def format_duration(value: timedelta) -> str:
    """Write a duration the short way: `90d`, `12h`, `250ms`."""
    ms = round(value.total_seconds() * 1000)
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(name, f"{raw!r} is not a whole number") from None
    if not low <= value <= high:
        raise ConfigError(name, f"{value} is out of range ({low}..{high})")
    return value


def _web_host(host: str) -> str:
    if any(c.isspace() or c in "/@" for c in host):
        raise ConfigError("STREAMS_WEB_HOST", f"{host!r} is not a host name or address")
    return host


def _by_application(raw: str, variable: str) -> dict[str, timedelta]:
    result: dict[str, timedelta] = {}
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        application, sep, duration = item.partition("=")
        application = application.strip()
        if not sep or not application:
            raise ConfigError(variable, f"{item!r} is not application=duration (e.g. chat=7d)")
        if application in result:
            raise ConfigError(variable, f"{application!r} is listed twice: give it once")
        result[application] = _retention(duration, f"{variable} ({application})")
    return result


def _retention(text: str, variable: str) -> timedelta:
    # Refused rather than clamped: a value over the cap is a mistake to name, not to guess.
    value = parse_duration(text, variable)
    if value > MAX_RETENTION:
        raise ConfigError(
            variable, f"{text.strip()!r} is over the 90-day maximum (use 90d or less)"
        )
    return value


def _session_timeout(text: str) -> timedelta:
    value = parse_duration(text, "STREAMS_SESSION_TIMEOUT")
    low, high = SESSION_TIMEOUT_RANGE
    if not low <= value <= high:
        raise ConfigError(
            "STREAMS_SESSION_TIMEOUT",
            f"{text.strip()!r} is out of range ({format_duration(low)}..{format_duration(high)}, "
            "the broker's default group.min/max.session.timeout.ms)",
        )
    return value


@dataclass(frozen=True)
class Settings:
    """The worker's and the SDK's configuration; build it with `Settings.from_env()`."""

    bootstrap_servers: str = "localhost:9092"
    app_id: str = "streams-join"
    topic_prefix: str = ""
    partitions: int = 8
    retention: timedelta = MAX_RETENTION
    # Left out of the hash (a mapping has none) so a frozen Settings stays hashable.
    retention_by_application: Mapping[str, timedelta] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )
    pending_ttl: timedelta = timedelta(days=1)
    data_dir: Path = Path("./streams-data")
    web_port: int = 6066
    # Loopback unless told: the pages are for the operator, not for the network.
    web_host: str = "127.0.0.1"
    max_record_bytes: int = 1_000_000
    processing_guarantee: str = "at_least_once"
    # The contract promises at least a day; shorter is for tests of the forgetting itself.
    expired_memory: timedelta = EXPIRED_MEMORY
    security: Security = field(default_factory=Security)
    log_level: str = "INFO"
    # How long the SDK waits at exit (and by default in flush/close) for undelivered records.
    flush_timeout: timedelta = timedelta(seconds=30)
    # How long a worker that died without leaving its consumer groups (SIGKILL, exit 70)
    # keeps its partitions: librdkafka's default for the input group.
    session_timeout: timedelta = timedelta(seconds=45)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every `STREAMS_*` variable; raise `ConfigError` naming the first bad one."""
        env = os.environ if env is None else env
        defaults = cls()

        def text(name: str, default: str) -> str:
            value = env.get(name, "").strip()
            return value or default

        servers = text("STREAMS_BOOTSTRAP_SERVERS", defaults.bootstrap_servers)
        for server in servers.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65_535:
                raise ConfigError("STREAMS_BOOTSTRAP_SERVERS", f"{server!r} is not host:port")
        app_id = text("STREAMS_APP_ID", defaults.app_id)
        if not _APP_ID.match(app_id):
            raise ConfigError("STREAMS_APP_ID", f"{app_id!r} may hold only letters, digits, . _ -")
        prefix = env.get("STREAMS_TOPIC_PREFIX", "").strip()
        if not _TOPIC_PREFIX.match(prefix) or len(prefix) > 200:
            raise ConfigError(
                "STREAMS_TOPIC_PREFIX", f"{prefix!r} may hold only letters, digits, . _ -"
            )
        retention = defaults.retention
        if env.get("STREAMS_RETENTION", "").strip():
            retention = _retention(env["STREAMS_RETENTION"], "STREAMS_RETENTION")
        by_application = _by_application(
            env.get("STREAMS_RETENTION_BY_APPLICATION", ""), "STREAMS_RETENTION_BY_APPLICATION"
        )
        pending_ttl = defaults.pending_ttl
        if env.get("STREAMS_PENDING_TTL", "").strip():
            pending_ttl = parse_duration(env["STREAMS_PENDING_TTL"], "STREAMS_PENDING_TTL")
        expired_memory = defaults.expired_memory
        if env.get("STREAMS_EXPIRED_MEMORY", "").strip():
            expired_memory = parse_duration(env["STREAMS_EXPIRED_MEMORY"], "STREAMS_EXPIRED_MEMORY")
        data_dir = Path(text("STREAMS_DATA_DIR", str(defaults.data_dir)))
        if data_dir.exists() and not data_dir.is_dir():
            raise ConfigError(
                "STREAMS_DATA_DIR", f"{str(data_dir)!r} exists and is not a directory"
            )
        guarantee = text("STREAMS_PROCESSING_GUARANTEE", defaults.processing_guarantee).lower()
        if guarantee not in GUARANTEES:
            raise ConfigError(
                "STREAMS_PROCESSING_GUARANTEE",
                f"{guarantee!r} is not one of {', '.join(GUARANTEES)}",
            )
        log_level = text("STREAMS_LOG_LEVEL", defaults.log_level).upper()
        if log_level not in LOG_LEVELS:
            raise ConfigError(
                "STREAMS_LOG_LEVEL", f"{log_level!r} is not one of {', '.join(LOG_LEVELS)}"
            )
        flush_timeout = defaults.flush_timeout
        if env.get("STREAMS_FLUSH_TIMEOUT", "").strip():
            flush_timeout = parse_duration(env["STREAMS_FLUSH_TIMEOUT"], "STREAMS_FLUSH_TIMEOUT")
        session_timeout = defaults.session_timeout
        if env.get("STREAMS_SESSION_TIMEOUT", "").strip():
            session_timeout = _session_timeout(env["STREAMS_SESSION_TIMEOUT"])
        return cls(
            bootstrap_servers=servers,
            app_id=app_id,
            topic_prefix=prefix,
            partitions=_int(env, "STREAMS_PARTITIONS", defaults.partitions, 1, 10_000),
            retention=retention,
            retention_by_application=MappingProxyType(by_application),
            pending_ttl=pending_ttl,
            data_dir=data_dir,
            web_port=_int(env, "STREAMS_WEB_PORT", defaults.web_port, 1, 65_535),
            web_host=_web_host(text("STREAMS_WEB_HOST", defaults.web_host)),
            max_record_bytes=_int(
                env, "STREAMS_MAX_RECORD_BYTES", defaults.max_record_bytes, 1024, 100_000_000
            ),
            processing_guarantee=guarantee,
            expired_memory=expired_memory,
            security=security_from_env(env),
            log_level=log_level,
            flush_timeout=flush_timeout,
            session_timeout=session_timeout,
        )

    def retention_for(self, application: str) -> timedelta:
        """Retention of an application's predictions: its own setting, else the global one."""
        return self.retention_by_application.get(application, self.retention)

    @property
    def longest_retention(self) -> timedelta:
        """The longest retention any application has; sizes the input topics' retention."""
        return max([self.retention, *self.retention_by_application.values()])

    def topic(self, name: str) -> str:
        """A topic's full name, after `STREAMS_TOPIC_PREFIX`."""
        return f"{self.topic_prefix}{name}"
