"""STREAMS_SESSION_TIMEOUT reaches both consumer groups of a worker, with a heartbeat that fits."""

from __future__ import annotations

from datetime import timedelta

import pytest

from streams.settings import Settings
from streams.worker.app import faust_app
from streams.worker.consumer import faust_group_timing, group_timing

pytestmark = pytest.mark.unit


def test_the_default_is_librdkafkas_own() -> None:
    # librdkafka's defaults: session.timeout.ms 45000, heartbeat.interval.ms 3000.
    assert group_timing(Settings()) == {"session.timeout.ms": 45_000, "heartbeat.interval.ms": 3000}


@pytest.mark.parametrize(
    ("session", "heartbeat_ms"),
    [("6s", 2000), ("9s", 3000), ("10s", 3000), ("7500ms", 2500), ("30m", 3000)],
)
def test_the_heartbeat_is_at_most_a_third_of_the_session(session: str, heartbeat_ms: int) -> None:
    settings = Settings.from_env({"STREAMS_SESSION_TIMEOUT": session})
    session_ms = round(settings.session_timeout.total_seconds() * 1000)

    assert group_timing(settings) == {
        "session.timeout.ms": session_ms,
        "heartbeat.interval.ms": heartbeat_ms,
    }
    assert faust_group_timing(settings)["broker_heartbeat_interval"] == heartbeat_ms / 1000


@pytest.mark.parametrize("session", [timedelta(seconds=6), timedelta(minutes=30)])
def test_fausts_consumer_takes_the_same_session_timeout(session: timedelta) -> None:
    settings = Settings(session_timeout=session, web_port=6066)
    conf = faust_app(settings).conf

    assert conf.broker_session_timeout == session.total_seconds()
    # faust refuses a session timeout over its request timeout when its consumer starts.
    assert conf.broker_request_timeout >= conf.broker_session_timeout
    assert conf.broker_heartbeat_interval == min(3.0, session.total_seconds() / 3)
