"""The reply stream's own rules: typed events and their JSON, the heartbeat on the message
(Thread.updatedAt does not tick while a reply streams), sequence blocks, and bugs that
surface as bugs rather than as upstream faults."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import ValidationError
from sqlmodel import col

from atlas_gql.ai.events import (
    EVENT_ADAPTER,
    MessageCancelled,
    MessageCompleted,
    MessageCreated,
    MessageDelta,
    MessageFailed,
    MessagePayload,
    ThreadEvent,
    decode_event,
    encode_event,
    final_event,
)
from atlas_gql.ai.models import Message, MessageRole, MessageStatus, Thread
from atlas_gql.ai.sequences import SEQUENCE_BLOCK, SequenceBlock
from tests.ai.conftest import AIServer
from tests.ai.fake_openai import Behaviour
from tests.ai.test_replies import rows, uuid_of

THREAD_STATE = "query($id: ID!) { thread(id: $id) { updatedAt } }"


def ai_runtime(ai: AIServer) -> Any:
    return ai.server.app.state.atlas["services"].ai


def _message(status: MessageStatus, error: str | None = None) -> Message:
    return Message(
        id=uuid.uuid4(),
        thread_id=uuid.uuid4(),
        user_id=uuid.uuid4(),
        role=MessageRole.ASSISTANT,
        content="partial text",
        status=status,
        model="gpt-4o-mini",
        error=error,
        created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    )


# -- events and their JSON ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (MessageStatus.COMPLETED, MessageCompleted),
        (MessageStatus.FAILED, MessageFailed),
        (MessageStatus.INCOMPLETE, MessageFailed),
        (MessageStatus.CANCELLED, MessageCancelled),
    ],
)
def test_final_event_follows_the_status_and_survives_json(
    status: MessageStatus, kind: type
) -> None:
    message = _message(status, error=None if status is MessageStatus.COMPLETED else "Stopped.")
    event = final_event(7, message)
    assert isinstance(event, kind)
    decoded = decode_event(encode_event(event))
    assert decoded == event
    assert decoded.message.created_at == message.created_at


def test_every_event_kind_round_trips_through_the_redis_json() -> None:
    message = _message(MessageStatus.IN_PROGRESS)
    payload = MessagePayload.of(message)
    common = {"thread_id": message.thread_id, "message_id": message.id}
    events: list[ThreadEvent] = [
        MessageCreated(sequence=1, message=payload, **common),
        MessageDelta(sequence=2, delta="héllo \u2603", **common),
        MessageCompleted(sequence=3, message=payload, **common),
        MessageFailed(sequence=4, message=payload, error="x", **common),
        MessageCancelled(sequence=5, message=payload, error="y", **common),
    ]
    for event in events:
        text = encode_event(event)
        assert f'"type":"{event.type}"' in text
        assert decode_event(text) == event


def test_json_that_is_not_an_event_is_refused() -> None:
    with pytest.raises(ValidationError, match="thread_id"):
        decode_event('{"type": "MessageDelta", "sequence": 1}')
    with pytest.raises(ValidationError, match="Nonsense"):
        EVENT_ADAPTER.validate_json('{"type": "Nonsense", "sequence": 1}')


# -- sequence blocks ----------------------------------------------------------------------------


def test_a_block_hands_out_numbers_under_the_stored_mark() -> None:
    thread = Thread(title="t", created_by_id=uuid.uuid4(), last_event_sequence=10)
    (first, second), block = SequenceBlock.open(thread, taken=2)
    assert (first, second) == (11, 12)
    assert thread.last_event_sequence == 12 + SEQUENCE_BLOCK == block.reserved_until
    taken = [block.take() for _ in range(SEQUENCE_BLOCK - 1)]
    assert taken[0] == 13
    assert not block.needs_extension  # one number left, for the final event
    taken.append(block.take())
    assert block.needs_extension
    mark = block.extension()
    assert mark == taken[-1] + SEQUENCE_BLOCK
    block.extended(mark)
    assert not block.needs_extension
    assert taken == list(range(13, 13 + SEQUENCE_BLOCK))


# -- the heartbeat lives on the message ---------------------------------------------------------


async def test_thread_updated_at_stays_while_a_reply_streams(ai: AIServer) -> None:
    runtime = ai_runtime(ai)
    # Many heartbeats and checkpoints during one reply.
    runtime.heartbeat_interval = 0.05
    runtime.checkpoint_interval = 0.05
    thread_id = await ai.new_thread()
    ai.fake.then(Behaviour(deltas=tuple(f"w{i} " for i in range(30)), delay=0.03))
    async with ai.client.subscribe(ai.people.member, thread_id) as subscription:
        payload = (await ai.send(thread_id))["data"]["sendMessage"]
        before = await ai.client.data(THREAD_STATE, {"id": thread_id}, token=ai.people.member)
        reply_id = uuid_of(payload["assistantMessage"]["id"])
        [started] = await rows(ai, sa.select(Message).where(col(Message.id) == reply_id))
        events = await subscription.until_final()
    assert events[-1]["__typename"] == "MessageCompleted"
    after = await ai.client.data(THREAD_STATE, {"id": thread_id}, token=ai.people.member)
    assert after["thread"]["updatedAt"] == before["thread"]["updatedAt"]
    [finished] = await rows(ai, sa.select(Message).where(col(Message.id) == reply_id))
    assert started.heartbeat_at is not None
    assert finished.heartbeat_at > started.heartbeat_at
