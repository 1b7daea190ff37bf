"""The benchmark's workload (BENCHMARK.md): predictions and feedback logged with the SDK.

Throughput mode preloads both topics: a few feedback records first (their predictions
come later), then N predictions of about 1 KB, then the rest of the feedback: half
positive, some for keys nobody predicted, some sent twice (same `event_id`), some a
second opinion on a key already answered. Every distinct feedback event for a
predicted key must yield exactly one joined record; that count is `expected_joined`.

Latency mode sends pairs at a fixed rate, open loop: a prediction now, and feedback on
the prediction sent `lead` seconds earlier, each feedback stamped by the SDK with the
time it is built and queued (`timestamp`, carried into the joined record as
`feedback_timestamp`).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from bench.sdk import sample_inputs
from streams.sdk.client import Application
from streams.sdk.producer import Client
from streams.sdk.records import FEEDBACK, build_batch, new_uuids
from streams.settings import Settings
from streams.worker.join import joined_id

APPLICATION = "loans"
BATCH = 500
# Shares of N feedback records.
UNKNOWN_SHARE = 0.05  # for keys with no prediction: they stay pending
DUPLICATE_SHARE = 0.05  # the same record sent again: no second joined record
EARLY_SHARE = 0.05  # sent before their prediction: joined when it arrives
REVISION_SHARE = 0.10  # a second feedback on an already answered prediction


@dataclass
class Plan:
    """What a throughput workload sends and what a correct join must output."""

    predictions: int
    feedback: int
    unknown: int
    duplicates: int
    early: int
    revisions: int
    positive: int
    expected_joined: int
    prediction_bytes: float = 0.0
    feedback_bytes: float = 0.0
    known_keys: list[str] = field(default_factory=list, repr=False)
    expected_ids: set[str] = field(default_factory=set, repr=False)

    def summary(self) -> dict[str, Any]:
        """The plan as JSON-ready figures (without the keys and ids)."""
        figures = dict(vars(self))
        figures.pop("known_keys")
        figures.pop("expected_ids")
        return figures


def model_outputs(count: int, seed: int = 0) -> list[dict[str, Any]]:
    """What a loan model would log as its output for `count` rows."""
    rng = random.Random(seed)
    reasons = ["income", "credit_history", "term", "amount", "region", "employment"]
    return [
        {
            "approved": (score := round(rng.random(), 4)) >= 0.35,
            "score": score,
            "model": "loan-gbm",
            "threshold": 0.35,
            "reasons": rng.sample(reasons, 3),
        }
        for _ in range(count)
    ]


def feedback_row(index: int) -> dict[str, Any]:
    """One feedback payload; every second one is positive."""
    return {"thumbs_up": index % 2 == 0, "reviewer": f"r{index % 40}"}


def _send_feedback(client: Client, keys: list[str], rows: list[dict[str, Any]]) -> list[bytes]:
    """Log feedback through the SDK's record builder and producer; return the values sent."""
    values: list[bytes] = []
    for start in range(0, len(keys), BATCH):
        batch = build_batch(
            APPLICATION,
            feedbacks=rows[start : start + BATCH],
            join_keys=keys[start : start + BATCH],
            now_ms=client.clock.now_ms(),
            max_bytes=client.settings.max_record_bytes,
        )
        client.send(FEEDBACK, batch.keys, batch.values)
        values.extend(batch.values)
    return values


def _send_predictions(client: Client, keys: list[str], seed: int) -> int:
    """Log a prediction of about 1 KB for each of `keys`; return the bytes sent."""
    inputs, outputs = sample_inputs(BATCH), model_outputs(BATCH, seed)
    sent = 0
    for start in range(0, len(keys), BATCH):
        chunk = keys[start : start + BATCH]
        batch = build_batch(
            APPLICATION,
            inputs=inputs[: len(chunk)],
            outputs=outputs[: len(chunk)],
            join_keys=chunk,
            version="gbm-3",
            tags={"env": "bench", "region": "eu"},
            now_ms=client.clock.now_ms(),
            max_bytes=client.settings.max_record_bytes,
        )
        client.send(batch.kind, batch.keys, batch.values)
        sent += sum(map(len, batch.values))
    return sent


def preload_predictions(settings: Settings, n: int, seed: int) -> list[str]:
    """Log `n` predictions (no feedback) to the topics of `settings`; return their keys."""
    keys = new_uuids(n)
    client = Client(settings)
    _send_predictions(client, keys, seed)
    client.close(timeout=600)
    return keys


def preload(settings: Settings, n: int, seed: int) -> Plan:
    """Log the throughput workload for `n` predictions to the topics of `settings`."""
    rng = random.Random(seed)
    unknown, duplicates = int(n * UNKNOWN_SHARE), int(n * DUPLICATE_SHARE)
    early, revisions = int(n * EARLY_SHARE), int(n * REVISION_SHARE)
    first = n - unknown - duplicates - revisions
    keys = new_uuids(n)
    answered = keys[:first]
    revised = rng.sample(answered, revisions)
    later_keys = answered[early:] + revised + new_uuids(unknown)
    rng.shuffle(later_keys)
    rows = [feedback_row(i) for i in range(first + revisions + unknown)]
    client = Client(settings)
    sent = _send_feedback(client, answered[:early], rows[:early])
    prediction_bytes = _send_predictions(client, keys, seed)
    sent += _send_feedback(client, later_keys, rows[early:])
    # Duplicates: records already sent, sent again byte for byte (same event_id).
    repeats = rng.sample(range(len(sent)), duplicates)
    client.send(FEEDBACK, [_key_of(sent[i]) for i in repeats], [sent[i] for i in repeats])
    client.close(timeout=300)
    return Plan(
        predictions=n,
        feedback=len(sent) + duplicates,
        unknown=unknown,
        duplicates=duplicates,
        early=early,
        revisions=revisions,
        positive=sum(1 for row in rows if row["thumbs_up"]),
        expected_joined=first + revisions,
        prediction_bytes=prediction_bytes / n,
        feedback_bytes=sum(map(len, sent)) / len(sent),
        known_keys=keys,
        expected_ids=expected_ids(sent, set(keys)),
    )


def expected_ids(sent: list[bytes], predicted: set[str]) -> set[str]:
    """The ids of the joined records that feedback values `sent` must yield."""
    ids = set()
    for value in sent:
        record = orjson.loads(value)
        if record["join_key"] in predicted:
            ids.add(joined_id(APPLICATION, record["join_key"], record["event_id"]))
    return ids


def _key_of(value: bytes) -> bytes:
    # Feedback values are the SDK's JSON; the Kafka key is the join key.
    start = value.index(b'"join_key":"') + len(b'"join_key":"')
    return value[start : value.index(b'"', start)]


def send_feedback_on(settings: Settings, keys: list[str]) -> set[str]:
    """Log one new feedback on each of `keys` (all predicted); return the joined ids due."""
    client = Client(settings)
    values = _send_feedback(client, keys, [feedback_row(i) for i in range(len(keys))])
    client.close(timeout=60)
    return expected_ids(values, set(keys))


class OpenLoopProducer(threading.Thread):
    """Sends predictions and their feedback at `rate` feedback/s, whatever the reader sees.

    Every `tick` seconds it sends what the schedule says is due, so a slow contender
    does not slow the producer down (open loop). Each second's feedback includes the
    same shares of duplicates and unknown keys as the throughput workload.
    """

    def __init__(
        self, settings: Settings, rate: float, seconds: float, lead: float = 1.0, seed: int = 0
    ) -> None:
        super().__init__(name="open-loop-producer", daemon=True)
        self.settings, self.rate, self.seconds, self.lead = settings, rate, seconds, lead
        self.rng = random.Random(seed)
        self.tick = 0.01
        self.answered = 0  # predictions given feedback so far
        self.sent_feedback = 0
        self.expected_joined = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        """Send until `seconds` have passed, then flush."""
        try:
            self._run()
        except BaseException as error:  # surfaced by the caller, not lost in the thread
            self.error = error

    def _run(self) -> None:
        client = Client(self.settings)
        app = Application(client, APPLICATION)
        inputs, outputs = sample_inputs(BATCH), model_outputs(BATCH)
        lag = max(1, round(self.lead * self.rate))  # feedback goes to the prediction this far back
        keys: list[str] = []
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < self.seconds + self.lead:
            due = int(elapsed * self.rate) - len(keys)
            if due > 0:
                chunk = new_uuids(due)
                rows = [(len(keys) + j) % BATCH for j in range(due)]
                app.log(
                    inputs=[inputs[j] for j in rows],
                    outputs=[outputs[j] for j in rows],
                    join_keys=chunk,
                    version="gbm-3",
                )
                keys.extend(chunk)
                end = len(keys) - lag
                if end > 0:
                    self._feedback(client, keys[max(0, end - due) : end])
            time.sleep(self.tick)
        client.close(timeout=60)

    def _feedback(self, client: Client, targets: list[str]) -> None:
        """Send feedback on `targets` (predictions sent `lead` s ago), with the workload's mix."""
        targets = targets[: max(0, int(self.seconds * self.rate) - self.answered)]
        if not targets:
            return
        self.answered += len(targets)
        unknown = [self.rng.random() < UNKNOWN_SHARE for _ in targets]
        fb_keys = [new_uuids(1)[0] if u else key for key, u in zip(targets, unknown, strict=True)]
        values = _send_feedback(client, fb_keys, [feedback_row(i) for i in range(len(fb_keys))])
        self.expected_joined += unknown.count(False)
        copies = [value for value in values if self.rng.random() < DUPLICATE_SHARE]
        if copies:  # sent again byte for byte: no second joined record
            client.send(FEEDBACK, [_key_of(value) for value in copies], copies)
        self.sent_feedback += len(values) + len(copies)
