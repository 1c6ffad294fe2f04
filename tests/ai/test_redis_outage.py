"""A hung Redis is not a slow server: with Redis black-holed (a proxy that accepts and never
answers), replies run at full speed with local delivery, cancels work, subscribing says
BROKER_UNAVAILABLE, and once Redis answers again events reach the other workers again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.ai.conftest import AIServer, StartServer
from tests.ai.fake_openai import Behaviour
from tests.ai.tcp_proxy import TcpProxy
from tests.live import wait_until

CANCEL = "mutation($id: ID!) { cancelMessage(id: $id) { status content } }"


@pytest.fixture
async def redis_proxy() -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy("127.0.0.1", 6379)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


def broker_of(ai: AIServer) -> Any:
    return ai.server.app.state.atlas["services"].ai.broker


def replies_of(ai: AIServer) -> dict[Any, Any]:
    replies: dict[Any, Any] = ai.server.app.state.atlas["services"].ai.replies
    return replies


async def two_workers(
    start: StartServer, proxy: TcpProxy, **overrides: Any
) -> tuple[AIServer, AIServer]:
    # A short pause before Redis is probed again, so the heal is noticed soon; a timeout
    # shorter than the other tests' (what a hung Redis costs here), still above a stall of
    # the loaded test machine.
    settings = {
        "redis_url": proxy.url,
        "atlas_redis_retry_max": 1.0,
        "atlas_redis_timeout": 0.5,
        **overrides,
    }
    first = await start(**settings)
    second = await start(**settings)
    return first, second


def check_stream(events: list[dict[str, Any]]) -> str:
    """The reply's text from its deltas, checked against its final event; numbers strictly
    increase."""
    sequences = [event["sequence"] for event in events]
    assert sequences == sorted(set(sequences))
    text = "".join(event["delta"] for event in events if event["__typename"] == "MessageDelta")
    assert text == events[-1]["message"]["content"]
    return text


async def test_replies_run_and_cancel_while_redis_hangs(
    start_ai_server: StartServer, redis_proxy: TcpProxy
) -> None:
    first, second = await two_workers(start_ai_server, redis_proxy)
    thread_id = await first.new_thread()
    async with first.client.subscribe(first.people.member, thread_id, after_sequence=None) as sub:
        # One exchange while Redis answers: the subscription is live.
        assert "errors" not in await first.send(thread_id, "warm up")
        await sub.until_final()

        redis_proxy.black_hole("stall")
        deltas = tuple(f"d{index} " for index in range(60))
        first.fake.then(Behaviour(deltas=deltas))
        body = await first.send(thread_id, "while Redis hangs")
        assert "errors" not in body, body
        events = await sub.until_final()
        assert events[-1]["__typename"] == "MessageCompleted"
        assert check_stream(events) == "".join(deltas)
        # The reply never waited on Redis; its queue for Redis cost one timeout (one trip of
        # the circuit), and every later event skipped it instead of waiting on it.
        await broker_of(first).flush()
        breaker = broker_of(first).breaker
        assert breaker.trips == 1
        assert breaker.skipped >= len(deltas)
        assert breaker.is_open

        # A cancel on the worker running the reply: local, no Redis needed.
        # One delta, then the upstream holds (`delta_permits`) until the cancel: the reply is
        # still running when the test cancels it, however slow the machine.
        first.fake.delta_permits = asyncio.Semaphore(1)
        first.fake.then(Behaviour(deltas=tuple(f"c{i} " for i in range(200))))
        reply_id = (await first.send(thread_id, "stop me"))["data"]["sendMessage"][
            "assistantMessage"
        ]["id"]
        while (await sub.event())["__typename"] != "MessageDelta":
            pass
        cancelled = await first.client.data(CANCEL, {"id": reply_id}, token=first.people.member)
        assert cancelled["cancelMessage"]["status"] == "CANCELLED"
        events = await sub.until_final()
        assert events[-1]["message"]["status"] == "CANCELLED"

        # A cancel on another worker: it cannot reach the worker running the reply through
        # Redis, so it finishes the message in the database; the running worker stops.
        first.fake.delta_permits = asyncio.Semaphore(1)
        first.fake.then(Behaviour(deltas=tuple(f"e{i} " for i in range(200))))
        reply_id = (await first.send(thread_id, "stop me too"))["data"]["sendMessage"][
            "assistantMessage"
        ]["id"]
        while (await sub.event())["__typename"] != "MessageDelta":
            pass
        cancelled = await second.client.data(CANCEL, {"id": reply_id}, token=second.people.manager)
        assert cancelled["cancelMessage"]["status"] == "CANCELLED"
        await wait_until(lambda: not replies_of(first))
    assert broker_of(second).breaker.trips == 1  # its control message timed out once
    # Both background responses were cancelled upstream too.
    cancels = [call for call in first.fake.requests if call.path.endswith("/cancel")]
    assert len(cancels) == 2


async def test_subscribing_while_redis_hangs_is_broker_unavailable(
    start_ai_server: StartServer, redis_proxy: TcpProxy
) -> None:
    # Every SUBSCRIBE here meets the black hole: what its confirmation timeout costs is all
    # this test waits for (twice), so it is short (the other tests subscribe while Redis
    # answers, and keep the long one).
    first, second = await two_workers(
        start_ai_server, redis_proxy, atlas_redis_subscribe_timeout=1.0
    )
    thread_id = await first.new_thread()
    redis_proxy.black_hole("stall")
    for worker in (first, second, first):  # the SUBSCRIBE times out, then Redis is skipped
        async with worker.client.subscribe(
            worker.people.member, thread_id, in_place=False
        ) as subscription:
            message = await subscription.message()
        assert message["type"] == "next", message
        [error] = message["payload"]["errors"]
        assert error["extensions"]["code"] == "BROKER_UNAVAILABLE"
        assert "database" not in error["message"].lower()
    assert broker_of(first).breaker.skipped >= 1


async def test_redis_is_used_again_once_it_answers(
    start_ai_server: StartServer, redis_proxy: TcpProxy
) -> None:
    first, second = await two_workers(start_ai_server, redis_proxy)
    thread_id = await first.new_thread()
    redis_proxy.black_hole("drop")
    # A reply while Redis drops everything: it completes (nobody else hears it live).
    body = await first.send(thread_id, "into the void")
    reply_id = body["data"]["sendMessage"]["assistantMessage"]["id"]
    breaker = broker_of(first).breaker
    await wait_until(lambda: breaker.is_open and not replies_of(first))
    state = await first.client.data(
        "query($id: ID!) { node(id: $id) { ... on Message { status } } }",
        {"id": reply_id},
        token=first.people.member,
    )
    assert state["node"]["status"] == "COMPLETED"

    redis_proxy.heal()
    # Both workers' probes find Redis again (the second's breaker may have opened too: its
    # pub/sub connection met the outage).
    others = broker_of(second).breaker
    await wait_until(lambda: not breaker.is_open and not others.is_open)
    # Events of a reply on the first worker reach a subscriber on the second through Redis.
    # Live events only (the subscription is in place before the send): no history read, a
    # command that the short timeout here could see stall on a loaded machine.
    thread_id = await first.new_thread()
    async with second.client.subscribe(
        second.people.manager, thread_id, after_sequence=None
    ) as remote:
        assert "errors" not in await first.send(thread_id, "back again")
        events = await remote.until_final()
    assert events[-1]["__typename"] == "MessageCompleted"
    assert check_stream(events) == "Hello, this is ATLAS."
    assert breaker.trips == 1
