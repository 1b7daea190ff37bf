"""Gantry's keywords without a broker: `init`, `log`, `log_completion`, `fill_prompt`, versions."""

from __future__ import annotations

import logging
import uuid
import warnings
from typing import Any

import pytest
from confluent_kafka import KafkaException
from test_sdk import NOW_MS, NOWHERE, RESPONSE, FakeProducer
from test_sdk import no_global_client as no_global_client  # autouse here too

import streams
from streams.clock import ManualClock
from streams.sdk.client import Application, fill_prompt
from streams.sdk.producer import Client
from streams.sdk.records import LogError, LogTypeError
from streams.sdk.session import GantryKeywordWarning
from streams.sdk.versions import Catalog, Version, check_env, connection_config, prompt_inputs
from streams.settings import Settings

pytestmark = pytest.mark.unit

REQUEST = {"model": "gpt-4o-mini", "prompt": "Summarize for Ann"}


@pytest.fixture
def fake() -> FakeProducer:
    return FakeProducer()


@pytest.fixture
def app(fake: FakeProducer) -> Application:
    client = Client(Settings(topic_prefix="p."), producer=fake, clock=ManualClock(NOW_MS))
    fake.client = client
    return Application(client, "chat")


# -- init -----------------------------------------------------------------------------


def test_init_takes_gantrys_keywords_with_one_warning() -> None:
    # Before: librdkafka refused `api.key` ("No such configuration property").
    with pytest.warns(GantryKeywordWarning) as caught:
        streams.init(NOWHERE, api_key="k", environment="prod", send_in_background=False)
    (warning,) = caught.list
    message = str(warning.message)
    for name in ("api_key", "environment", "send_in_background"):
        assert name in message
    assert "tags={'env': 'prod'}" in message
    assert warning.filename == __file__  # points at the caller's init line


def test_init_without_gantry_keywords_warns_nothing() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        streams.init(NOWHERE, linger_ms=20)


def test_other_keywords_still_reach_librdkafka() -> None:
    with pytest.raises(KafkaException, match=r"not\.a\.property"):
        streams.init(NOWHERE, not_a_property=1)


@pytest.mark.parametrize(("given", "level"), [("debug", logging.DEBUG), ("ERROR", logging.ERROR)])
def test_init_logging_level_sets_the_sdk_loggers(given: str, level: int) -> None:
    logger = logging.getLogger("streams")
    before = logger.level
    try:
        streams.init(NOWHERE, logging_level=given)
        assert logger.level == level
    finally:
        logger.setLevel(before)


def test_init_refuses_a_logging_level_that_is_none() -> None:
    with pytest.raises(LogError, match=r"^logging_level: 'LOUD' is not one of DEBUG"):
        streams.init(NOWHERE, logging_level="LOUD")


# -- log ------------------------------------------------------------------------------


def stripped(fake: FakeProducer) -> list[dict[str, Any]]:
    """The records sent, without what differs on every call."""
    return [
        {k: v for k, v in record.items() if k not in ("event_id", "batch_id", "join_key")}
        for _, _, record in fake.records()
    ]


def test_log_takes_gantrys_no_effect_keywords(app: Application, fake: FakeProducer) -> None:
    rows = {"inputs": [{"a": 1}, {"a": 2}], "outputs": [{"y": 0}, {"y": 1}], "version": 3}
    app.log(**rows)  # type: ignore[arg-type]
    plain = stripped(fake)
    fake.sent.clear()
    _, keys = app.log(
        **rows,  # type: ignore[arg-type]
        as_batch=True,
        ignore_inputs=["a"],
        sort_on_timestamp=False,
    )
    assert stripped(fake) == plain
    assert [record["join_key"] for _, _, record in fake.records()] == keys


def test_log_sample_rate_sends_that_share_of_the_rows(app: Application, fake: FakeProducer) -> None:
    given = [f"k{i}" for i in range(10)]
    _, keys = app.log(
        inputs=[{"i": i} for i in range(10)],
        outputs=[{}] * 10,
        join_keys=given,
        sample_rate=0.5,
    )
    sent = [record["join_key"] for _, _, record in fake.records()]
    assert len(sent) == 5
    assert sent == keys
    assert set(sent) <= set(given)
    assert [given.index(key) for key in sent] == sorted(given.index(key) for key in sent)
    fake.sent.clear()
    assert app.log(inputs=[{}], outputs=[{}], sample_rate=0)[1] == []
    assert app.log(inputs={}, outputs={}, join_keys="one", sample_rate=0) == "one"
    assert fake.sent == []
    assert app.log(inputs={}, outputs={}, join_keys="two", sample_rate=1) == "two"
    assert len(fake.sent) == 1


@pytest.mark.parametrize(
    ("rate", "error"), [(1.5, LogError), (-0.1, LogError), ("1", LogTypeError)]
)
def test_log_refuses_a_sample_rate_out_of_range(
    app: Application, fake: FakeProducer, rate: Any, error: type[Exception]
) -> None:
    with pytest.raises(error, match=r"^sample_rate: "):
        app.log(inputs={}, outputs={}, sample_rate=rate)
    assert fake.sent == []


def test_log_with_sample_rate_still_checks_every_row(app: Application, fake: FakeProducer) -> None:
    with pytest.raises(LogTypeError, match=r"^inputs\[1\]"):
        app.log(inputs=[{}, "bad"], outputs=[{}, {}], sample_rate=0.5)
    assert fake.sent == []


# -- log_completion -------------------------------------------------------------------


def test_log_completion_takes_gantrys_keywords(app: Application, fake: FakeProducer) -> None:
    session = uuid.uuid4()
    # Gantry's positional order: request, response, request_attributes, response_attributes.
    app.log_completion(
        REQUEST,
        RESPONSE,
        {"prompt_values": {"name": "Ann"}},
        {"latency_ms": 840},
        feedback={"thumbs_up": True},
        selected_choice_index=1,
        session_id=session,
        tags={"env": "prod"},
        version=2,
    )
    ((_, key, record),) = fake.records()
    assert key == RESPONSE["id"]
    assert record["inputs"] == {**REQUEST, "prompt_values": {"name": "Ann"}}
    assert record["outputs"] == {**RESPONSE, "latency_ms": 840}
    assert record["tags"] == {
        "env": "prod",
        "selected_choice_index": "1",
        "session_id": str(session),
    }
    assert (record["version"], record["feedback"]) == (2, {"thumbs_up": True})


def test_log_llm_data_is_log_completion(app: Application, fake: FakeProducer) -> None:
    key = app.log_llm_data(
        api_request=REQUEST, api_response=RESPONSE, session_id="s1", version=1, vendor="openai"
    )
    ((_, _, record),) = fake.records()
    assert (key, record["version"], record["tags"]) == (RESPONSE["id"], 1, {"session_id": "s1"})


@pytest.mark.parametrize(
    ("keywords", "error", "field"),
    [
        ({"response_attributes": {"choices": []}}, LogError, r"response_attributes\['choices'\]"),
        ({"selected_choice_index": "1"}, LogTypeError, "selected_choice_index"),
        ({"selected_choice_index": True}, LogTypeError, "selected_choice_index"),
        ({"session_id": 7}, LogTypeError, "session_id"),
        ({"session_id": "s1", "tags": {"session_id": "s2"}}, LogError, "session_id"),
    ],
)
def test_log_completion_refuses_bad_gantry_keywords(
    app: Application, fake: FakeProducer, keywords: dict[str, Any], error: type, field: str
) -> None:
    with pytest.raises(error, match=f"^{field}: "):
        app.log_completion(REQUEST, RESPONSE, **keywords)
    assert fake.sent == []


# -- fill_prompt ----------------------------------------------------------------------


def test_fill_prompt_fills_a_versions_prompt(caplog: pytest.LogCaptureFixture) -> None:
    config = {"prompt": "Summarize {{text}} for {{name}}."}
    assert fill_prompt(config["prompt"], {"text": "this", "name": "Ann"}) == (
        "Summarize this for Ann."
    )
    assert caplog.records == []
    assert fill_prompt(config["prompt"], {"name": "Ann", "x": 1}) == "Summarize {{text}} for Ann."
    assert "unfilled ['text'], unused values ['x']" in caplog.text
    with pytest.raises(LogError, match=r"^values: prompt not fully filled: unfilled \['text'\]"):
        fill_prompt(config["prompt"], {"name": "Ann"}, strict=True)


# -- versions, the parts that need no broker ------------------------------------------


def test_prompt_inputs_are_the_placeholders_once_in_order() -> None:
    assert prompt_inputs("{{b}} {{a}} {{b}} {a} {{ c }}") == ["b", "a"]
    assert prompt_inputs("no inputs") == []


def version(number: int) -> Version:
    config = {"prompt": "p", "prompt_inputs": [], "model": "m", "params": {}}
    return Version(config, f"v{number}", "chat", uuid.uuid4(), number)


def test_catalog_finds_numbers_and_releases() -> None:
    first, second = version(1), version(2)
    catalog = Catalog("chat", [first, second], {"prod": first.version_id, "test": first.version_id})
    assert catalog.number(2) is second
    assert catalog.number(0) is None
    assert catalog.number(3) is None
    assert catalog.released("prod") is first
    assert catalog.released("dev") is None
    assert catalog.environments(first) == ["prod", "test"]
    assert catalog.environments(second) == []


@pytest.mark.parametrize("name", ["latest", "", "pro d", "x" * 65, 3])
def test_an_environment_is_a_short_name_but_not_latest(name: Any) -> None:
    with pytest.raises(LogError, match=r"^env: "):
        check_env(name)


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda app: app.get_version(1.5), "version"),
        (lambda app: app.get_version(True), "version"),
        (lambda app: app.get_version("pro d"), "env"),
        (lambda app: app.create_version("", "d", "m"), "prompt_template"),
        (lambda app: app.create_version("p", None, "m"), "description"),
        (lambda app: app.create_version("p", "d", ""), "model"),
        (lambda app: app.create_version("p", "d", "m", [0.2]), "model_params"),
        (lambda app: app.create_version("p", "d", "m", None, "name"), "prompt_inputs"),
        (lambda app: app.create_version("p", "d", "m", {"t": {1, 2}}), "model_params"),
        (lambda app: app.release_version("2", "prod"), "version_number"),
        (lambda app: app.deploy_version("v2", "prod"), "version_id"),
    ],
)
def test_version_calls_name_the_bad_argument_before_reaching_kafka(call: Any, field: str) -> None:
    # NOWHERE: a call that reached Kafka would time out instead of raising at once.
    app = Application(Client(Settings(bootstrap_servers=NOWHERE)), "chat")
    with pytest.raises(LogError, match=f"^{field}: "):
        call(app)


def test_the_versions_reader_connects_as_the_sdk_producer_does() -> None:
    config = connection_config(Settings(bootstrap_servers="h:1"))
    assert config["bootstrap.servers"] == "h:1"
    assert not {"partitioner", "enable.idempotence", "linger.ms"} & set(config)
