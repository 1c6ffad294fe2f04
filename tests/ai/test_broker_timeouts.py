"""A Redis that accepts connections and never answers cannot block a publish for ever."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.exceptions import RedisError

from atlas_gql.ai.broker import RedisBroker
from atlas_gql.ai.events import MessageDelta


def _delta() -> MessageDelta:
    thread = uuid.uuid4()
    return MessageDelta(sequence=1, thread_id=thread, message_id=uuid.uuid4(), delta="x")


@pytest.fixture
async def silent_redis() -> AsyncIterator[str]:
    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(60)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"redis://127.0.0.1:{port}/0"
    server.close()


async def test_publish_to_a_hung_redis_fails_within_the_socket_timeout(silent_redis: str) -> None:
    broker = RedisBroker(silent_redis)
    started = time.monotonic()
    with pytest.raises((RedisError, TimeoutError, OSError)):
        await asyncio.wait_for(broker.publish(uuid.uuid4(), _delta()), 30)
    assert time.monotonic() - started < 15
