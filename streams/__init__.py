"""streams: join ML predictions with their delayed feedback on Kafka, in a stream."""

from __future__ import annotations

from streams.errors import DeliveryError, StreamsError
from streams.sdk.client import Application, fill_prompt
from streams.sdk.consumer import consume_joined
from streams.sdk.joinkey import JoinKey
from streams.sdk.records import LogError, LogTypeError
from streams.sdk.session import GantryKeywordWarning, close, flush, get_application, init
from streams.sdk.versions import Version

__version__ = "0.1.0"

__all__ = [
    "Application",
    "DeliveryError",
    "GantryKeywordWarning",
    "JoinKey",
    "LogError",
    "LogTypeError",
    "StreamsError",
    "Version",
    "close",
    "consume_joined",
    "fill_prompt",
    "flush",
    "get_application",
    "init",
]
