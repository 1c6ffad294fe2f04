"""More concurrent replies than pooled database connections all complete: a reply holds a
connection only for each short write (its checkpoints, heartbeats and end), never while it
waits on the upstream, and a write or a request that finds every connection busy waits for
one (ATLAS_DB_POOL_TIMEOUT) instead of failing. One that cannot get one in that time fails
with DB_UNAVAILABLE."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col

from atlas_gql.ai.models import Message, MessageRole, MessageStatus
from atlas_gql.ids import decode_id_of
from tests.ai.conftest import AIServer, StartServer
from tests.ai.fake_openai import Behaviour
from tests.conftest import error_codes
from tests.live import wait_until

REPLIES = 12
DELTAS = tuple(f"w{i} " for i in range(8))


def _pool(ai: AIServer) -> Any:
    """The worker's connection pool (a QueuePool: `size()`, `checkedout()`)."""
    return _engine(ai).pool


def _engine(ai: AIServer) -> AsyncEngine:
    engine: AsyncEngine = ai.server.app.state.atlas["runtime"].engine
    return engine


async def _small_pool(start_ai_server: StartServer, *, timeout: float) -> AIServer:
    ai = await start_ai_server(
        atlas_db_pool_size=2, atlas_db_max_overflow=0, atlas_db_pool_timeout=timeout
    )
    runtime = ai.server.services.ai
    # Every reply writes all the time: a checkpoint at each delta, heartbeats in between.
    runtime.checkpoint_interval = 0.0
    runtime.heartbeat_interval = 0.05
    return ai


async def test_many_concurrent_replies_on_a_pool_of_two_all_complete(
    start_ai_server: StartServer,
) -> None:
    ai = await _small_pool(start_ai_server, timeout=60)
    assert _pool(ai).size() == 2
    threads = [await ai.new_thread() for _ in range(REPLIES)]
    ai.fake.then(*[Behaviour(deltas=DELTAS, delay=0.01)] * REPLIES)
    async with contextlib.AsyncExitStack() as stack:
        subscriptions = [
            await stack.enter_async_context(ai.client.subscribe(ai.people.member, thread_id))
            for thread_id in threads
        ]
        sent = await asyncio.gather(*(ai.send(thread_id) for thread_id in threads))
        assert [error_codes(body) for body in sent] == [[]] * REPLIES
        finals = await asyncio.gather(*(s.until_final(timeout=60) for s in subscriptions))
    assert [events[-1]["__typename"] for events in finals] == ["MessageCompleted"] * REPLIES
    texts = [
        "".join(event["delta"] for event in events if event["__typename"] == "MessageDelta")
        for events in finals
    ]
    assert texts == ["".join(DELTAS)] * REPLIES
    runtime = ai.server.app.state.atlas["runtime"]
    async with runtime.sessionmaker() as db:
        statuses = (
            await db.scalars(
                sa.select(col(Message.status)).where(
                    col(Message.thread_id).in_([decode_id_of(t, "Thread") for t in threads]),
                    col(Message.role) == MessageRole.ASSISTANT,
                )
            )
        ).all()
    assert statuses == [MessageStatus.COMPLETED] * REPLIES
    # Every connection is given back (the reply's last write closes just after its event).
    await wait_until(lambda: _pool(ai).checkedout() == 0)


async def test_a_send_that_gets_no_connection_in_time_is_db_unavailable(
    start_ai_server: StartServer,
) -> None:
    ai = await _small_pool(start_ai_server, timeout=0.5)
    thread_id = await ai.new_thread()
    engine = _engine(ai)
    # Every connection of the pool busy for longer than ATLAS_DB_POOL_TIMEOUT.
    async with engine.connect() as first, engine.connect() as second:
        await first.execute(sa.text("SELECT 1"))
        await second.execute(sa.text("SELECT 1"))
        refused = await ai.send(thread_id)
    assert error_codes(refused) == ["DB_UNAVAILABLE"]
    assert refused["data"] is None or refused["data"]["sendMessage"] is None
    # Connections free again: the same send goes through and its reply completes.
    async with ai.client.subscribe(ai.people.member, thread_id) as subscription:
        sent = await ai.send(thread_id)
        assert error_codes(sent) == []
        events = await subscription.until_final()
    assert events[-1]["__typename"] == "MessageCompleted"
    # Every connection is given back (the reply's last write closes just after its event).
    await wait_until(lambda: _pool(ai).checkedout() == 0)


async def test_concurrent_sends_of_a_sender_with_a_budget_all_go_through(
    start_ai_server: StartServer,
) -> None:
    # The sender's budget serialises their sends (an advisory lock held to the commit): they
    # wait at the worker's gate, not each holding one of the two connections.
    ai = await start_ai_server(
        atlas_db_pool_size=2,
        atlas_db_max_overflow=0,
        atlas_db_pool_timeout=60,
        atlas_user_monthly_tokens=10**12,
    )
    threads = [await ai.new_thread() for _ in range(8)]
    ai.fake.then(*[Behaviour(deltas=DELTAS, delay=0.01)] * len(threads))
    async with contextlib.AsyncExitStack() as stack:
        subscriptions = [
            await stack.enter_async_context(ai.client.subscribe(ai.people.member, thread_id))
            for thread_id in threads
        ]
        sent = await asyncio.gather(*(ai.send(thread_id) for thread_id in threads))
        assert [error_codes(body) for body in sent] == [[]] * len(threads)
        finals = await asyncio.gather(*(s.until_final(timeout=60) for s in subscriptions))
        # The gate is free again: one more send of theirs goes through at once.
        assert error_codes(await ai.send(threads[0])) == []
    assert {events[-1]["__typename"] for events in finals} == {"MessageCompleted"}
