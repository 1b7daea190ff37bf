"""How clients reach a secured cluster: STREAMS_SECURITY_PROTOCOL, STREAMS_SASL_*, STREAMS_SSL_*.

Parsed once, with `Settings`, into a frozen `Security`; a bad combination raises
`ConfigError` naming the variable. Secrets are held in `Secret`, whose repr and str
never show the value, so neither the settings' repr nor a log line can leak it.
`streams.kafka_config` turns this into each client library's own configuration.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from streams.errors import ConfigError

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
# Every variable this module reads, in the README's order; `streams.init(...)` takes each
# one as a keyword of the same name in lower case without the prefix.
VARIABLES = (
    "STREAMS_SECURITY_PROTOCOL",
    "STREAMS_SASL_MECHANISM",
    "STREAMS_SASL_USERNAME",
    "STREAMS_SASL_PASSWORD",
    "STREAMS_SASL_PASSWORD_FILE",
    "STREAMS_SSL_CA_LOCATION",
    "STREAMS_SSL_CERTIFICATE_LOCATION",
    "STREAMS_SSL_KEY_LOCATION",
    "STREAMS_SSL_KEY_PASSWORD",
)


class Secret:
    """A password: compared and hashed by value, never shown by repr() or str()."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The value itself, for the one place that hands it to a client library."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Security:
    """Protocol, SASL credentials and TLS files; the defaults speak PLAINTEXT."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: Secret | None = None
    ssl_ca_location: Path | None = None
    ssl_certificate_location: Path | None = None
    ssl_key_location: Path | None = None
    ssl_key_password: Secret | None = None

    @property
    def uses_sasl(self) -> bool:
        """True for SASL_PLAINTEXT and SASL_SSL."""
        return self.protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        """True for SSL and SASL_SSL."""
        return self.protocol.endswith("SSL")


def _text(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def _readable(env: Mapping[str, str], name: str, directory_ok: bool = False) -> Path | None:
    raw = _text(env, name)
    if raw is None:
        return None
    path = Path(raw).expanduser()
    if not (path.is_file() or (directory_ok and path.is_dir())):
        raise ConfigError(name, f"{raw!r} does not exist or is not a file")
    if not os.access(path, os.R_OK):
        raise ConfigError(name, f"{raw!r} is not readable by this process")
    return path


def _password(env: Mapping[str, str]) -> Secret | None:
    direct = env.get("STREAMS_SASL_PASSWORD", "")
    path = _readable(env, "STREAMS_SASL_PASSWORD_FILE")
    if direct and path is not None:
        raise ConfigError(
            "STREAMS_SASL_PASSWORD_FILE",
            "set either STREAMS_SASL_PASSWORD or STREAMS_SASL_PASSWORD_FILE, not both",
        )
    if path is not None:
        # A file written by `echo` or a secrets manager ends with a newline that is not part
        # of the password.
        direct = path.read_text(encoding="utf-8").rstrip("\r\n")
        if not direct:
            raise ConfigError("STREAMS_SASL_PASSWORD_FILE", f"{str(path)!r} is empty")
    return Secret(direct) if direct else None


def security_from_env(env: Mapping[str, str]) -> Security:
    """Read the security variables; raise `ConfigError` naming the first bad one."""
    protocol = (_text(env, "STREAMS_SECURITY_PROTOCOL") or "PLAINTEXT").upper()
    if protocol not in PROTOCOLS:
        raise ConfigError("STREAMS_SECURITY_PROTOCOL", f"{protocol!r} is not one of {PROTOCOLS}")
    mechanism = _text(env, "STREAMS_SASL_MECHANISM")
    mechanism = mechanism.upper() if mechanism else None
    if mechanism is not None and mechanism not in MECHANISMS:
        raise ConfigError("STREAMS_SASL_MECHANISM", f"{mechanism!r} is not one of {MECHANISMS}")
    security = Security(
        protocol=protocol,
        sasl_mechanism=mechanism,
        sasl_username=_text(env, "STREAMS_SASL_USERNAME"),
        sasl_password=_password(env),
        ssl_ca_location=_readable(env, "STREAMS_SSL_CA_LOCATION", directory_ok=True),
        ssl_certificate_location=_readable(env, "STREAMS_SSL_CERTIFICATE_LOCATION"),
        ssl_key_location=_readable(env, "STREAMS_SSL_KEY_LOCATION"),
        ssl_key_password=Secret(env["STREAMS_SSL_KEY_PASSWORD"])
        if env.get("STREAMS_SSL_KEY_PASSWORD")
        else None,
    )
    _check_combination(security)
    return security


def _refuse_unused(
    settings: Mapping[str, object], protocol: str, feature: str, instead: str
) -> None:
    # Set but unused is a mistake: credentials the user thinks are sent, and are not.
    for name, value in settings.items():
        if value is not None:
            raise ConfigError(
                name,
                f"is set but STREAMS_SECURITY_PROTOCOL={protocol} does not use {feature} "
                f"(use {instead})",
            )


def _check_combination(s: Security) -> None:
    sasl = {
        "STREAMS_SASL_MECHANISM": s.sasl_mechanism,
        "STREAMS_SASL_USERNAME": s.sasl_username,
        "STREAMS_SASL_PASSWORD": s.sasl_password,
    }
    if s.uses_sasl:
        for name, value in sasl.items():
            if value is None:
                also = " (or STREAMS_SASL_PASSWORD_FILE)" if name.endswith("PASSWORD") else ""
                raise ConfigError(name, f"needed{also} with STREAMS_SECURITY_PROTOCOL={s.protocol}")
    else:
        _refuse_unused(sasl, s.protocol, "SASL", "SASL_SSL or SASL_PLAINTEXT")
    tls: dict[str, Path | Secret | None] = {
        "STREAMS_SSL_CA_LOCATION": s.ssl_ca_location,
        "STREAMS_SSL_CERTIFICATE_LOCATION": s.ssl_certificate_location,
        "STREAMS_SSL_KEY_LOCATION": s.ssl_key_location,
        "STREAMS_SSL_KEY_PASSWORD": s.ssl_key_password,
    }
    if not s.uses_tls:
        _refuse_unused(tls, s.protocol, "TLS", "SSL or SASL_SSL")
    if (s.ssl_certificate_location is None) != (s.ssl_key_location is None):
        missing = (
            "STREAMS_SSL_KEY_LOCATION"
            if s.ssl_key_location is None
            else "STREAMS_SSL_CERTIFICATE_LOCATION"
        )
        raise ConfigError(missing, "a client certificate needs both its certificate and its key")
    if s.ssl_key_password is not None and s.ssl_key_location is None:
        raise ConfigError("STREAMS_SSL_KEY_PASSWORD", "is set but STREAMS_SSL_KEY_LOCATION is not")
