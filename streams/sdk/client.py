"""The producer SDK, call-compatible with Gantry's: `init`, `get_application`, `log`, `flush`.

    import streams
    streams.init()                   # STREAMS_BOOTSTRAP_SERVERS, else localhost:9092
    app = streams.get_application("loans")
    batch_id, join_keys = app.log(inputs=[...], outputs=[...])
    app.log(feedbacks=[{"approved": True}], join_keys=[join_keys[0]])
    streams.flush()                  # raises DeliveryError naming what failed

A `log` call is checked and serialized whole before anything is sent
(`streams.sdk.records`), so wrong input raises at the call and sends nothing; then the
records go to the process's producer (`streams.sdk.producer`). An exit hook flushes and
logs the join keys of anything that was not delivered.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, overload

from streams.errors import DeliveryError, StreamsError
from streams.sdk.producer import Client
from streams.sdk.records import LogError, LogTypeError, build_batch
from streams.settings import Settings

log = logging.getLogger(__name__)

_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
Row = Mapping[str, Any]


def _plain(value: object, field: str) -> dict[str, Any]:
    """A dict from a dict or an OpenAI SDK object (which has `model_dump`)."""
    if isinstance(value, Mapping):
        return dict(value)
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dict(dump())
    raise LogTypeError(
        field, f"a dict (or an OpenAI response object) is needed, not {type(value).__name__}"
    )


class Application:
    """Logs predictions and feedback of one application; from `streams.get_application(name)`."""

    def __init__(self, client: Client, name: str) -> None:
        if not isinstance(name, str) or not 0 < len(name) <= 256:
            raise LogError("application", f"a name of 1 to 256 characters is needed, not {name!r}")
        self.client = client
        self.name = name

    @overload
    def log(
        self,
        inputs: Row | None = None,
        outputs: Row | None = None,
        feedbacks: Row | None = None,
        join_keys: str | None = None,
        timestamps: datetime | None = None,
        version: str | int | None = None,
        tags: Mapping[str, str] | None = None,
        row_tags: Mapping[str, str] | None = None,
        global_tags: Mapping[str, str] | None = None,
    ) -> str: ...
    @overload
    def log(
        self,
        inputs: Sequence[Row] | None = None,
        outputs: Sequence[Row] | None = None,
        feedbacks: Sequence[Row] | None = None,
        join_keys: Sequence[str] | None = None,
        timestamps: Sequence[datetime] | None = None,
        version: str | int | None = None,
        tags: Mapping[str, str] | None = None,
        row_tags: Sequence[Mapping[str, str]] | None = None,
        global_tags: Mapping[str, str] | None = None,
    ) -> tuple[str, list[str]]: ...
    def log(
        self,
        inputs: object = None,
        outputs: object = None,
        feedbacks: object = None,
        join_keys: object = None,
        timestamps: object = None,
        version: object = None,
        tags: object = None,
        row_tags: object = None,
        global_tags: object = None,
    ) -> str | tuple[str, list[str]]:
        """Log predictions (inputs + outputs), feedback (feedbacks + join_keys), or both.

        Lists log one row each and return `(batch_id, join_keys)`, with UUID4 join keys
        made where none are given; dicts log one record and return its join key.
        `tags`/`global_tags` go on every row, `row_tags` on its own row. Raises
        `LogError` (a `ValueError`; `LogTypeError` is also a `TypeError`) naming the
        field, before anything is sent.
        """
        batch = build_batch(
            self.name,
            now_ms=self.client.clock.now_ms(),
            max_bytes=self.client.settings.max_record_bytes,
            inputs=inputs,
            outputs=outputs,
            feedbacks=feedbacks,
            join_keys=join_keys,
            timestamps=timestamps,
            version=version,
            tags=tags,
            row_tags=row_tags,
            global_tags=global_tags,
        )
        self.client.send(batch.kind, batch.keys, batch.values)
        if batch.batch_id is None:
            return batch.join_keys[0]
        return batch.batch_id, batch.join_keys

    def log_completion(
        self,
        open_ai_api_request: Row,
        open_ai_api_response: Row,
        request_attributes: Row | None = None,
        feedback: Row | None = None,
        version: str | int | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """Log an OpenAI completion: inputs = request and attributes, outputs = the response.

        The join key is the response's `id`, so later feedback can be logged with
        `join_keys=[response["id"]]`. Returns the join key.
        """
        inputs = _plain(open_ai_api_request, "open_ai_api_request")
        response = _plain(open_ai_api_response, "open_ai_api_response")
        join_key = response.get("id")
        if not isinstance(join_key, str) or not join_key:
            raise LogError("open_ai_api_response['id']", "the response id is the join key: a str")
        attributes = _plain(request_attributes or {}, "request_attributes")
        for name, value in attributes.items():
            if name in inputs:
                raise LogError(f"request_attributes[{name!r}]", "a request field has that name")
            inputs[name] = value
        return self.log(
            inputs=inputs,
            outputs=response,
            feedbacks=feedback,
            join_keys=join_key,
            version=version,
            tags=tags,
        )


def fill_prompt(template: str, values: Mapping[str, Any]) -> str:
    """Fill the `{{name}}` placeholders of a prompt template; unknown names are left as they are."""
    return _PLACEHOLDER.sub(lambda m: str(values[m[1]]) if m[1] in values else m[0], template)


_client: Client | None = None
_client_lock = threading.Lock()
_exit_hook: list[bool] = []


def init(
    bootstrap_servers: str | None = None,
    *,
    settings: Settings | None = None,
    **producer_config: Any,
) -> Client:
    """Start the SDK for this process (like Gantry's `init`); call once, before logging.

    `bootstrap_servers` defaults to STREAMS_BOOTSTRAP_SERVERS, else localhost:9092; topic
    names and the record size limit come from the other STREAMS_* variables (or
    `settings`). Extra keywords are librdkafka settings (`linger_ms=20` or
    `**{"linger.ms": 20}`). A previous client is flushed and closed.
    """
    global _client
    if settings is None:
        env = dict(os.environ)
        if bootstrap_servers is not None:
            env["STREAMS_BOOTSTRAP_SERVERS"] = bootstrap_servers
        settings = Settings.from_env(env)
    elif bootstrap_servers is not None:
        settings = replace(settings, bootstrap_servers=bootstrap_servers)
    client = Client(settings, producer_config)
    with _client_lock:
        previous, _client = _client, client
        if not _exit_hook:
            atexit.register(_flush_at_exit)
            _exit_hook.append(True)
    log.info(
        "sdk_init bootstrap_servers=%s topic_prefix=%s",
        settings.bootstrap_servers,
        settings.topic_prefix,
    )
    if previous is not None and not previous.closed:
        previous.close()
    return client


def _current() -> Client:
    client = _client
    if client is None:
        raise StreamsError("the SDK is not started: call streams.init() first")
    return client


def get_application(name: str) -> Application:
    """The `Application` called `name`, logging through the client `init()` started."""
    return Application(_current(), name)


def flush(timeout: float = 30.0) -> None:
    """Wait until every record logged so far is delivered; raise `DeliveryError` naming the rest."""
    _current().flush(timeout)


def close(timeout: float = 30.0) -> None:
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
    try:
        client.close()
    except DeliveryError as error:
        log.error("exit_undelivered count=%d detail=%s", len(error.join_keys), error)
