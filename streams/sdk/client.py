"""The producer SDK, call-compatible with Gantry's: `init`, `get_application`, `log`, `flush`.

    import streams
    streams.init()                   # STREAMS_BOOTSTRAP_SERVERS, else localhost:9092
    app = streams.get_application("loans")
    batch_id, join_keys = app.log(inputs=[...], outputs=[...])
    app.log(feedbacks=[{"approved": True}], join_keys=[join_keys[0]])
    streams.flush()                  # raises DeliveryError naming what failed

An `Application` is what `get_application` returns (`streams.sdk.session` holds the
process's client). A `log` call is checked and serialized whole before anything is sent
(`streams.sdk.records`), so wrong input raises at the call and sends nothing; then the
records go to the process's producer (`streams.sdk.producer`).
"""

from __future__ import annotations

import logging
import random
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, overload

from streams.sdk.producer import Client
from streams.sdk.records import LogError, LogTypeError, build_batch
from streams.sdk.versions import PLACEHOLDER, VersionCalls, VersionStore

log = logging.getLogger(__name__)

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


class Application(VersionCalls):
    """Logs predictions and feedback of one application; from `streams.get_application(name)`.

    Also keeps its prompt versions (`create_version`, `release_version`, `get_version`:
    `streams.sdk.versions`).
    """

    def __init__(self, client: Client, name: str) -> None:
        if not isinstance(name, str) or not 0 < len(name) <= 256:
            raise LogError("application", f"a name of 1 to 256 characters is needed, not {name!r}")
        self.client = client
        self.name = name
        self._versions: VersionStore | None = None

    def version_store(self) -> VersionStore:
        """The `versions` topic of the cluster this application logs to."""
        if self._versions is None:
            self._versions = VersionStore(self.client.settings)
        return self._versions

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
        *,
        as_batch: bool | None = False,
        sample_rate: float = 1.0,
        ignore_inputs: Sequence[str] | None = None,
        sort_on_timestamp: bool = True,
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
        *,
        as_batch: bool | None = False,
        sample_rate: float = 1.0,
        ignore_inputs: Sequence[str] | None = None,
        sort_on_timestamp: bool = True,
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
        *,
        as_batch: bool | None = False,
        sample_rate: float = 1.0,
        ignore_inputs: Sequence[str] | None = None,
        sort_on_timestamp: bool = True,
    ) -> str | tuple[str, list[str]]:
        """Log predictions (inputs + outputs), feedback (feedbacks + join_keys), or both.

        Lists log one row each and return `(batch_id, join_keys)`, with UUID4 join keys
        made where none are given; dicts log one record and return its join key.
        `tags`/`global_tags` go on every row, `row_tags` on its own row. Raises
        `LogError` (a `ValueError`; `LogTypeError` is also a `TypeError`) naming the
        field, before anything is sent.

        Gantry's other keywords: `sample_rate` (0 to 1) sends that share of the rows,
        picked at random (all rows are checked; the join keys of the rows sent are
        returned), as Gantry's did. `as_batch`, `ignore_inputs` and `sort_on_timestamp`
        have no effect: lists are always a batch with a `batch_id`, every input is kept,
        and each record carries its own timestamp, so their order does not matter.
        """
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int | float):
            raise LogTypeError("sample_rate", "a number from 0 to 1 is needed")
        if not 0 <= sample_rate <= 1:
            raise LogError("sample_rate", f"{sample_rate} is not from 0 to 1")
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
        join_keys, keys, values = batch.join_keys, batch.keys, batch.values
        if sample_rate < 1:
            # As Gantry's SDK: int(rate * rows) rows at random (one record: with that chance).
            count = len(keys)
            chosen = (
                sorted(random.sample(range(count), int(sample_rate * count)))
                if batch.batch_id is not None
                else [0] * (random.random() < sample_rate)
            )
            keys, values = [keys[i] for i in chosen], [values[i] for i in chosen]
            if batch.batch_id is not None:
                join_keys = [join_keys[i] for i in chosen]
        self.client.send(batch.kind, keys, values)
        if batch.batch_id is None:
            return join_keys[0]
        return batch.batch_id, join_keys

    def log_completion(
        self,
        open_ai_api_request: Row,
        open_ai_api_response: Row,
        request_attributes: Row | None = None,
        response_attributes: Row | None = None,
        feedback: Row | None = None,
        selected_choice_index: int | None = None,
        session_id: str | uuid.UUID | None = None,
        tags: Mapping[str, str] | None = None,
        version: str | int | None = None,
    ) -> str:
        """Log an OpenAI completion: inputs = request and attributes, outputs = the response.

        Gantry's keywords, in Gantry's order. `request_attributes` join the inputs and
        `response_attributes` the outputs (a name already there raises).
        `selected_choice_index` and `session_id` are kept as the tags
        `selected_choice_index` and `session_id`. `version` is the version number
        (`app.get_version("prod").version_number`). The join key is the response's `id`,
        so later feedback can be logged with `join_keys=[response["id"]]`. Returns it.
        """
        inputs = _plain(open_ai_api_request, "open_ai_api_request")
        response = _plain(open_ai_api_response, "open_ai_api_response")
        join_key = response.get("id")
        if not isinstance(join_key, str) or not join_key:
            raise LogError("open_ai_api_response['id']", "the response id is the join key: a str")
        _merge(inputs, request_attributes, "request_attributes", "a request field")
        _merge(response, response_attributes, "response_attributes", "a response field")
        extra: dict[str, str] = {}
        if selected_choice_index is not None:
            if isinstance(selected_choice_index, bool) or not isinstance(
                selected_choice_index, int
            ):
                raise LogTypeError("selected_choice_index", "an int (a choice's index) is needed")
            extra["selected_choice_index"] = str(selected_choice_index)
        if session_id is not None:
            if not isinstance(session_id, str | uuid.UUID):
                raise LogTypeError("session_id", "a str or a UUID is needed")
            extra["session_id"] = str(session_id)
        merged = dict(tags) if isinstance(tags, Mapping) else tags
        if extra:
            merged = dict(merged or {})
            for name, value in extra.items():
                if merged.setdefault(name, value) != value:
                    raise LogError(name, f"tags[{name!r}] says {merged[name]!r}, not {value!r}")
        return self.log(
            inputs=inputs,
            outputs=response,
            feedbacks=feedback,
            join_keys=join_key,
            version=version,
            tags=merged,
        )

    def log_llm_data(
        self,
        api_request: Row,
        api_response: Row,
        *args: Any,
        vendor: str = "openai",
        **keywords: Any,
    ) -> str:
        """Gantry's later name for `log_completion`, same arguments; `vendor` has no effect."""
        return self.log_completion(api_request, api_response, *args, **keywords)


def _merge(target: dict[str, Any], attributes: Row | None, field: str, what: str) -> None:
    """Add `attributes` to `target` (inputs or outputs); a name already there raises naming it."""
    for name, value in _plain(attributes or {}, field).items():
        if name in target:
            raise LogError(f"{field}[{name!r}]", f"{what} has that name")
        target[name] = value


def fill_prompt(template: str, values: Mapping[str, Any], strict: bool = False) -> str:
    """Fill the `{{name}}` placeholders of a prompt template (`version.config["prompt"]`).

    As Gantry's `fill_prompt`: placeholders without a value are left as they are and
    values without a placeholder are not used; either is logged as a warning, or raises
    `LogError` (a `ValueError`) with `strict=True`.
    """
    used: set[str] = set()

    def value_of(match: re.Match[str]) -> str:
        if match[1] not in values:
            return match[0]
        used.add(match[1])
        return str(values[match[1]])

    filled = PLACEHOLDER.sub(value_of, template)
    unfilled = sorted({name for name in PLACEHOLDER.findall(template) if name not in values})
    unused = sorted(str(name) for name in values if name not in used)
    if unfilled or unused:
        problem = f"prompt not fully filled: unfilled {unfilled}, unused values {unused}"
        if strict:
            raise LogError("values", problem)
        log.warning("fill_prompt %s", problem)
    return filled
