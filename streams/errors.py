"""One exception root for the project; subclasses carry a machine-readable reason."""

from __future__ import annotations

from collections.abc import Sequence


class StreamsError(Exception):
    """Root of every error this package raises on purpose."""

    reason: str = "error"


class ConfigError(StreamsError, ValueError):
    """A setting is missing or malformed; the message names the variable."""

    reason = "config"

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


class RecordError(StreamsError):
    """An input record cannot be used; `reason` goes into the dead-letter record."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class DeliveryError(StreamsError):
    """Records were not delivered to Kafka; lists their join keys."""

    reason = "delivery"

    def __init__(self, join_keys: Sequence[str], errors: Sequence[str]) -> None:
        shown = ", ".join(join_keys[:20]) + (" ..." if len(join_keys) > 20 else "")
        first = errors[0] if errors else "unknown error"
        super().__init__(
            f"{len(join_keys)} record(s) not delivered (first error: {first}); join keys: {shown}"
        )
        self.join_keys = list(join_keys)
        self.errors = list(errors)


class BrokerTimeout(StreamsError):
    """The broker did not answer within the caller's timeout; the message says what waited."""

    reason = "broker_timeout"


class BrokerUnreachable(StreamsError):
    """No Kafka broker answers at STREAMS_BOOTSTRAP_SERVERS; the message says what to do."""

    reason = "broker_unreachable"
