"""The SDK as a strict logger: NaN and infinity refused at the call, a bounded wait at exit."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_sdk import FakeProducer

import streams
from streams.errors import BrokerUnreachable
from streams.sdk.client import Application
from streams.sdk.consumer import read_topic
from streams.sdk.producer import Client
from streams.sdk.records import LogError, build_batch
from streams.settings import Settings

pytestmark = pytest.mark.unit

NOW_MS = 1_800_000_000_000
NOWHERE = "127.0.0.1:1"


def build(**call: Any) -> list[dict[str, Any]]:
    batch = build_batch("chat", now_ms=NOW_MS, max_bytes=1_000_000, **call)
    return [orjson.loads(value) for value in batch.values]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda x: {"inputs": {"score": x}, "outputs": {}}, "inputs['score']"),
        (lambda x: {"inputs": [{}, {}], "outputs": [{}, {"p": [0.5, x]}]}, "outputs[1]['p'][1]"),
        (
            lambda x: {"inputs": {"a": {"b": {"c": x}}}, "outputs": {}, "version": 3},
            "inputs['a']['b']['c']",
        ),
        (lambda x: {"feedbacks": [{"rating": x}], "join_keys": ["k"]}, "feedbacks[0]['rating']"),
        (
            lambda x: {"inputs": {}, "outputs": {}, "feedbacks": {"r": (1, x)}, "join_keys": "k"},
            "feedbacks['r'][1]",
        ),
    ],
)
def test_nan_and_infinity_are_refused_naming_the_field(bad: float, call: Any, field: str) -> None:
    with pytest.raises(LogError) as raised:
        build(**call(bad))

    assert raised.value.field == field
    assert "NaN and infinity" in str(raised.value)


def test_none_and_the_text_null_still_pass() -> None:
    records = build(
        inputs=[{"missing": None, "word": "null", "x": 1.5}, {"nested": [None, {"n": None}]}],
        outputs=[{"label": None}, {}],
    )

    assert records[0]["inputs"] == {"missing": None, "word": "null", "x": 1.5}
    assert records[1]["inputs"] == {"nested": [None, {"n": None}]}


finite = st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | finite | st.text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(), children),
    max_leaves=10,
)


@given(st.dictionaries(st.text(), json_values), st.sampled_from([None, "v1"]))
def test_finite_values_are_never_refused(inputs: dict[str, Any], version: str | None) -> None:
    (record,) = build(inputs=[inputs], outputs=[{}], version=version)

    assert record["inputs"] == inputs


def test_a_refused_call_sends_nothing() -> None:
    fake = FakeProducer()
    fake.client = Client(Settings(), producer=fake)
    app = Application(fake.client, "chat")

    with pytest.raises(LogError, match=r"outputs\[1\]\['s'\]"):
        app.log(inputs=[{}, {}], outputs=[{"s": 0.5}, {"s": math.nan}])
    assert fake.sent == []
    app.log(inputs=[{}, {}], outputs=[{"s": 0.5}, {"s": None}])
    assert len(fake.sent) == 2


EXIT_SCRIPT = """
import streams
streams.init({servers!r}{extra})
streams.get_application("chat").log(inputs={{"x": 1}}, outputs={{"y": 2}})
"""


@pytest.mark.parametrize(
    ("extra", "environ", "bound"),
    [
        ("", {"STREAMS_FLUSH_TIMEOUT": "2s"}, 2),
        (", flush_timeout=1.5", {}, 1.5),
    ],
    ids=["STREAMS_FLUSH_TIMEOUT", "init(flush_timeout=...)"],
)
def test_exit_with_undelivered_records_says_it_waits_then_ends_in_time(
    extra: str, environ: dict[str, str], bound: float
) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAMS_")}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT.format(servers=NOWHERE, extra=extra)],
        env={**clean, **environ},
        capture_output=True,
        text=True,
        timeout=60,
    )
    took = time.monotonic() - started

    assert bound <= took < bound + 8
    lines = done.stderr.splitlines()
    assert "Traceback" not in done.stderr
    assert len(lines) == len(set(lines)), done.stderr  # nothing said twice
    waiting = [i for i, line in enumerate(lines) if line.startswith("exit_flush_waiting")]
    undelivered = [i for i, line in enumerate(lines) if line.startswith("exit_undelivered")]
    assert len(waiting) == 1 and len(undelivered) == 1, done.stderr
    assert waiting[0] < undelivered[0]
    assert f"timeout_s={bound:g}" in lines[waiting[0]]
    assert "STREAMS_FLUSH_TIMEOUT" in lines[waiting[0]]
    # librdkafka's own log of the connection failure is not printed beside ours.
    assert not any(line.startswith("FAIL") for line in lines), done.stderr
    assert sum("Connection refused" in line for line in lines) == 1, done.stderr


@pytest.mark.parametrize("bad", [0, -1, "5s", math.nan])
def test_a_bad_flush_timeout_is_refused_naming_it(bad: object) -> None:
    with pytest.raises(LogError, match="flush_timeout"):
        streams.init(NOWHERE, flush_timeout=bad)  # type: ignore[arg-type]


def test_a_reader_told_to_give_up_on_a_dead_broker_does(caplog: pytest.LogCaptureFixture) -> None:
    started = time.monotonic()
    records = read_topic(Settings(bootstrap_servers=NOWHERE), "t", down_timeout=1, log_level=0)

    with pytest.raises(BrokerUnreachable, match=f"STREAMS_BOOTSTRAP_SERVERS={NOWHERE}"):
        next(records)
    assert time.monotonic() - started < 15
    said = [r.getMessage() for r in caplog.records if r.name == "streams.sdk.consumer"]
    assert len([m for m in said if "Connection refused" in m]) == 1, said
