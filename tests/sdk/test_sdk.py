"""The producer SDK without a broker: what `log` sends, what it refuses, how delivery fails."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError, Message

import streams
from streams.clock import ManualClock
from streams.errors import DeliveryError, StreamsError
from streams.records import format_ts, validate
from streams.sdk import session as sdk
from streams.sdk.client import Application, fill_prompt
from streams.sdk.joinkey import JoinKey
from streams.sdk.producer import Client, producer_config
from streams.sdk.records import LogError, LogTypeError, new_uuids
from streams.settings import Settings

pytestmark = pytest.mark.unit

NOW_MS = 1_800_000_000_000
NOW = datetime.fromtimestamp(NOW_MS / 1000, tz=UTC)
NAIVE = datetime(2026, 1, 1)  # noqa: DTZ001  on purpose
NOWHERE = "127.0.0.1:1"  # nothing listens there: a producer that can never deliver


@dataclass
class FakeProducer:
    """Records what the SDK queues; reports failures for the keys in `fail`."""

    sent: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    client: Client | None = None
    fail: set[bytes] = field(default_factory=set)

    def produce(self, topic: str, value: bytes, key: bytes) -> None:
        self.sent.append((topic, key, value))

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        assert self.client is not None
        for topic, key, value in self.sent:
            if key in self.fail:
                error = KafkaError(KafkaError._MSG_TIMED_OUT)
                self.client.on_delivery(error, Message(topic=topic, key=key, value=value))
        self.fail.clear()
        return 0

    def purge(self, in_queue: bool, in_flight: bool, blocking: bool) -> None:
        raise AssertionError("nothing to purge")

    def __len__(self) -> int:
        return 0

    def records(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(topic, key, record) of everything sent, each checked against its schema."""
        out = []
        for topic, key, value in self.sent:
            record = orjson.loads(value)
            validate(record["schema"].split("/")[0], record)
            out.append((topic, key.decode("utf-8"), record))
        return out


@pytest.fixture
def fake() -> FakeProducer:
    return FakeProducer()


@pytest.fixture
def app(fake: FakeProducer) -> Application:
    settings = Settings(topic_prefix="p.", max_record_bytes=10_000)
    client = Client(settings, producer=fake, clock=ManualClock(NOW_MS))
    fake.client = client
    return Application(client, "loans")


@pytest.fixture(autouse=True)
def no_global_client() -> Iterator[None]:
    yield
    with sdk._client_lock:
        client, sdk._client = sdk._client, None
    if client is not None and not client.closed:
        client.closed = True
        client.producer.purge(in_queue=True, in_flight=True, blocking=True)


def is_uuid4(text: str) -> bool:
    return uuid.UUID(text).version == 4 and str(uuid.UUID(text)) == text


# -- what log sends ---------------------------------------------------------------------


def test_lists_return_batch_id_and_made_uuid4_keys(app: Application, fake: FakeProducer) -> None:
    batch_id, keys = app.log(inputs=[{"a": 1}, {"a": 2}], outputs=[{"y": 0}, {"y": 1}])
    assert is_uuid4(batch_id)
    assert len(keys) == 2
    assert all(is_uuid4(key) for key in keys)
    records = fake.records()
    assert [(topic, key) for topic, key, _ in records] == [("p.predictions", k) for k in keys]
    first = records[0][2]
    assert first == {
        "schema": "prediction/v1",
        "application": "loans",
        "join_key": keys[0],
        "event_id": first["event_id"],
        "timestamp": format_ts(NOW_MS),
        "version": None,
        "inputs": {"a": 1},
        "outputs": {"y": 0},
        "tags": {},
        "batch_id": batch_id,
    }
    assert app.log(inputs=[{"a": 3}], outputs=[{"y": 2}])[0] != batch_id


def test_single_dict_returns_its_key_and_no_batch(app: Application, fake: FakeProducer) -> None:
    key = app.log(inputs={"a": 1}, outputs={"y": 0})
    assert is_uuid4(key)
    [(_, sent_key, record)] = fake.records()
    assert sent_key == key == record["join_key"]
    assert record["batch_id"] is None


def test_given_join_keys_are_used(app: Application, fake: FakeProducer) -> None:
    from_dict = JoinKey.from_dict({"a": 1})
    _, keys = app.log(inputs=[{"a": 1}, {"a": 2}], outputs=[{}, {}], join_keys=[from_dict, "k-é"])
    assert keys == [from_dict, "k-é"]
    assert app.log(inputs={"a": 1}, outputs={}, join_keys="one") == "one"
    assert [key for _, key, _ in fake.records()] == [from_dict, "k-é", "one"]


def test_kafka_key_is_the_join_key_and_value_is_orjson(
    app: Application, fake: FakeProducer
) -> None:
    app.log(inputs={"text": "naïve ☃"}, outputs={"p": 0.25}, join_keys="clé-1")
    [(topic, key, value)] = fake.sent
    assert (topic, key) == ("p.predictions", "clé-1".encode())
    record = orjson.loads(value)
    assert value == orjson.dumps(record)
    assert record["inputs"] == {"text": "naïve ☃"}


def test_feedback_alone_goes_to_the_feedback_topic(app: Application, fake: FakeProducer) -> None:
    batch_id, keys = app.log(
        feedbacks=[{"correct": True}, {"correct": False}], join_keys=["a", "b"]
    )
    assert keys == ["a", "b"]
    records = fake.records()
    assert [(topic, key) for topic, key, _ in records] == [("p.feedback", "a"), ("p.feedback", "b")]
    record = records[0][2]
    assert record["schema"] == "feedback/v1"
    assert record["feedback"] == {"correct": True}
    assert record["batch_id"] == batch_id
    assert "inputs" not in record
    assert "version" not in record
    assert app.log(feedbacks={"thumbs_up": True}, join_keys="c") == "c"


def test_all_three_write_one_prediction_with_inline_feedback(
    app: Application, fake: FakeProducer
) -> None:
    _, keys = app.log(
        inputs=[{"a": 1}], outputs=[{"y": 1}], feedbacks=[{"ok": True}], join_keys=["k"]
    )
    [(topic, key, record)] = fake.records()
    assert (topic, key, keys) == ("p.predictions", "k", ["k"])
    assert record["schema"] == "prediction/v1"
    assert record["feedback"] == {"ok": True}


def test_event_ids_are_fresh_uuid4s(app: Application, fake: FakeProducer) -> None:
    for _ in range(3):
        app.log(inputs=[{"a": i} for i in range(40)], outputs=[{}] * 40)
        app.log(inputs={"a": 1}, outputs={}, join_keys="same")
    event_ids = [record["event_id"] for _, _, record in fake.records()]
    assert len(set(event_ids)) == len(event_ids) == 123
    assert all(is_uuid4(event_id) for event_id in event_ids)


@pytest.mark.parametrize("count", [1, 15, 16, 17, 500])
def test_new_uuids_are_uuid4_strings(count: int) -> None:
    made = new_uuids(count)
    assert len(made) == len(set(made)) == count
    assert all(is_uuid4(text) for text in made)


def test_tags_global_tags_and_row_tags_merge(app: Application, fake: FakeProducer) -> None:
    app.log(
        inputs=[{}, {}],
        outputs=[{}, {}],
        tags={"env": "prod", "team": "a"},
        global_tags={"team": "b", "region": "eu"},
        row_tags=[{"env": "canary"}, {}],
    )
    tags = [record["tags"] for _, _, record in fake.records()]
    assert tags == [
        {"env": "canary", "team": "b", "region": "eu"},
        {"env": "prod", "team": "b", "region": "eu"},
    ]
    app.log(inputs={}, outputs={}, row_tags={"only": "me"})
    assert fake.records()[-1][2]["tags"] == {"only": "me"}


@pytest.mark.parametrize("version", ["3", 3, None, 2**63])
def test_version_str_int_or_none(app: Application, fake: FakeProducer, version: Any) -> None:
    app.log(inputs={}, outputs={}, version=version)
    assert fake.records()[0][2]["version"] == version


def test_timestamps_are_written_in_utc_with_milliseconds(
    app: Application, fake: FakeProducer
) -> None:
    paris = timezone(timedelta(hours=2))
    moments = [
        datetime(2026, 1, 2, 5, 4, 5, 123456, tzinfo=paris),
        NOW + timedelta(minutes=4),  # clocks drift: a little ahead is fine
    ]
    app.log(inputs=[{}, {}], outputs=[{}, {}], timestamps=moments)
    app.log(inputs={}, outputs={}, timestamps=datetime(2026, 1, 1, tzinfo=UTC))
    written = [record["timestamp"] for _, _, record in fake.records()]
    assert written == [
        "2026-01-02T03:04:05.123Z",
        format_ts(NOW_MS + 240_000),
        "2026-01-01T00:00:00.000Z",
    ]


def test_any_mapping_is_a_row(app: Application, fake: FakeProducer) -> None:
    app.log(inputs=[MappingProxyType({"a": 1})], outputs=[OrderedDict(y=2)])
    record = fake.records()[0][2]
    assert (record["inputs"], record["outputs"]) == ({"a": 1}, {"y": 2})


def test_tags_go_on_feedback_too(app: Application, fake: FakeProducer) -> None:
    app.log(feedbacks=[{"ok": 1}], join_keys=["k"], row_tags=[{"who": "qa"}], tags={"env": "x"})
    assert fake.records()[0][2]["tags"] == {"env": "x", "who": "qa"}


# -- what log refuses, before sending anything --------------------------------------------


class Unserializable:
    pass


REFUSED: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"inputs": [{}, {}], "outputs": [{}]}, LogError, r"^outputs: 1 rows, but inputs has 2"),
    ({"inputs": [{}], "outputs": [{}], "join_keys": ["a", "b"]}, LogError, r"^join_keys: 2 rows"),
    ({"inputs": [{}], "outputs": [{}], "timestamps": []}, LogError, r"^timestamps: 0 rows"),
    ({"inputs": [{}], "outputs": [{}], "row_tags": [{}, {}]}, LogError, r"^row_tags: 2 rows"),
    ({"feedbacks": [{"ok": True}]}, LogError, r"^join_keys: feedback needs the join keys"),
    ({"feedbacks": {"ok": True}}, LogError, r"^join_keys: feedback needs the join keys"),
    ({"inputs": [{}]}, LogError, r"^outputs: inputs and outputs go together"),
    ({"outputs": {}}, LogError, r"^inputs: inputs and outputs go together"),
    ({}, LogError, r"^inputs: nothing to log"),
    (
        {"inputs": [{}, {}, {}, {"when": Unserializable()}], "outputs": [{}] * 4},
        LogTypeError,
        r"^inputs\[3\]\['when'\]: JSON cannot hold it",
    ),
    ({"inputs": {"s": {1, 2}}, "outputs": {}}, LogTypeError, r"^inputs\['s'\]: JSON cannot hold"),
    ({"inputs": {}, "outputs": {1: "x"}}, LogTypeError, r"^outputs\[1\]: JSON cannot hold"),
    ({"inputs": [{}], "outputs": [{"big": 10**30}]}, LogTypeError, r"^outputs\[0\]\['big'\]"),
    (
        {"inputs": [{}, {"t": "x" * 10_000}], "outputs": [{}, {}]},
        LogError,
        r"^inputs\[1\]: the record is \d+ bytes, over STREAMS_MAX_RECORD_BYTES",
    ),
    (
        {"inputs": [{}], "outputs": [{}], "join_keys": [""]},
        LogError,
        r"^join_keys\[0\]: a join key has 1 to 512",
    ),
    (
        {"inputs": {}, "outputs": {}, "join_keys": "k" * 513},
        LogError,
        r"^join_keys: .* 1 to 512 characters, not 513",
    ),
    (
        {"inputs": {}, "outputs": {}, "join_keys": "\ud800"},
        LogError,
        r"^join_keys: not valid Unicode",
    ),
    (
        {"inputs": [{}], "outputs": [{}], "join_keys": [7]},
        LogTypeError,
        r"^join_keys\[0\]: a join key is a str",
    ),
    (
        {"inputs": [{}, ["a"]], "outputs": [{}, {}]},
        LogTypeError,
        r"^inputs\[1\]: a dict is needed, not list",
    ),
    ({"inputs": {}, "outputs": [{}]}, LogTypeError, r"^outputs: a dict is needed, not list"),
    ({"inputs": "abc", "outputs": "abc"}, LogTypeError, r"^inputs: give a list"),
    ({"feedbacks": [{}], "join_keys": ["k"]}, LogError, r"^feedbacks\[0\]: feedback is empty"),
    (
        {"feedbacks": [{"a": 1}, {f"f{n}": 1 for n in range(1001)}], "join_keys": ["k", "l"]},
        LogError,
        r"^feedbacks\[1\]: 1001 fields: the limit is 1000",
    ),
    ({"feedbacks": [None], "join_keys": ["k"]}, LogTypeError, r"^feedbacks\[0\]: a dict is needed"),
    ({"inputs": {}, "outputs": {}, "tags": {"n": 1}}, LogTypeError, r"^tags\['n'\]: tags are str"),
    ({"inputs": {}, "outputs": {}, "tags": ["env"]}, LogTypeError, r"^tags: a dict is needed"),
    (
        {"inputs": {}, "outputs": {}, "global_tags": {"n": None}},
        LogTypeError,
        r"^global_tags\['n'\]",
    ),
    (
        {"inputs": [{}, {}], "outputs": [{}, {}], "row_tags": [{}, {"x": 2}]},
        LogTypeError,
        r"^row_tags\[1\]\['x'\]",
    ),
    ({"inputs": {}, "outputs": {}, "version": 1.5}, LogTypeError, r"^version: a version is a str"),
    ({"inputs": {}, "outputs": {}, "version": True}, LogTypeError, r"^version: a version is a str"),
    ({"inputs": {}, "outputs": {}, "version": 2**64}, LogError, r"^version: .* 64 bits"),
    (
        {"inputs": [{}, {}], "outputs": [{}, {}], "timestamps": [NOW, NAIVE]},
        LogError,
        r"^timestamps\[1\]: naive datetime",
    ),
    (
        {"inputs": [{}], "outputs": [{}], "timestamps": [NOW + timedelta(minutes=6)]},
        LogError,
        r"^timestamps\[0\]: .* is in the future",
    ),
    (
        {"inputs": {}, "outputs": {}, "timestamps": "2026-01-01"},
        LogTypeError,
        r"^timestamps: a timestamp is a datetime",
    ),
]


@pytest.mark.parametrize(("call", "error", "message"), REFUSED)
def test_wrong_input_raises_naming_the_field_and_sends_nothing(
    app: Application, fake: FakeProducer, call: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message) as raised:
        app.log(**call)
    assert isinstance(raised.value, ValueError)
    assert isinstance(raised.value, StreamsError)
    assert fake.sent == []


def test_application_name_is_checked(app: Application) -> None:
    with pytest.raises(LogError, match=r"^application: "):
        Application(app.client, "")


# -- log_completion and fill_prompt ----------------------------------------------------


REQUEST = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi Ann"}]}
RESPONSE = {
    "id": "chatcmpl-123",
    "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"}}],
}


def test_log_completion_keys_by_the_response_id(app: Application, fake: FakeProducer) -> None:
    key = app.log_completion(
        open_ai_api_request=REQUEST,
        open_ai_api_response=RESPONSE,
        request_attributes={"name": "Ann"},
        feedback={"thumbs_up": True},
        version=2,
        tags={"env": "prod"},
    )
    assert key == "chatcmpl-123"
    app.log(feedbacks=[{"thumbs_up": False}], join_keys=[key])
    (_, _, prediction), (topic, _, feedback) = fake.records()
    assert prediction["join_key"] == feedback["join_key"] == key
    assert prediction["inputs"] == {**REQUEST, "name": "Ann"}
    assert prediction["outputs"] == RESPONSE
    assert prediction["feedback"] == {"thumbs_up": True}
    assert prediction["version"] == 2
    assert prediction["tags"] == {"env": "prod"}
    assert topic == "p.feedback"


def test_log_completion_takes_openai_objects(app: Application, fake: FakeProducer) -> None:
    class ChatCompletion:
        def model_dump(self) -> dict[str, Any]:
            return dict(RESPONSE)

    assert app.log_completion(REQUEST, ChatCompletion()) == "chatcmpl-123"  # type: ignore[arg-type]
    assert "feedback" not in fake.records()[0][2]


def test_log_completion_refuses_what_it_cannot_key(app: Application, fake: FakeProducer) -> None:
    with pytest.raises(LogError, match=r"^open_ai_api_response\['id'\]"):
        app.log_completion(REQUEST, {"choices": []})
    with pytest.raises(LogError, match=r"^request_attributes\['model'\]: a request field"):
        app.log_completion(REQUEST, RESPONSE, request_attributes={"model": "x"})
    with pytest.raises(LogTypeError, match=r"^open_ai_api_request: "):
        app.log_completion("prompt", RESPONSE)  # type: ignore[arg-type]
    assert fake.sent == []


def test_fill_prompt() -> None:
    template = "Hello {{name}}, you owe {{amount}}. {{unknown}} {name}"
    assert fill_prompt(template, {"name": "Ann", "amount": 12}) == (
        "Hello Ann, you owe 12. {{unknown}} {name}"
    )
    assert fill_prompt("{{a}}", {"a": "{{b}}", "b": "no"}) == "{{b}}"


# -- configuration --------------------------------------------------------------------


def test_producer_config_partitions_like_java_and_is_idempotent() -> None:
    config = producer_config(Settings(bootstrap_servers="h:1", max_record_bytes=5_000_000))
    assert config["bootstrap.servers"] == "h:1"
    assert config["partitioner"] == "murmur2_random"
    assert config["enable.idempotence"] is True
    assert config["compression.type"] in {"lz4", "zstd"}
    assert config["linger.ms"] == 5
    assert config["message.max.bytes"] > 5_000_000
    overridden = producer_config(
        Settings(), {"linger_ms": 50, "message.timeout.ms": 1, "error_cb": print}
    )
    assert (overridden["linger.ms"], overridden["message.timeout.ms"]) == (50, 1)
    assert overridden["error_cb"] is print


@pytest.mark.usefixtures("clean_environ")
def test_init_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    client = streams.init()
    assert client.settings.bootstrap_servers == "localhost:9092"
    monkeypatch.setenv("STREAMS_BOOTSTRAP_SERVERS", NOWHERE)
    monkeypatch.setenv("STREAMS_TOPIC_PREFIX", "team-a.")
    monkeypatch.setenv("STREAMS_MAX_RECORD_BYTES", "2048")
    client = streams.init()
    assert client.settings.bootstrap_servers == NOWHERE
    assert client.topics == {"prediction": "team-a.predictions", "feedback": "team-a.feedback"}
    assert client.settings.max_record_bytes == 2048
    assert streams.init("other:9093").settings.bootstrap_servers == "other:9093"
    app = streams.get_application("loans")
    assert (app.name, app.client) == ("loans", sdk._client)
    streams.close()


def test_module_functions_need_init() -> None:
    with pytest.raises(StreamsError, match=r"call streams.init\(\) first"):
        streams.get_application("loans")
    with pytest.raises(StreamsError, match=r"call streams.init\(\) first"):
        streams.flush()


# -- delivery -------------------------------------------------------------------------


def test_flush_raises_with_the_keys_that_failed(app: Application, fake: FakeProducer) -> None:
    app.log(inputs=[{}, {}, {}], outputs=[{}, {}, {}], join_keys=["a", "b", "c"])
    fake.fail = {b"a", b"c"}
    with pytest.raises(DeliveryError) as raised:
        app.client.flush()
    assert raised.value.join_keys == ["a", "c"]
    assert "Message timed out" in str(raised.value)
    app.client.flush()  # reported once, then forgotten


def test_flush_timeout_purges_and_names_every_queued_key() -> None:
    client = Client(Settings(bootstrap_servers=NOWHERE), {"message.timeout.ms": 60_000})
    _, keys = Application(client, "a").log(inputs=[{"i": i} for i in range(50)], outputs=[{}] * 50)
    with pytest.raises(DeliveryError) as raised:
        client.flush(timeout=0.5)
    assert sorted(raised.value.join_keys) == sorted(keys)
    assert "not delivered before flush() timed out" in str(raised.value)
    assert len(client.producer) == 0  # purged: nothing goes out after the error
    client.close(timeout=1)


def test_message_timeout_reports_the_keys() -> None:
    client = Client(Settings(bootstrap_servers=NOWHERE), {"message.timeout.ms": 300})
    key = Application(client, "a").log(inputs={}, outputs={})
    with pytest.raises(DeliveryError) as raised:
        client.close(timeout=10)
    assert raised.value.join_keys == [key]
    assert "timed out" in raised.value.errors[0]
    with pytest.raises(StreamsError, match="closed"):
        Application(client, "a").log(inputs={}, outputs={})


def test_module_flush_and_close_raise_with_the_keys() -> None:
    streams.init(NOWHERE, message_timeout_ms=300)
    key = streams.get_application("a").log(inputs={}, outputs={})
    with pytest.raises(DeliveryError, match=key):
        streams.flush(timeout=10)
    key = streams.get_application("a").log(inputs={}, outputs={})
    with pytest.raises(DeliveryError, match=key):
        streams.close(timeout=10)
    assert sdk._client is None


def test_exit_hook_flushes_and_logs_undelivered_keys() -> None:
    script = (
        "import streams\n"
        f"streams.init({NOWHERE!r}, message_timeout_ms=300)\n"
        "print(streams.get_application('a').log(inputs={'x': 1}, outputs={'y': 2}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    key = done.stdout.strip()
    assert done.returncode == 0, done.stderr
    assert is_uuid4(key)
    assert "exit_undelivered count=1" in done.stderr
    assert key in done.stderr
