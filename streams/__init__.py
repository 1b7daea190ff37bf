"""streams: join ML predictions with their delayed feedback on Kafka, in a stream."""

from __future__ import annotations

__version__ = "0.1.0"
