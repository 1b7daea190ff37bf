"""How fast the SDK logs: `python -m bench.sdk [n] [batch]` prints records/s.

The figure covers building, checking and serializing every record, queueing it, and the
final flush (so every record is acknowledged by the broker); not the topic creation and
the producer's first connection, which happen before the clock starts.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from streams.sdk.client import Application
from streams.sdk.producer import Client
from streams.settings import Settings
from streams.topics import create_topics

log = logging.getLogger(__name__)


def sample_inputs(count: int) -> list[dict[str, Any]]:
    """`count` distinct loan-application rows; each makes a prediction record of about 1 KB."""
    return [
        {
            "applicant_id": f"A-{i:08d}",
            "amount": 1000 + i % 50_000,
            "term_months": 12 * (1 + i % 5),
            "income": 20_000.0 + (i * 37) % 180_000,
            "employment": ["salaried", "self-employed", "retired"][i % 3],
            "region": f"region-{i % 17}",
            "credit_history": [round(0.1 * ((i + k) % 10), 1) for k in range(24)],
            "notes": "customer asked for a faster decision; documents complete " * 6,
        }
        for i in range(count)
    ]


def log_throughput(settings: Settings, n: int = 200_000, batch: int = 500) -> float:
    """Log `n` ~1 KB predictions in batches of `batch`; return records/s, flush included."""
    create_topics(settings)
    client = Client(settings)
    app = Application(client, "sdk-bench")
    inputs = sample_inputs(batch)
    outputs = [{"approved": i % 4 != 0, "score": (i % 100) / 100} for i in range(batch)]
    # Connect and get the idempotent producer id before the clock starts.
    app.log(inputs=inputs[:1], outputs=outputs[:1], version="warm-up")
    client.flush(timeout=60)
    start = time.perf_counter()
    logged = 0
    while logged < n:
        size = min(batch, n - logged)
        app.log(inputs=inputs[:size], outputs=outputs[:size], version="bench", tags={"run": "sdk"})
        logged += size
    client.close(timeout=300)
    elapsed = time.perf_counter() - start
    log.info("sdk_bench n=%d batch=%d seconds=%.3f", n, batch, elapsed)
    return n / elapsed


def main(argv: list[str] | None = None) -> None:
    """Print the SDK's throughput against the broker in STREAMS_BOOTSTRAP_SERVERS."""
    args = sys.argv[1:] if argv is None else argv
    n = int(args[0]) if args else 200_000
    batch = int(args[1]) if len(args) > 1 else 500
    rate = log_throughput(Settings.from_env(), n, batch)
    print(f"sdk log throughput: {rate:,.0f} records/s (n={n}, batch={batch}, flush included)")


if __name__ == "__main__":
    main()
