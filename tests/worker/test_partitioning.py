"""The worker's murmur2 gives every key the partition Java clients and aiokafka give it."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from streams.worker.processing import _partition_for, murmur2, partition_for

pytestmark = pytest.mark.unit


@given(st.binary(max_size=600))
def test_murmur2_matches_aiokafka(key: bytes) -> None:
    assert murmur2(key) & 0x7FFFFFFF == aiokafka_murmur2(key) & 0x7FFFFFFF


@given(st.text(min_size=1, max_size=80), st.integers(1, 64))
def test_partition_for_matches_aiokafka(join_key: str, partitions: int) -> None:
    key = join_key.encode()
    expected = (aiokafka_murmur2(key) & 0x7FFFFFFF) % partitions
    assert partition_for(key, partitions) == expected  # librdkafka's where it is exposed
    assert _partition_for(key, partitions) == expected  # the Python fallback
