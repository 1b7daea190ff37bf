"""The join rules (CONTRACT.md section 4) as plain functions over plain values.

Each function takes the stored row for one (application, join_key), one input and
the current time, and returns the new row and the records to emit. The row passed
in is the caller's to give away: it may be updated in place and returned. Nothing here
knows about faust or Kafka, so the rules are tested exhaustively without a broker.

Replays. After a crash the worker re-reads input it had already applied (at least
once). Every applied input is remembered with its source position (`src`), and
every joined record with the `src` of the input that caused it (`by`). An input
seen again *at the same position* is a replay: its joined records are emitted
again, identical but for `joined_at`, so a record lost in the crash is not lost.
The same `event_id` at another position is a duplicate sent by a producer, and is
ignored.

A repeat must carry what the first emission carried. The merged feedback and the
revision depend only on the feedback entries up to it (`fbs` only grows), but the
prediction may have been replaced since (rule 6), so each entry remembers the
prediction it was joined with (`pid`), and a replaced prediction that feedback was
joined with stays in the row (`was`, by event_id) until the row expires: a replay
then rebuilds the record from it, not from the prediction that replaced it.

The sweep can reach a row between a crash and the replay of its inputs. Feedback it
takes out of the row (timed out, or joined with a prediction that expired) is
remembered in `done` (event_id -> [src, forget at]) for `expired_memory_ms`, so that
a replay of it is still a replay (no second outcome) and a producer's retry still a
duplicate. A joined record such a replay would have re-sent cannot be rebuilt: it is
lost if the crash lost it (README, Guarantees).
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from streams.records import Record, format_ts, spliced

# The namespace of joined ids; never change it, or ids change across versions.
JOINED_NAMESPACE = uuid.UUID("6f3c1a5e-9a43-4c1b-8d8e-2b7f0c1d4e21")
_NAMESPACE_BYTES = JOINED_NAMESPACE.bytes

Outcome = Literal["stored", "expired", "joined", "pending", "unmatched", "duplicate"]
Row = dict[str, Any]


@dataclass
class Emit:
    """A record to write to an output topic (`joined` or `unmatched`)."""

    topic: Literal["joined", "unmatched"]
    record: Record


@dataclass
class Result:
    """What one input did: the row to store (None deletes it), emits and the outcome."""

    row: Row | None
    emits: list[Emit] = field(default_factory=list)
    outcome: Outcome = "stored"
    replay: bool = False


def joined_id(application: str, join_key: str, feedback_event_id: str) -> str:
    """The deterministic id of a joined record: the same on every run and every worker.

    The UUID version 5 (RFC 4122) in `JOINED_NAMESPACE` of the three joined by NUL
    characters, as `uuid.uuid5` makes it, without building a `UUID` object (which was
    a fifth of the work of one joined record).
    """
    name = f"{application}\x00{join_key}\x00{feedback_event_id}".encode()
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name).digest()[:16])
    digest[6] = digest[6] & 0x0F | 0x50  # version 5
    digest[8] = digest[8] & 0x3F | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def new_row(application: str, join_key: str) -> Row:
    """An empty row: no prediction, no feedback, nothing pending."""
    return {
        "app": application,
        "key": join_key,
        "pred": None,
        "pids": {},
        "fbs": [],
        "pend": [],
        "gone": None,
    }


def next_due(row: Row, expired_memory_ms: int) -> int | None:
    """The earliest time at which `expire_due` has something to do for this row."""
    pred = row["pred"]
    if not row["pend"] and row["gone"] is None and "done" not in row and "prior" not in row:
        return None if pred is None else pred["exp"]  # the usual row: its prediction's expiry
    times = [entry["due"] for entry in row["pend"]]
    times.extend(entry[1] for entry in row.get("done", {}).values())
    if "prior" in row:
        times.append(row["prior"]["until"])
    if pred is not None:
        times.append(pred["exp"])
    if row["gone"] is not None:
        times.append(row["gone"] + expired_memory_ms)
    return min(times) if times else None


def joined_record(row: Row, index: int, now_ms: int) -> Record:
    """The joined record for the feedback at `index`: all feedback up to it, merged.

    The prediction is the one the feedback was joined with (`pid`), even if replaced since.
    """
    entry = row["fbs"][index]
    pred = row["pred"]
    joined_with = entry.get("pid")  # absent in rows written before it was kept
    if joined_with is not None and joined_with != pred["id"]:
        pred = row["was"][joined_with]
    merged: dict[str, Any] = {}
    for earlier in row["fbs"][: index + 1]:
        merged.update(earlier["f"])
    return {
        "schema": "joined/v1",
        "id": joined_id(row["app"], row["key"], entry["id"]),
        "application": row["app"],
        "join_key": row["key"],
        "version": pred["version"],
        "inputs": spliced(pred["inputs"]),
        "outputs": spliced(pred["outputs"]),
        "tags": pred["tags"],
        "prediction_event_id": pred["id"],
        "feedback_event_id": entry["id"],
        "prediction_timestamp": format_ts(pred["ts"]),
        "feedback_timestamp": format_ts(entry["ts"]),
        "feedback": merged,
        "feedback_revision": index + 1,
        "joined_at": format_ts(now_ms),
    }


def unmatched_record(feedback: Record, reason: str, detail: str, now_ms: int) -> Record:
    """An `unmatched/v1` record carrying the feedback as received."""
    return {
        "schema": "unmatched/v1",
        "reason": reason,
        "detail": detail,
        "feedback": feedback,
        "unmatched_at": format_ts(now_ms),
    }


def _join(
    row: Row, event_id: str, ts: int, fields: dict[str, Any], src: str, by: str, now: int
) -> Emit:
    pid = row["pred"]["id"]
    row["fbs"].append({"id": event_id, "ts": ts, "f": fields, "src": src, "by": by, "pid": pid})
    return Emit("joined", joined_record(row, len(row["fbs"]) - 1, now))


def _reemit(row: Row, src: str, now: int) -> list[Emit]:
    rows = [row["prior"], row] if "prior" in row else [row]
    return [
        Emit("joined", joined_record(held, i, now))
        for held in rows
        for i, e in enumerate(held["fbs"])
        if e["by"] == src
    ]


def _known_feedback(row: Row, event_id: str) -> bool:
    return any(e["id"] == event_id for e in row["fbs"]) or any(
        p["id"] == event_id for p in row["pend"]
    )


DAY_MS = 86_400_000


def on_prediction(
    row: Row | None,
    prediction: Record,
    ts: int,
    src: str,
    now: int,
    retention_ms: int,
    expired_memory_ms: int = DAY_MS,
) -> Result:
    """Apply one prediction (already valid `prediction/v1`, `ts` its event time in ms).

    `expired_memory_ms`: how long a row that this prediction turns into an `expired`
    marker remembers the feedback it held (STREAMS_EXPIRED_MEMORY).
    """
    row = row if row is not None else new_row(prediction["application"], prediction["join_key"])
    # Every prediction event_id applied to this row, with where it was read: a retry
    # (even of a prediction since replaced) changes nothing; a replay re-emits.
    seen_at = row["pids"].get(prediction["event_id"])
    if seen_at is not None:
        if seen_at == src:
            again = _reemit(row, src, now)
            for entry in row.get("done", {}).values():
                if len(entry) > 3 and entry[3] == src:  # pending feedback it sent to unmatched
                    detail = _expired_detail(entry[2])
                    again.append(
                        Emit("unmatched", unmatched_record(entry[4], "expired", detail, now))
                    )
            return Result(row, again, "stored", replay=True)
        return Result(row, [], "duplicate")
    row["pids"][prediction["event_id"]] = src
    stale = row["pred"]
    if stale is not None and now >= stale["exp"]:
        # Past its retention but not swept yet: expired here as the sweep would do it, so
        # that what follows does not depend on whether the sweep came first.
        for entry in row["fbs"]:
            row.setdefault("done", {})[entry["id"]] = [
                entry["src"],
                stale["exp"] + expired_memory_ms,
            ]
        row.update(pred=None, fbs=[], gone=max(stale["exp"], row["gone"] or 0))
        row.pop("was", None)
    expires = ts + retention_ms
    # Feedback whose TTL has passed is the sweep's (`no_prediction`), whenever the sweep
    # comes: so the outcome does not depend on whether it ran first (a replay after a
    # crash may find it run).
    overdue = [p for p in row["pend"] if now >= p["due"]]
    if now >= expires:
        # Arrived already expired: remember that it existed, so feedback says `expired`.
        gone = max(expires, row["gone"] or 0)
        timed_out = [
            Emit("unmatched", unmatched_record(p["rec"], "expired", _expired_detail(expires), now))
            for p in row["pend"]
            if now < p["due"]
        ]
        marker = {**new_row(row["app"], row["key"]), "gone": gone, "pids": row["pids"]}
        marker["pend"] = overdue
        done = dict(row.get("done", {}))
        # Feedback joined with the prediction it replaces: a retry of it stays a duplicate,
        # a replay a replay, for as long as if that prediction had expired on its own.
        held_until = row["pred"]["exp"] if row["pred"] is not None else gone
        for entry in row["fbs"]:
            done[entry["id"]] = [entry["src"], held_until + expired_memory_ms]
        for waiting in row["pend"]:  # sent to `unmatched` here: read again, it is a replay
            if now < waiting["due"]:
                forget = gone + expired_memory_ms
                done[waiting["id"]] = [waiting["src"], forget, expires, src, waiting["rec"]]
        if done:
            marker["done"] = done
        if row["fbs"]:
            # What the joined records so far were built from, for their repeats after a crash.
            held = {k: row[k] for k in ("app", "key", "pred", "fbs") if k in row}
            marker["prior"] = {
                **held,
                "was": row.get("was", {}),
                "until": held_until + expired_memory_ms,
            }
        elif "prior" in row:
            marker["prior"] = row["prior"]
        return Result(marker, timed_out, "expired")
    replaced = row["pred"]
    if replaced is not None and any(e.get("pid") == replaced["id"] for e in row["fbs"]):
        # Joined records were built from it: keep it for their repeats after a crash.
        row.setdefault("was", {})[replaced["id"]] = replaced
    row["pred"] = {
        "id": prediction["event_id"],
        "ts": ts,
        "exp": expires,
        "version": prediction.get("version"),
        "inputs": prediction["inputs"],
        "outputs": prediction["outputs"],
        "tags": prediction.get("tags") or {},
    }
    row["gone"] = None
    emits: list[Emit] = []
    inline = prediction.get("feedback")
    if inline and not _known_feedback(row, prediction["event_id"]):
        emits.append(_join(row, prediction["event_id"], ts, inline, src, src, now))
    for waiting in row["pend"]:
        if now < waiting["due"] and not any(e["id"] == waiting["id"] for e in row["fbs"]):
            emits.append(
                _join(
                    row,
                    waiting["id"],
                    waiting["ts"],
                    waiting["rec"]["feedback"],
                    waiting["src"],
                    src,
                    now,
                )
            )
    row["pend"] = overdue
    return Result(row, emits, "stored")


def on_feedback(
    row: Row | None,
    feedback: Record,
    ts: int,
    src: str,
    now: int,
    pending_ttl_ms: int,
    expired_memory_ms: int = DAY_MS,
) -> Result:
    """Apply one feedback record (already valid `feedback/v1`, `ts` its event time in ms).

    `expired_memory_ms`: how long feedback sent to `unmatched` as `expired` is remembered
    (STREAMS_EXPIRED_MEMORY), so that a replay or a retry of it is told apart.
    """
    row = row if row is not None else new_row(feedback["application"], feedback["join_key"])
    event_id = feedback["event_id"]
    done = row.get("done", {}).get(event_id)
    if done is not None:  # out of the row: timed out, expired, or its prediction expired
        if done[0] != src:
            return Result(row, [], "duplicate")
        again = _reemit(row, src, now)  # joined with a prediction since replaced by a marker
        if len(done) > 2:  # sent to `unmatched` by this input: its record may be lost
            detail = _expired_detail(done[2])
            again.append(Emit("unmatched", unmatched_record(feedback, "expired", detail, now)))
        return Result(row, again, "unmatched", replay=True)
    for entry in row["fbs"]:
        if entry["id"] == event_id:
            if entry["src"] == src:
                return Result(row, _reemit(row, src, now), "joined", replay=True)
            return Result(row, [], "duplicate")
    for waiting in row["pend"]:
        if waiting["id"] == event_id:
            return (
                Result(row, [], "pending", replay=True)
                if waiting["src"] == src
                else Result(row, [], "duplicate")
            )
    pred = row["pred"]
    if pred is not None and now < pred["exp"]:
        return Result(
            row, [_join(row, event_id, ts, feedback["feedback"], src, src, now)], "joined"
        )
    if pred is not None or row["gone"] is not None:
        expired = pred["exp"] if pred is not None else row["gone"]
        # Remembered, so that read again after the prediction was replaced (the other
        # topic read first after a crash) it is still this outcome, not a second one.
        row.setdefault("done", {})[event_id] = [src, expired + expired_memory_ms, expired]
        return Result(
            row,
            [
                Emit(
                    "unmatched",
                    unmatched_record(feedback, "expired", _expired_detail(expired), now),
                )
            ],
            "unmatched",
        )
    row["pend"].append(
        {"id": event_id, "ts": ts, "src": src, "rec": feedback, "due": now + pending_ttl_ms}
    )
    return Result(row, [], "pending")


def expire_due(row: Row, now: int, expired_memory_ms: int) -> Result:
    """Apply what is due at `now`: expire the prediction, time out pending feedback, forget markers.

    Returns the row to keep (None deletes it) and the `unmatched` records to emit.
    """
    done = {k: v for k, v in row.get("done", {}).items() if now < v[1]}
    row = {**row, "pend": list(row["pend"])}
    emits: list[Emit] = []
    pred = row["pred"]
    if pred is not None and now >= pred["exp"]:
        for entry in row["fbs"]:
            done[entry["id"]] = [entry["src"], pred["exp"] + expired_memory_ms]
        row.update(pred=None, fbs=[], gone=pred["exp"])
        row.pop("was", None)
    still_waiting = []
    for waiting in row["pend"]:
        if now >= waiting["due"]:
            done[waiting["id"]] = [waiting["src"], waiting["due"] + expired_memory_ms]
            detail = (
                "no prediction for this application and join_key arrived within STREAMS_PENDING_TTL"
            )
            emits.append(
                Emit("unmatched", unmatched_record(waiting["rec"], "no_prediction", detail, now))
            )
        else:
            still_waiting.append(waiting)
    row["pend"] = still_waiting
    if done:
        row["done"] = done
    else:
        row.pop("done", None)
    if "prior" in row and now >= row["prior"]["until"]:
        row.pop("prior")
    if row["gone"] is not None and now >= row["gone"] + expired_memory_ms:
        row["gone"] = None
    empty = (
        row["pred"] is None
        and not row["pend"]
        and row["gone"] is None
        and not done
        and "prior" not in row
    )
    return Result(None if empty else row, emits, "unmatched" if emits else "expired")


def _expired_detail(expired_ms: int) -> str:
    return f"the prediction's retention ended at {format_ts(expired_ms)}"
