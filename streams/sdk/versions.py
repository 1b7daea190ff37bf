"""Prompt versions and releases of LLM applications, kept in Kafka (Gantry's versions, self-hosted).

The store is the compacted topic `versions`, with one partition, so one log orders
everything written to it. Two kinds of records (`schemas/version.v1.json`,
`schemas/release.v1.json`), keyed by a UTF-8 JSON array:

- a version: key `[application, "version", version_id]`. A key of its own, so
  compaction keeps every version.
- a release: key `[application, "release", env]`. Compaction keeps the latest release
  of each environment: which version it runs now.

How a version gets its number, with the log as the only arbiter: `create` appends the
version record (acks=all) and learns its offset from the delivery report; then it reads
the partition from the start up to that offset. The number is 1 + the count of the
application's distinct versions at lower offsets (by version_id: the producer is
idempotent, so a retry does not write a record twice; should a copy appear anyway, it
counts once). Every reader counts the same way, so all processes agree; two writers
at the same moment get different offsets and so different numbers; nothing is kept
outside Kafka, so a restart loses nothing. Numbers never change because a version
record is never deleted (no tombstone is ever written). A `create` that fails after the
broker stored the record still takes its number, so a number may be skipped by its
caller but is never reused.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka import Producer as KafkaProducer

from streams.errors import StreamsError
from streams.kafka_config import error_callback, librdkafka_config
from streams.records import Record, dumps, format_ts, validate
from streams.sdk.producer import producer_config
from streams.sdk.records import LogError, LogTypeError, check_dict
from streams.settings import Settings
from streams.topics import VERSIONS, create_topics, topic_specs

log = logging.getLogger(__name__)

PARTITION = 0  # the topic's only partition
_NOT_READY = (
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
)
LATEST = "latest"
_ENV = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# The same placeholders `streams.fill_prompt` fills.
PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


def prompt_inputs(template: str) -> list[str]:
    """The `{{name}}` placeholders of a prompt template, each once, in order of appearance."""
    return list(dict.fromkeys(PLACEHOLDER.findall(template)))


@dataclass(frozen=True)
class Version:
    """One prompt version, as Gantry's `VersionDetails`: `config`, `version_number`, ...

    `config` is `{"prompt", "prompt_inputs", "model", "params"}`; fill the prompt with
    `streams.fill_prompt(version.config["prompt"], values)`.
    """

    config: dict[str, Any]
    description: str
    app_name: str
    version_id: uuid.UUID
    version_number: int
    created_at: str = ""

    def to_json(self) -> dict[str, Any]:
        """The version as plain JSON values (for `streams versions ... --format json`)."""
        return {
            "application": self.app_name,
            "version_number": self.version_number,
            "version_id": str(self.version_id),
            "description": self.description,
            "config": self.config,
            "created_at": self.created_at,
        }


@dataclass
class Catalog:
    """An application's versions (numbered by the log's order) and its releases."""

    application: str
    versions: list[Version] = field(default_factory=list)
    # env -> version_id of the version it runs
    releases: dict[str, uuid.UUID] = field(default_factory=dict)

    def number(self, number: int) -> Version | None:
        """The version with this number, or None."""
        return self.versions[number - 1] if 0 < number <= len(self.versions) else None

    def released(self, env: str) -> Version | None:
        """The version `env` runs, or None when nothing was released there."""
        version_id = self.releases.get(env)
        return next((v for v in self.versions if v.version_id == version_id), None)

    def environments(self, version: Version) -> list[str]:
        """The environments that run `version`, sorted."""
        return sorted(env for env, vid in self.releases.items() if vid == version.version_id)


def connection_config(settings: Settings) -> dict[str, Any]:
    """The cluster's address and security settings, for a reader (`librdkafka_config`)."""
    return {**librdkafka_config(settings), "error_cb": error_callback(settings, log)}


def check_env(env: object) -> str:
    """Return `env` if it names an environment (`prod`, `test`, ...); else raise naming `env`."""
    if not isinstance(env, str):
        raise LogTypeError(
            "env", f"an environment is a str such as 'prod', not {type(env).__name__}"
        )
    if env == LATEST or not _ENV.match(env):
        raise LogError(
            "env", f"{env!r} is not an environment name (1-64 of A-Z a-z 0-9 . _ -, not 'latest')"
        )
    return env


class VersionStore:
    """Reads and writes the `versions` topic of one cluster; every call asks Kafka afresh."""

    def __init__(self, settings: Settings, timeout: float = 30.0) -> None:
        self.settings = settings
        self.topic = settings.topic(VERSIONS)
        self.timeout = timeout
        self._topic_ready = False
        self._producer: KafkaProducer | None = None
        self._lock = threading.Lock()
        self._delivered: list[Message[Any, Any]] = []
        self._failed: list[KafkaError] = []

    def _ensure_topic(self) -> None:
        # A broker that auto-creates topics would make it with `delete` and its default
        # partitions; create it as the contract says before the first read or write.
        if not self._topic_ready:
            specs = [spec for spec in topic_specs(self.settings) if spec.name == self.topic]
            create_topics(self.settings, specs, timeout=self.timeout)
            self._topic_ready = True

    def create(
        self,
        application: str,
        prompt_template: object,
        description: object,
        model: object,
        model_params: object = None,
        inputs: object = None,
    ) -> Version:
        """Store a new version of `application`; return it with the number the log gave it."""
        if not isinstance(prompt_template, str) or not prompt_template:
            raise LogTypeError("prompt_template", "a non-empty str is needed")
        if not isinstance(description, str):
            raise LogTypeError("description", f"a str is needed, not {type(description).__name__}")
        if not isinstance(model, str) or not model:
            raise LogTypeError("model", "a model name (a non-empty str) is needed")
        params = dict(check_dict(model_params, "model_params")) if model_params else {}
        if inputs is None or (isinstance(inputs, list | tuple) and not inputs):
            names = prompt_inputs(prompt_template)  # as Gantry's: none given, found
        elif isinstance(inputs, list | tuple) and all(isinstance(n, str) and n for n in inputs):
            names = list(inputs)
        else:
            raise LogTypeError("prompt_inputs", "a list of input names (non-empty str) is needed")
        version_id = uuid.uuid4()
        record = {
            "schema": "version/v1",
            "application": application,
            "version_id": str(version_id),
            "description": description,
            "config": {
                "prompt": prompt_template,
                "prompt_inputs": names,
                "model": model,
                "params": params,
            },
            "created_at": format_ts(time.time_ns() // 1_000_000),
        }
        offset = self._append([application, "version", str(version_id)], record, "model_params")
        catalog = self.catalog(application, until=offset)
        version = next((v for v in catalog.versions if v.version_id == version_id), None)
        if version is None:
            raise StreamsError(f"{self.topic}: version {version_id} is not at offset {offset}")
        log.info(
            "version_created application=%s version_number=%d version_id=%s",
            application,
            version.version_number,
            version_id,
        )
        return version

    def release(self, application: str, version_number: object, env: object) -> Version:
        """Point `env` at the version numbered `version_number`; return that version."""
        if not isinstance(version_number, int) or isinstance(version_number, bool):
            raise LogTypeError(
                "version_number", f"an int is needed, not {type(version_number).__name__}"
            )
        env = check_env(env)
        version = self.catalog(application).number(version_number)
        if version is None:
            raise LogError("version_number", f"{application} has no version {version_number}")
        record = {
            "schema": "release/v1",
            "application": application,
            "env": env,
            "version_id": str(version.version_id),
            "version_number": version.version_number,
            "released_at": format_ts(time.time_ns() // 1_000_000),
        }
        self._append([application, "release", env], record, "env")
        log.info(
            "version_released application=%s env=%s version_number=%d",
            application,
            env,
            version_number,
        )
        return version

    def catalog(self, application: str, until: int | None = None) -> Catalog:
        """`application`'s versions and releases as the topic holds them (up to offset `until`)."""
        catalog = Catalog(application)
        seen: set[str] = set()
        for record in self._read(until):
            if record.get("application") != application:
                continue
            if record["schema"] == "version/v1":
                if record["version_id"] in seen:  # a copy of one already counted
                    continue
                seen.add(record["version_id"])
                catalog.versions.append(
                    Version(
                        config=record["config"],
                        description=record["description"],
                        app_name=application,
                        version_id=uuid.UUID(record["version_id"]),
                        version_number=len(catalog.versions) + 1,
                        created_at=record["created_at"],
                    )
                )
            else:
                catalog.releases[record["env"]] = uuid.UUID(record["version_id"])
        return catalog

    def _append(self, key: list[str], record: Record, field_name: str) -> int:
        """Write one record to the partition; return its offset once the broker has it."""
        try:
            value = dumps(record)
        except orjson.JSONEncodeError as error:
            raise LogTypeError(field_name, f"JSON cannot hold it ({error})") from None
        validate(record["schema"].split("/")[0], record)
        if len(value) > self.settings.max_record_bytes:
            raise LogError(
                field_name,
                f"the record is {len(value)} bytes, over "
                f"STREAMS_MAX_RECORD_BYTES={self.settings.max_record_bytes}",
            )
        self._ensure_topic()
        if self._producer is None:
            # Kept: an idempotent producer's first write waits about 0.5 s for its id.
            config = producer_config(
                self.settings, {"delivery.report.only.error": False, "linger.ms": 0}
            )
            self._producer = KafkaProducer(
                {**config, "on_delivery": self._on_delivery, "logger": log}
            )
        with self._lock:  # one write at a time: the delivery lists are the store's
            delivered, failed = self._delivered, self._failed
            delivered.clear()
            failed.clear()
            self._producer.produce(self.topic, value, orjson.dumps(key), partition=PARTITION)
            left = self._producer.flush(self.timeout)
            if failed or left or not delivered:
                problem = failed[0].str() if failed else f"not delivered within {self.timeout} s"
                raise StreamsError(f"{self.topic}: could not store {record['schema']}: {problem}")
            offset = delivered[0].offset()
        assert offset is not None  # a delivered record has one
        return offset

    def _on_delivery(self, error: KafkaError | None, message: Message[Any, Any]) -> None:
        (self._delivered.append(message) if error is None else self._failed.append(error))

    def _read(self, until: int | None) -> Iterator[Record]:
        """The topic's records in log order, up to offset `until` or the end as of now."""
        self._ensure_topic()
        consumer = Consumer(
            {
                **connection_config(self.settings),
                "group.id": f"streams-versions-{uuid.uuid4()}",  # reads only; commits nothing
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "logger": log,
            }
        )
        try:
            deadline = time.monotonic() + self.timeout
            low, high = self._watermarks(consumer, deadline)
            end = high if until is None else until + 1
            if end <= low:
                return
            consumer.assign([TopicPartition(self.topic, PARTITION, low)])
            while True:
                if time.monotonic() > deadline:
                    raise StreamsError(f"{self.topic}: not read up to offset {end} in time")
                for message in consumer.consume(500, 0.05):  # returns at its timeout
                    error = message.error()
                    if error is not None:
                        if error.fatal():
                            raise KafkaException(error)
                        continue
                    offset = message.offset()
                    assert offset is not None
                    if offset >= end:
                        return
                    record = _decode(message.value())
                    if record is not None:
                        yield record
                    if offset + 1 >= end:
                        return
        finally:
            consumer.close()

    def _watermarks(self, consumer: Consumer, deadline: float) -> tuple[int, int]:
        # Right after the topic is created its leader may not be known yet: retry.
        partition = TopicPartition(self.topic, PARTITION)
        while True:
            try:
                low, high = consumer.get_watermark_offsets(partition, timeout=self.timeout)
                return int(low), int(high)
            except KafkaException as error:
                if error.args[0].code() not in _NOT_READY or time.monotonic() > deadline:
                    raise StreamsError(f"{self.topic}: cannot read its offsets: {error}") from None
                time.sleep(0.1)


def _decode(value: bytes | str | None) -> Record | None:
    """A version or release record, or None (logged) for anything else on the topic."""
    if value is None:
        return None
    try:
        record = orjson.loads(value)
        name = record.get("schema", "") if isinstance(record, Mapping) else ""
        if name not in ("version/v1", "release/v1"):
            raise ValueError(f"schema {name!r}")
        validate(name.split("/")[0], record)
    except (ValueError, StreamsError) as error:
        log.warning("versions_record_skipped error=%s", error)
        return None
    return dict(record)


class VersionCalls:
    """Gantry's version calls on an application: `create_version`, `release_version`, ...

    `streams.sdk.client.Application` inherits them; it says where the store is.
    """

    name: str

    def version_store(self) -> VersionStore:
        """The store of this application's cluster."""
        raise NotImplementedError

    def create_version(
        self,
        prompt_template: str,
        description: str,
        model: str,
        model_params: Mapping[str, Any] | None = None,
        prompt_inputs: list[str] | None = None,
    ) -> Version:
        """Store a new prompt version; returns it with its `version_number` (1, 2, 3, ...).

        `config` is `{"prompt": prompt_template, "prompt_inputs", "model", "params"}`;
        `prompt_inputs` defaults to the template's `{{name}}` placeholders. Numbers are
        per application and never reused, also when processes create versions at once.
        """
        return self.version_store().create(
            self.name, prompt_template, description, model, model_params, prompt_inputs
        )

    def release_version(self, version_number: int, env: str) -> Version:
        """Make `env` (`"prod"`, `"test"`, ...) run the version numbered `version_number`."""
        return self.version_store().release(self.name, version_number, env)

    def deploy_version(self, version_id: uuid.UUID | str, env: str) -> None:
        """Gantry's name for a release, by `version_id`: `deploy_version(v.version_id, "prod")`."""
        try:
            wanted = uuid.UUID(str(version_id))
        except ValueError:
            raise LogError("version_id", f"{version_id!r} is not a UUID") from None
        store = self.version_store()
        found = next((v for v in store.catalog(self.name).versions if v.version_id == wanted), None)
        if found is None:
            raise LogError("version_id", f"{self.name} has no version {wanted}")
        store.release(self.name, found.version_number, env)

    def get_version(self, version: str | int) -> Version | None:
        """The version `"prod"`/`"test"` (any environment) runs, the `"latest"`, or number `n`.

        Returns None, with a warning, when there is none (as Gantry's SDK did).
        """
        if isinstance(version, bool) or not isinstance(version, str | int):
            raise LogTypeError(
                "version", f"'prod', 'test', 'latest' or a number, not {type(version).__name__}"
            )
        if isinstance(version, str) and version != LATEST:
            check_env(version)
        catalog = self.version_store().catalog(self.name)
        if version == LATEST:
            found = catalog.versions[-1] if catalog.versions else None
        elif isinstance(version, int):
            found = catalog.number(version)
        else:
            found = catalog.released(version)
        if found is None:
            log.warning(
                "No version found for %r of application %r: create one with "
                "create_version(...) and release it with release_version(n, env)",
                version,
                self.name,
            )
        return found
