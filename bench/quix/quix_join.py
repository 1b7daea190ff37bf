"""The benchmark's Quix Streams peer: feedback (left) `join_asof` predictions (right).

Runs in its own virtualenv (`.venv-quix`, from `bench/quix/requirements.txt`), since
quixstreams pins its own confluent-kafka; it imports nothing from the project.
Configured like the project's worker: STREAMS_BOOTSTRAP_SERVERS, STREAMS_TOPIC_PREFIX
(reads `<prefix>predictions` and `<prefix>feedback`, writes `<prefix>joined`),
STREAMS_APP_ID (consumer group) and STREAMS_DATA_DIR (state dir).

`join_asof` joins each feedback record to the latest prediction with the same key whose
Kafka timestamp is at or before the feedback's. So, as the benchmark reports: feedback
older than its prediction is never joined, a duplicate feedback record yields a second
joined record (same id), and each joined record carries only its own feedback (revision
1). A joined record is made only when the application matches.

The wall-clock ms of the first input record processed goes to
`STREAMS_DATA_DIR/first-read-ms`, from where the benchmark times every contender.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from quixstreams import Application

JOINED_NAMESPACE = uuid.UUID("6f3c1a5e-9a43-4c1b-8d8e-2b7f0c1d4e21")  # as streams/join.py


def now_rfc3339() -> str:
    """The time now as RFC 3339 UTC with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def joined(feedback: dict[str, Any], prediction: dict[str, Any]) -> dict[str, Any] | None:
    """The joined/v1 record of one feedback and its prediction (None across applications)."""
    application = feedback["application"]
    if prediction.get("application") != application:
        return None
    now = now_rfc3339()
    key, event_id = feedback["join_key"], feedback["event_id"]
    return {
        "schema": "joined/v1",
        "id": str(uuid.uuid5(JOINED_NAMESPACE, f"{application}\x00{key}\x00{event_id}")),
        "application": application,
        "join_key": key,
        "version": prediction.get("version"),
        "inputs": prediction["inputs"],
        "outputs": prediction["outputs"],
        "tags": prediction.get("tags") or {},
        "prediction_event_id": prediction["event_id"],
        "feedback_event_id": event_id,
        "prediction_timestamp": prediction.get("timestamp", now),
        "feedback_timestamp": feedback.get("timestamp", now),
        "feedback": feedback["feedback"],
        "feedback_revision": 1,
        "joined_at": now,
    }


class FirstRead:
    """Writes the wall-clock ms of the first record it sees to `path`, once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done = False

    def __call__(self, value: Any) -> None:
        """Mark the time on the first call; do nothing after."""
        if not self.done:
            self.done = True
            partial = self.path.with_suffix(".partial")
            partial.write_text(str(time.time_ns() // 1_000_000))
            partial.replace(self.path)


def main() -> None:
    """Build the join and run it until SIGTERM/SIGINT."""
    prefix = os.environ.get("STREAMS_TOPIC_PREFIX", "")
    data_dir = Path(os.environ.get("STREAMS_DATA_DIR", "streams-data"))
    data_dir.mkdir(parents=True, exist_ok=True)
    app = Application(
        broker_address=os.environ.get("STREAMS_BOOTSTRAP_SERVERS", "localhost:9092"),
        consumer_group=os.environ.get("STREAMS_APP_ID", "streams-quix"),
        state_dir=data_dir / "quix",
        auto_offset_reset="earliest",
        commit_interval=1.0,  # as often as the other contenders, not every 5 s
        # A join aligns its inputs by time: with the default poll timeout (1 s) an input
        # waited up to a second for the other topic (p50 700 ms measured). Poll like the
        # lean loop does (50 ms).
        consumer_poll_timeout=0.05,
        loglevel="WARNING",
    )
    mark = FirstRead(data_dir / "first-read-ms")
    predictions = app.dataframe(app.topic(f"{prefix}predictions", value_deserializer="json"))
    feedback = app.dataframe(app.topic(f"{prefix}feedback", value_deserializer="json"))
    predictions = predictions.update(mark)
    feedback = feedback.update(mark).filter(lambda value: "feedback" in value)
    out = feedback.join_asof(predictions, how="inner", on_merge=joined)
    out = out.filter(lambda value: value is not None)
    out.to_topic(app.topic(f"{prefix}joined", value_serializer="json"))
    print(f"quix_started app_id={app.config.consumer_group}", flush=True)
    app.run()


if __name__ == "__main__":
    main()
