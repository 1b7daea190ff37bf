"""The join agent's channel: what faust's own consumer group does never holds or drops a batch.

The worker's reader hands each batch to the join agent through a `BatchChannel` and
waits until it is applied. faust's own channels wait while faust's consumer group
rebalances (flow control suspended) and are cleared when it resumes, which lost a batch
in flight and hung the reader; these tests show the agent's channel does neither, and
that faust's own channel does (so the difference is what the tests see). No broker:
flow control is driven by hand as faust's consumer drives it.
"""

from __future__ import annotations

import asyncio

import faust
import pytest

from streams.worker.app import Batch, BatchChannel

pytestmark = pytest.mark.unit


def _app() -> faust.App:
    return faust.App("test-agent-channel", broker="kafka://localhost:1", store="memory://")


def _subscribed(channel: faust.Channel[Batch]) -> faust.Channel[Batch]:
    # What the agent's stream does when it starts reading: iterate a clone.
    return channel.clone(is_iterator=True)


def test_a_batch_is_put_at_once_while_faust_suspends_its_flow_and_survives_the_resume() -> None:
    async def scenario() -> list[str]:
        app = _app()
        channel = BatchChannel(app, maxsize=1)
        stream_side = _subscribed(channel)
        app.flow_control.suspend()  # faust's own group is rebalancing
        batch = Batch(["a record"], asyncio.get_running_loop().create_future())
        await asyncio.wait_for(channel.put(batch), timeout=1.0)  # does not wait for faust
        app.flow_control.resume()  # faust clears the queues it manages here
        got = await asyncio.wait_for(stream_side.queue.get(), timeout=1.0)
        return list(got.messages)

    assert asyncio.run(scenario()) == ["a record"]


def test_faust_own_channel_would_hold_the_batch_and_drop_it_on_resume() -> None:
    """The failure the agent's channel avoids, shown on faust's own channel."""

    async def scenario() -> tuple[bool, bool]:
        app = _app()
        channel = app.channel(maxsize=1)
        stream_side = channel.clone(is_iterator=True)
        app.flow_control.suspend()
        put = asyncio.ensure_future(channel.put("a batch"))
        await asyncio.sleep(0.05)
        held = not put.done()
        app.flow_control.resume()
        await asyncio.wait_for(put, timeout=1.0)
        app.flow_control.suspend()
        app.flow_control.resume()  # a second rebalance, with the batch in the queue
        return held, stream_side.queue.empty()

    held, dropped = asyncio.run(scenario())
    assert held, "faust's channel did not wait while its flow was suspended"
    assert dropped, "faust's channel kept the batch through a resume"


def test_put_refuses_when_no_agent_reads_the_channel() -> None:
    """A batch handed over before the agent runs would never be applied: refused, not lost."""

    async def scenario() -> None:
        channel = BatchChannel(_app(), maxsize=1)
        batch = Batch([], asyncio.get_running_loop().create_future())
        await channel.put(batch)

    with pytest.raises(RuntimeError, match="join agent is not running"):
        asyncio.run(scenario())
