"""sendMessage → streamed reply on threadEvents → COMPLETED with usage; failures; cancel."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlmodel import col

from atlas_gql.ai.models import Message, MessageStatus, Thread
from atlas_gql.ids import decode_global_id
from atlas_gql.logs.models import ActivityLog, ApiUsageLog, ErrorLog, ErrorSource
from tests.ai.conftest import UPSTREAM_KEY, AIServer
from tests.ai.fake_openai import DEFAULT_DELTAS, Behaviour
from tests.conftest import error_codes
from tests.live import Subscription, wait_until

THREAD_DETAIL = """
query($id: ID!) {
  thread(id: $id) {
    id openaiThreadId
    messages(first: 20) { totalCount edges { node { id role status content error } } }
  }
}
"""


def uuid_of(global_id: str) -> uuid.UUID:
    return decode_global_id(global_id)[1]


async def rows(ai: AIServer, statement: sa.Select) -> list:  # type: ignore[type-arg]
    runtime = ai.server.app.state.atlas["runtime"]
    async with runtime.sessionmaker() as db:
        return list((await db.execute(statement)).scalars())


async def test_member_streams_a_reply_to_a_subscriber(ai: AIServer) -> None:
    thread_id = await ai.new_thread()
    async with ai.client.subscribe(ai.people.member, thread_id) as subscription:
        body = await ai.send(thread_id, "Tell me about ATLAS")
        assert "errors" not in body, body
        payload = body["data"]["sendMessage"]
        assert payload["userMessage"]["status"] == "COMPLETED"
        assert payload["userMessage"]["content"] == "Tell me about ATLAS"
        assert payload["assistantMessage"]["status"] == "IN_PROGRESS"
        assert payload["assistantMessage"]["role"] == "ASSISTANT"
        events = await subscription.until_final()

    kinds = [event["__typename"] for event in events]
    assert kinds[:2] == ["MessageCreated", "MessageCreated"]
    assert kinds[-1] == "MessageCompleted"
    deltas = [event for event in events if event["__typename"] == "MessageDelta"]
    assert len(deltas) >= 3
    sequences = [event["sequence"] for event in events]
    assert sequences == sorted(sequences)
    assert len(set(sequences)) == len(sequences)
    final = events[-1]["message"]
    assert (
        "".join(delta["delta"] for delta in deltas) == final["content"] == "Hello, this is ATLAS."
    )
    assert final["id"] == payload["assistantMessage"]["id"]
    assert final["status"] == "COMPLETED"
    assert final["openaiMessageId"].startswith("msg_")
    assert final["inputTokens"] == 21
    assert final["outputTokens"] == 9

    thread = (await ai.client.data(THREAD_DETAIL, {"id": thread_id}, token=ai.people.member))[
        "thread"
    ]
    assert thread["openaiThreadId"].startswith("conv_")
    contents = [edge["node"]["content"] for edge in thread["messages"]["edges"]]
    assert contents == ["Tell me about ATLAS", "Hello, this is ATLAS."]

    # The upstream call: streamed, with the assistant's model and instructions, in the
    # thread's conversation, with the configured key.
    [call] = ai.fake.calls("/v1/responses")
    assert call.body["stream"] is True
    assert call.body["model"] == "gpt-4o-mini"
    assert call.body["instructions"].startswith("You are a concise, friendly assistant")
    assert call.body["conversation"] == thread["openaiThreadId"]
    assert call.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert call.body["input"][0]["content"][0] == {
        "type": "input_text",
        "text": "Tell me about ATLAS",
    }

    [usage] = await rows(
        ai,
        sa.select(ApiUsageLog).where(
            col(ApiUsageLog.message_id) == uuid_of(payload["assistantMessage"]["id"])
        ),
    )
    assert usage.model == "gpt-4o-mini"
    assert (usage.input_tokens, usage.output_tokens) == (21, 9)
    assert usage.cost_usd > Decimal(0)
    assert usage.thread_id == uuid_of(thread_id)
    assert usage.project_id == ai.people.project_uuid
    assert usage.latency_ms is not None
    actions = await rows(
        ai,
        sa.select(col(ActivityLog.action)).where(
            col(ActivityLog.entity_id).in_(
                [str(uuid_of(thread_id)), str(uuid_of(payload["userMessage"]["id"]))]
            )
        ),
    )
    assert sorted(actions) == ["message.send", "thread.create"]


async def test_every_subscriber_sees_the_same_events(ai: AIServer) -> None:
    thread_id = await ai.new_thread()
    async with (
        ai.client.subscribe(ai.people.member, thread_id) as first,
        ai.client.subscribe(ai.people.manager, thread_id) as second,
    ):
        assert "errors" not in await ai.send(thread_id)
        first_events = await first.until_final()
        second_events = await second.until_final()
    assert first_events == second_events


async def test_usage_shows_in_api_usage_by_model(ai: AIServer) -> None:
    thread_id = await ai.new_thread()
    async with ai.client.subscribe(ai.people.member, thread_id) as subscription:
        await ai.send(thread_id)
        await subscription.until_final()
    body = await ai.client.gql(
        "{ apiUsage(groupBy: MODEL) { key requests inputTokens outputTokens costUsd } }",
        token=ai.people.admin,
    )
    assert "errors" not in body, body
    bucket = next(b for b in body["data"]["apiUsage"] if b["key"] == "gpt-4o-mini")
    assert bucket["requests"] >= 1
    assert bucket["costUsd"] > 0


async def test_second_send_while_a_reply_runs_is_a_conflict(ai: AIServer) -> None:
    # The upstream holds the reply's deltas (`delta_permits`) until both sends are answered:
    # the first reply is running when the second send arrives, however slow the machine.
    ai.fake.delta_permits = asyncio.Semaphore(0)
    thread_id = await ai.new_thread()
    async with ai.client.subscribe(ai.people.member, thread_id) as subscription:
        first, second = await asyncio.gather(ai.send(thread_id, "one"), ai.send(thread_id, "two"))
        outcomes = sorted([error_codes(first), error_codes(second)])
        assert outcomes == [[], ["CONFLICT"]]
        for _ in DEFAULT_DELTAS:
            ai.fake.delta_permits.release()
        await subscription.until_final()
    ai.fake.delta_permits = None
    # Once the reply is over, the thread takes a new message.
    assert "errors" not in await ai.send(thread_id, "three")


async def test_upstream_500_ends_failed_and_is_logged(ai: AIServer) -> None:
    # Three attempts (retries before the first delta), all answered 500.
    ai.fake.then(*[Behaviour(kind="http_error", status=500, request_id="req_fake500")] * 3)
    thread_id = await ai.new_thread()
    async with ai.client.subscribe(ai.people.member, thread_id) as subscription:
        payload = (await ai.send(thread_id, "Will this fail?"))["data"]["sendMessage"]
        events = await subscription.until_final()
    failed = events[-1]
    assert failed["__typename"] == "MessageFailed"
    assert failed["message"]["status"] == "FAILED"
    assert failed["error"] == "The AI provider returned an error (HTTP 500)."
    assert len(ai.fake.calls("/v1/responses")) == 3
    [error] = await rows(
        ai,
        sa.select(ErrorLog).where(col(ErrorLog.path).contains(payload["assistantMessage"]["id"])),
    )
    assert error.source is ErrorSource.UPSTREAM
    assert (error.upstream_status, error.upstream_request_id) == (500, "req_fake500")
    # The user's message is still in the thread.
    thread = (await ai.client.data(THREAD_DETAIL, {"id": thread_id}, token=ai.people.member))[
        "thread"
    ]
    nodes = [edge["node"] for edge in thread["messages"]["edges"]]
    assert [(n["role"], n["status"]) for n in nodes] == [
        ("USER", "COMPLETED"),
        ("ASSISTANT", "FAILED"),
    ]
    assert nodes[0]["content"] == "Will this fail?"


async def test_retry_before_the_first_delta_recovers(ai: AIServer) -> None:
    ai.fake.then(Behaviour(kind="http_error", status=503), Behaviour())
    thread_id = await ai.new_thread()
    async with ai.client.subscribe(ai.people.member, thread_id) as subscription:
        await ai.send(thread_id)
        events = await subscription.until_final()
    assert events[-1]["__typename"] == "MessageCompleted"
    assert events[-1]["message"]["content"] == "Hello, this is ATLAS."
    assert len(ai.fake.calls("/v1/responses")) == 2


async def test_cut_stream_keeps_partial_text(ai: AIServer) -> None:
    ai.fake.then(Behaviour(kind="cut", deltas_before_failure=3))
    thread_id = await ai.new_thread()
    async with ai.client.subscribe(ai.people.member, thread_id) as subscription:
        payload = (await ai.send(thread_id))["data"]["sendMessage"]
        events = await subscription.until_final()
    failed = events[-1]
    assert failed["__typename"] == "MessageFailed"
    # docs/ai.md: a stream that ends without `response.completed` is INCOMPLETE.
    assert failed["message"]["status"] == "INCOMPLETE"
    assert failed["message"]["content"] == "Hello, this "
    assert failed["error"] == "The reply stream ended before the response was complete."
    [stored] = await rows(
        ai,
        sa.select(Message).where(col(Message.id) == uuid_of(payload["assistantMessage"]["id"])),
    )
    assert stored.content == "Hello, this "
    assert stored.status is MessageStatus.INCOMPLETE
    errors = await rows(
        ai,
        sa.select(ErrorLog).where(col(ErrorLog.path).contains(payload["assistantMessage"]["id"])),
    )
    assert len(errors) == 1
    assert errors[0].upstream_request_id


async def test_dropped_connection_keeps_partial_text(ai: AIServer) -> None:
    ai.fake.then(Behaviour(kind="abort", deltas_before_failure=2))
    thread_id = await ai.new_thread()
    async with ai.client.subscribe(ai.people.member, thread_id) as subscription:
        await ai.send(thread_id)
        events = await subscription.until_final()
    assert events[-1]["__typename"] == "MessageFailed"
    assert events[-1]["message"]["content"] == "Hello, "
    # docs/ai.md: the connection dropping mid-stream is INCOMPLETE.
    assert events[-1]["message"]["status"] == "INCOMPLETE"
    assert events[-1]["error"] == "The connection to the AI provider was cut."


async def test_response_failed_and_incomplete_events(ai: AIServer) -> None:
    ai.fake.then(Behaviour(kind="failed", deltas_before_failure=2))
    thread_id = await ai.new_thread()
    async with ai.client.subscribe(ai.people.member, thread_id) as subscription:
        await ai.send(thread_id)
        failed = (await subscription.until_final())[-1]
    assert failed["message"]["status"] == "FAILED"
    assert failed["message"]["content"] == "Hello, "
    # Users read a fixed text; the provider's own words are in the ErrorLog row.
    assert failed["error"] == "The AI provider could not complete the reply."
    [logged] = await rows(
        ai, sa.select(ErrorLog).where(col(ErrorLog.path).contains(failed["messageId"]))
    )
    assert "crashed" in logged.message

    ai.fake.then(Behaviour(kind="incomplete", deltas_before_failure=4))
    async with ai.client.subscribe(
        ai.people.member, thread_id, after_sequence=None
    ) as subscription:
        await ai.send(thread_id)
        incomplete = (await subscription.until_final())[-1]
    assert incomplete["message"]["status"] == "INCOMPLETE"
    assert incomplete["message"]["content"] == "Hello, this is "
    assert "max_output_tokens" in incomplete["error"]

    ai.fake.then(Behaviour(kind="error_event", deltas_before_failure=1))
    async with ai.client.subscribe(
        ai.people.member, thread_id, after_sequence=None
    ) as subscription:
        await ai.send(thread_id)
        errored = (await subscription.until_final())[-1]
    assert errored["message"]["status"] == "FAILED"
    assert errored["error"] == "The AI provider reported an error."
    [logged] = await rows(
        ai, sa.select(ErrorLog).where(col(ErrorLog.path).contains(errored["messageId"]))
    )
    assert "overloaded" in logged.message


async def test_cancel_stops_a_long_reply_while_upstream_is_still_streaming(ai: AIServer) -> None:
    # The upstream sends two deltas, then holds: the cancel must not wait for its end.
    ai.fake.delta_permits = asyncio.Semaphore(2)
    ai.fake.then(Behaviour(deltas=tuple(f"w{i} " for i in range(200))))
    thread_id = await ai.new_thread()
    async with ai.client.subscribe(ai.people.member, thread_id) as subscription:
        payload = (await ai.send(thread_id))["data"]["sendMessage"]
        reply_id = payload["assistantMessage"]["id"]
        seen: list[dict[str, Any]] = []
        while len([e for e in seen if e["__typename"] == "MessageDelta"]) < 2:
            seen.append(await subscription.event())
        body = await ai.client.gql(
            "mutation($id: ID!) { cancelMessage(id: $id) { id status content } }",
            {"id": reply_id},
            token=ai.people.member,
        )
        events = seen + await subscription.until_final()
    assert "errors" not in body, body
    cancelled = body["data"]["cancelMessage"]
    assert cancelled["status"] == "CANCELLED"
    assert cancelled["content"] == "w0 w1 "
    final = events[-1]
    assert final["__typename"] == "MessageCancelled"
    assert final["message"]["status"] == "CANCELLED"
    assert final["error"] == "The reply was stopped."
    assert final["message"]["content"] == cancelled["content"]
    deltas = "".join(e["delta"] for e in events if e["__typename"] == "MessageDelta")
    assert deltas == cancelled["content"]
    # The upstream stream is closed by ATLAS, not run to its end.
    await wait_until(lambda: ai.fake.open_streams == 0)
    assert ai.fake.closed_early == 1


async def _deltas(subscription: Subscription, count: int) -> list[dict[str, Any]]:
    """Events up to the `count`-th delta (the signal that they were published)."""
    events: list[dict[str, Any]] = []
    while sum(event["__typename"] == "MessageDelta" for event in events) < count:
        events.append(await subscription.event())
    return events


async def test_reconnect_with_after_sequence_replays_what_was_missed(ai: AIServer) -> None:
    # The upstream sends deltas on permits: 4 while connected, 10 while disconnected (seen
    # by an observer that stays), the rest after reconnecting.
    ai.fake.delta_permits = permits = asyncio.Semaphore(0)
    ai.fake.then(Behaviour(deltas=tuple(f"p{i} " for i in range(30))))
    thread_id = await ai.new_thread()
    async with ai.client.subscribe(ai.people.member, thread_id) as observer:
        async with ai.client.subscribe(ai.people.member, thread_id) as subscription:
            await ai.send(thread_id)
            for _ in range(4):
                permits.release()
            seen = await _deltas(subscription, 4)
        last_seen = seen[-1]["sequence"]
        for _ in range(10):
            permits.release()
        await _deltas(observer, 14)
        async with ai.client.subscribe(
            ai.people.member, thread_id, after_sequence=last_seen
        ) as subscription:
            missed = await _deltas(subscription, 10)
            for _ in range(16):
                permits.release()
            rest = missed + await subscription.until_final()
    assert "".join(e["delta"] for e in missed if e["__typename"] == "MessageDelta") == "".join(
        f"p{i} " for i in range(4, 14)
    )
    events = seen + rest
    sequences = [event["sequence"] for event in events]
    assert all(a < b for a, b in itertools.pairwise(sequences))
    deltas = "".join(e["delta"] for e in events if e["__typename"] == "MessageDelta")
    assert deltas == events[-1]["message"]["content"] == "".join(f"p{i} " for i in range(30))


async def test_sequences_keep_increasing_across_replies(ai: AIServer) -> None:
    thread_id = await ai.new_thread()
    sequences: list[int] = []
    for _ in range(2):
        async with ai.client.subscribe(ai.people.member, thread_id, after_sequence=None) as sub:
            await ai.send(thread_id)
            sequences += [event["sequence"] for event in await sub.until_final()]
    assert all(a < b for a, b in itertools.pairwise(sequences))
    [thread] = await rows(ai, sa.select(Thread).where(col(Thread.id) == uuid_of(thread_id)))
    assert thread.last_event_sequence == sequences[-1]
