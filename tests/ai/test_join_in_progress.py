"""Issue 12 parts 1-3: joining a reply in progress without a gap or a duplicate
(`Thread.lastEventSequence`, `SendMessagePayload.afterSequence`), message authors, and the
`ThreadEvent` interface (common fields without fragments, stable ids, MessageCancelled).

The fake OpenAI releases deltas one at a time on a semaphore (`delta_permits`), and the tests
wait on events they observe, never on time."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from atlas_gql.ids import decode_id_of, encode_global_id
from tests.ai.conftest import AIServer, StartServer
from tests.ai.fake_openai import Behaviour
from tests.conftest import error_codes
from tests.live import Subscription, wait_until

LOAD = """
query($id: ID!) {
  thread(id: $id) {
    lastEventSequence
    messages(last: 50) { nodes { id role status content } }
  }
}
"""

MESSAGES = """
query($id: ID!) {
  thread(id: $id) {
    messages { nodes { role author { id email } assistant { id name } } }
  }
}
"""

# Only the interface's fields: no fragment at all.
COMMON_ONLY = """
subscription($threadId: ID!, $after: Int) {
  threadEvents(threadId: $threadId, afterSequence: $after) {
    __typename id sequence messageId message { id status }
  }
}
"""

DELTAS = tuple(f"part{index} " for index in range(12))


def _ai_runtime(ai: AIServer) -> Any:
    return ai.server.app.state.atlas["services"].ai


async def _deltas_seen(subscription: Subscription, count: int) -> list[dict[str, Any]]:
    """Read events until `count` deltas arrived (the signal that they were published)."""
    events: list[dict[str, Any]] = []
    while sum(event["__typename"] == "MessageDelta" for event in events) < count:
        events.append(await subscription.event())
    return events


async def _subscribers(ai: AIServer, thread_id: str, count: int) -> None:
    """Wait until the server's broker holds `count` subscribers of the thread."""
    fanout = _ai_runtime(ai).broker._fanout
    thread_uuid = decode_id_of(thread_id, "Thread")
    await wait_until(lambda: len(fanout.subscribers.get(thread_uuid, ())) >= count)


def _release(ai: AIServer, count: int) -> None:
    assert ai.fake.delta_permits is not None
    for _ in range(count):
        ai.fake.delta_permits.release()


@pytest.mark.parametrize(
    ("background", "checkpoint_every_delta"),
    [(True, False), (False, False), (False, True)],
    ids=["background-saved-at-start", "foreground-never-saved", "foreground-saved-each-delta"],
)
async def test_load_then_subscribe_during_a_reply_gives_the_whole_text_once(
    start_ai_server: StartServer, background: bool, checkpoint_every_delta: bool
) -> None:
    ai = await start_ai_server(atlas_openai_background=background)
    # Never saved mid-reply: the loaded text lags the published deltas (the trial's gap).
    # Saved after each delta: the loaded text may already hold them (a replay would repeat).
    _ai_runtime(ai).checkpoint_interval = 0.0 if checkpoint_every_delta else 3600.0
    ai.fake.delta_permits = asyncio.Semaphore(0)
    ai.fake.then(Behaviour(deltas=DELTAS))
    thread_id = await ai.new_thread()
    async with ai.client.subscribe(ai.people.member, thread_id, after_sequence=None) as observer:
        sent = await ai.send(thread_id)
        assert "errors" not in sent, sent
        reply_id = sent["data"]["sendMessage"]["assistantMessage"]["id"]
        _release(ai, 4)
        await _deltas_seen(observer, 4)
        loaded = (await ai.client.data(LOAD, {"id": thread_id}, token=ai.people.viewer))["thread"]
        # Published after the load, before the subscription: what the trial lost.
        _release(ai, 3)
        await _deltas_seen(observer, 3)
        cursor = loaded["lastEventSequence"]
        async with ai.client.subscribe(
            ai.people.viewer, thread_id, after_sequence=cursor
        ) as joined:
            # Streaming goes on once the server holds the subscription (a subscription that
            # starts after the final event gets that event alone, with the whole message).
            await _subscribers(ai, thread_id, 2)
            _release(ai, len(DELTAS))
            events = await joined.until_final()
        await observer.until_final()

    [reply] = [message for message in loaded["messages"]["nodes"] if message["id"] == reply_id]
    assert reply["status"] == "IN_PROGRESS"
    sequences = [event["sequence"] for event in events]
    assert sequences == sorted(set(sequences)), "no number twice, in order"
    assert min(sequences) > cursor
    # The loaded messages are not announced again.
    assert [event["__typename"] for event in events if event["__typename"] != "MessageDelta"] == [
        "MessageCompleted"
    ]
    joined_text = reply["content"] + "".join(
        event["delta"] for event in events if event["__typename"] == "MessageDelta"
    )
    final = events[-1]["message"]
    assert joined_text == final["content"] == "".join(DELTAS)
    stored = (await ai.client.data(LOAD, {"id": thread_id}, token=ai.people.member))["thread"]
    assert stored["messages"]["nodes"][-1] == {
        "id": reply_id,
        "role": "ASSISTANT",
        "status": "COMPLETED",
        "content": joined_text,
    }
    # At rest, the cursor is the final event's number: nothing more to replay.
    assert stored["lastEventSequence"] == events[-1]["sequence"]


async def test_send_message_answers_where_its_events_start(ai: AIServer) -> None:
    thread_id = await ai.new_thread()
    before = (await ai.client.data(LOAD, {"id": thread_id}, token=ai.people.member))["thread"]
    assert before["lastEventSequence"] == 0
    first = await ai.send(thread_id)
    assert first["data"]["sendMessage"]["afterSequence"] == 0
    # Subscribing after the answer arrived still gets every event of the exchange.
    async with ai.client.subscribe(ai.people.member, thread_id, after_sequence=0) as subscription:
        events = await subscription.until_final()
    assert [event["__typename"] for event in events[:2]] == ["MessageCreated", "MessageCreated"]
    assert [event["sequence"] for event in events[:2]] == [1, 2]
    at_rest = (await ai.client.data(LOAD, {"id": thread_id}, token=ai.people.member))["thread"]
    assert at_rest["lastEventSequence"] == events[-1]["sequence"]

    second = await ai.send(thread_id, "Again")
    after = second["data"]["sendMessage"]["afterSequence"]
    assert after == events[-1]["sequence"]
    async with ai.client.subscribe(
        ai.people.member, thread_id, after_sequence=after
    ) as subscription:
        again = await subscription.until_final()
    assert again[0]["sequence"] == after + 1
    assert again[0]["message"]["content"] == "Again"


async def test_a_failed_send_answers_no_sequence(ai: AIServer) -> None:
    thread_id = await ai.new_thread()
    refused = await ai.send(thread_id, token=ai.people.viewer)
    assert error_codes(refused) == ["FORBIDDEN"]
    assert refused["data"] == {"sendMessage": None}
    state = (await ai.client.data(LOAD, {"id": thread_id}, token=ai.people.member))["thread"]
    assert state["lastEventSequence"] == 0


async def test_messages_name_their_author_or_assistant(ai: AIServer) -> None:
    thread_id = await ai.new_thread()
    async with ai.client.subscribe(ai.people.member, thread_id) as subscription:
        assert "errors" not in await ai.send(thread_id)
        await subscription.until_final()
    # A project VIEWER reads who wrote what, as a multi-user thread shows it.
    messages = (await ai.client.data(MESSAGES, {"id": thread_id}, token=ai.people.viewer))[
        "thread"
    ]["messages"]["nodes"]
    user_message, reply = messages
    assert user_message["role"] == "USER"
    assert user_message["author"]["email"] == "user@example.com"
    assert user_message["assistant"] is None
    assert reply["role"] == "ASSISTANT"
    assert reply["author"] is None
    assert reply["assistant"]["id"] == ai.people.assistant_id
    # Someone who may not see the thread reads nothing of it.
    hidden = await ai.client.gql(MESSAGES, {"id": thread_id}, token=ai.people.outsider)
    assert hidden == {"data": {"thread": None}}


async def test_events_share_the_interface_fields_and_stable_ids(ai: AIServer) -> None:
    thread_id = await ai.new_thread()
    async with ai.client.subscribe(ai.people.member, thread_id, query=COMMON_ONLY) as subscription:
        sent = await ai.send(thread_id)
        reply_id = sent["data"]["sendMessage"]["assistantMessage"]["id"]
        events = await subscription.until_final()
    thread_uuid = decode_id_of(thread_id, "Thread")
    for event in events:
        assert event["id"] == encode_global_id("ThreadEvent", f"{thread_uuid}:{event['sequence']}")
        if event["__typename"] == "MessageDelta":
            assert event["message"] is None
            assert event["messageId"] == reply_id
        else:
            assert event["message"]["id"] == event["messageId"]
    assert len({event["id"] for event in events}) == len(events)
    # An event replayed carries the id it had (a cache normalises it once); a replay that
    # merges deltas numbers the merged one as the last of them, so its id is one seen too.
    async with ai.client.subscribe(
        ai.people.member, thread_id, query=COMMON_ONLY, after_sequence=0
    ) as replay:
        replayed = await replay.until_final()
    assert {event["id"] for event in replayed} <= {event["id"] for event in events}
    assert [event["id"] for event in replayed[:2]] == [event["id"] for event in events[:2]]
    assert replayed[-1]["id"] == events[-1]["id"]


async def test_a_cancelled_reply_ends_with_message_cancelled(ai: AIServer) -> None:
    ai.fake.delta_permits = asyncio.Semaphore(0)
    ai.fake.then(Behaviour(deltas=DELTAS))
    thread_id = await ai.new_thread()
    async with ai.client.subscribe(ai.people.member, thread_id) as subscription:
        sent = await ai.send(thread_id)
        reply_id = sent["data"]["sendMessage"]["assistantMessage"]["id"]
        _release(ai, 2)
        await _deltas_seen(subscription, 2)
        cancelled = await ai.client.data(
            "mutation($id: ID!) { cancelMessage(id: $id) { id status } }",
            {"id": reply_id},
            token=ai.people.member,
        )
        events = await subscription.until_final()
        _release(ai, len(DELTAS))
    assert cancelled["cancelMessage"] == {"id": reply_id, "status": "CANCELLED"}
    final = events[-1]
    assert final["__typename"] == "MessageCancelled"
    assert final["messageId"] == reply_id
    assert final["message"]["status"] == "CANCELLED"
    assert final["error"] == "The reply was stopped."
    state = (await ai.client.data(LOAD, {"id": thread_id}, token=ai.people.member))["thread"]
    await wait_until(lambda: not _ai_runtime(ai).replies)
    assert state["lastEventSequence"] == final["sequence"]
