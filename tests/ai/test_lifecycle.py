"""Replies left behind by a stopped server, who may cancel, budgets, conversation seeding."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from atlas_gql.ai.models import Message, MessageRole, MessageStatus, Thread
from atlas_gql.db.engine import create_engine
from atlas_gql.db.url import DatabaseTarget
from atlas_gql.ids import decode_global_id, encode_global_id
from atlas_gql.projects.models import ProjectMember
from atlas_gql.seed import SAMPLE_THREAD_TITLE
from tests.ai.conftest import AIServer, StartServer
from tests.ai.fake_openai import Behaviour
from tests.conftest import error_codes

CANCEL = "mutation($id: ID!) { cancelMessage(id: $id) { id status } }"


async def orphan_reply(ai: AIServer, thread_id: str, *, age: timedelta) -> Message:
    """An IN_PROGRESS reply whose worker is gone, its last heartbeat `age` ago."""
    runtime = ai.server.app.state.atlas["runtime"]
    thread_uuid = decode_global_id(thread_id)[1]
    async with runtime.sessionmaker() as db:
        reply = Message(
            thread_id=thread_uuid,
            role=MessageRole.ASSISTANT,
            content="half an ans",
            status=MessageStatus.IN_PROGRESS,
            heartbeat_at=datetime.now(UTC) - age,
        )
        db.add(reply)
        await db.commit()
    return reply


async def _status(ai: AIServer, message: Message) -> tuple[MessageStatus, str]:
    runtime = ai.server.app.state.atlas["runtime"]
    async with runtime.sessionmaker() as db:
        row = await db.get(Message, message.id)
        assert row is not None
        return row.status, row.content


async def test_start_marks_stale_replies_incomplete(
    ai: AIServer, start_ai_server: StartServer
) -> None:
    thread_id = await ai.new_thread()
    stale = await orphan_reply(ai, thread_id, age=timedelta(hours=2))
    assert (await _status(ai, stale))[0] is MessageStatus.IN_PROGRESS
    await start_ai_server()  # a restarted server
    status, content = await _status(ai, stale)
    assert status is MessageStatus.INCOMPLETE
    assert content == "half an ans"


async def test_a_fresh_reply_of_another_worker_is_left_alone(
    ai: AIServer, start_ai_server: StartServer
) -> None:
    thread_id = await ai.new_thread()
    running = await orphan_reply(ai, thread_id, age=timedelta(seconds=0))
    await start_ai_server()
    assert (await _status(ai, running))[0] is MessageStatus.IN_PROGRESS
    # Sending meanwhile: that reply looks alive, so CONFLICT.
    assert error_codes(await ai.send(thread_id)) == ["CONFLICT"]
    # A manager stops it: nobody runs it, so it is finished right here.
    body = await ai.client.data(
        CANCEL, {"id": encode_global_id("Message", running.id)}, token=ai.people.manager
    )
    assert body["cancelMessage"]["status"] == "CANCELLED"


async def test_send_finishes_a_stale_reply_first(ai: AIServer) -> None:
    thread_id = await ai.new_thread()
    stale = await orphan_reply(ai, thread_id, age=timedelta(hours=2))
    async with ai.client.subscribe(ai.people.member, thread_id, after_sequence=None) as sub:
        body = await ai.send(thread_id)
        assert "errors" not in body, body
        orphan_events = await sub.until_final()
        events = await sub.until_final()
    assert (await _status(ai, stale))[0] is MessageStatus.INCOMPLETE
    [orphan_final] = orphan_events
    assert orphan_final["__typename"] == "MessageFailed"
    assert orphan_final["message"]["status"] == "INCOMPLETE"
    assert events[-1]["__typename"] == "MessageCompleted"
    assert orphan_final["sequence"] < events[0]["sequence"]


async def test_who_may_cancel(ai: AIServer) -> None:
    # One delta, then the upstream holds: the reply is still running at every cancel below.
    ai.fake.delta_permits = asyncio.Semaphore(1)
    ai.fake.then(Behaviour(deltas=tuple(f"c{i} " for i in range(100))))
    thread_id = await ai.new_thread()
    async with ai.client.subscribe(ai.people.member, thread_id) as subscription:
        reply_id = (await ai.send(thread_id))["data"]["sendMessage"]["assistantMessage"]["id"]
        await subscription.event()
        assert error_codes(
            await ai.client.gql(CANCEL, {"id": reply_id}, token=ai.people.viewer)
        ) == ["FORBIDDEN"]
        assert error_codes(
            await ai.client.gql(CANCEL, {"id": reply_id}, token=ai.people.outsider)
        ) == ["NOT_FOUND"]
        done = await ai.client.data(CANCEL, {"id": reply_id}, token=ai.people.member)
        assert done["cancelMessage"]["status"] == "CANCELLED"
        await subscription.until_final()
    # Cancelling again answers the cancelled message; a completed one is a CONFLICT.
    again = await ai.client.data(CANCEL, {"id": reply_id}, token=ai.people.member)
    assert again["cancelMessage"]["status"] == "CANCELLED"
    ai.fake.delta_permits = None
    async with ai.client.subscribe(ai.people.member, thread_id, after_sequence=None) as sub:
        completed_id = (await ai.send(thread_id))["data"]["sendMessage"]["assistantMessage"]["id"]
        await sub.until_final()
    assert error_codes(
        await ai.client.gql(CANCEL, {"id": completed_id}, token=ai.people.member)
    ) == ["CONFLICT"]


async def test_project_budget_stops_sending(ai: AIServer) -> None:
    pm = await ai.server.sign_in("pm@example.com")
    project = await ai.client.data(
        'mutation { createProject(input: {name: "Budgeted"}) { id } }', token=pm
    )
    project_id = project["createProject"]["id"]
    await ai.client.data(
        'mutation($p: ID!) { setProjectSetting(projectId: $p, key: "monthlyTokenBudget", '
        "value: 25) { key } }",
        {"p": project_id},
        token=pm,
    )
    assistant = await ai.client.data(
        'mutation($p: ID!) { createAssistant(input: {name: "B", projectId: $p}) { id } }',
        {"p": project_id},
        token=pm,
    )
    thread = await ai.client.data(
        "mutation($i: CreateThreadInput!) { createThread(input: $i) { id } }",
        {"i": {"projectId": project_id, "assistantId": assistant["createAssistant"]["id"]}},
        token=pm,
    )
    thread_id = thread["createThread"]["id"]
    async with ai.client.subscribe(pm, thread_id) as subscription:
        assert "errors" not in await ai.send(thread_id, token=pm)
        await subscription.until_final()  # 30 tokens used, budget 25
    assert error_codes(await ai.send(thread_id, token=pm)) == ["QUOTA_EXCEEDED"]
    assert len(ai.fake.calls("/v1/responses")) == 1


async def test_first_reply_seeds_the_conversation_with_earlier_messages(ai: AIServer) -> None:
    runtime = ai.server.app.state.atlas["runtime"]
    async with runtime.sessionmaker() as db:
        seeded = (
            await db.execute(sa.select(Thread).where(col(Thread.title) == SAMPLE_THREAD_TITLE))
        ).scalar_one()
        # A copy of the seeded thread (so other tests see the seed unchanged).
        copy = Thread(
            title="Copy", project_id=seeded.project_id, assistant_id=seeded.assistant_id,
            created_by_id=seeded.created_by_id,
        )  # fmt: skip
        db.add(copy)
        await db.flush()
        originals = (
            await db.execute(
                sa.select(Message)
                .where(col(Message.thread_id) == seeded.id)
                .order_by(col(Message.created_at))
            )
        ).scalars()
        # A chain, as every thread is (issue 15: the new message follows the active leaf).
        parent_id = None
        for message in list(originals):
            added = Message(
                thread_id=copy.id, parent_id=parent_id, role=message.role,
                content=message.content, status=message.status, created_at=message.created_at,
            )  # fmt: skip
            db.add(added)
            parent_id = added.id
        copy.active_leaf_id = parent_id
        await db.commit()
    thread_id = encode_global_id("Thread", copy.id)
    async with ai.client.subscribe(ai.people.member, thread_id) as subscription:
        await ai.send(thread_id, "And now?")
        await subscription.until_final()
    [conversation] = ai.fake.calls("/v1/conversations")
    items = conversation.body["items"]
    assert [item["role"] for item in items] == ["user", "assistant", "user"]
    assert items[0]["content"] == "Hello! What can this workspace do?"


@pytest.mark.parametrize(
    "settings",
    [{"atlas_openai_api": "chat"}, {"atlas_openai_background": False}],
    ids=["chat-completions", "foreground-responses"],
)
async def test_stopping_the_server_leaves_running_replies_incomplete(
    start_ai_server: StartServer, live_database: DatabaseTarget, settings: dict[str, Any]
) -> None:
    # Without background responses nothing goes on generating once the worker stops (a
    # background reply is released for the next worker: tests/ai/test_background.py).
    ai = await start_ai_server(**settings)
    # One delta, then the upstream holds (`delta_permits`): the reply is still running when
    # the server stops, however slow the machine.
    ai.fake.delta_permits = asyncio.Semaphore(1)
    ai.fake.then(Behaviour(deltas=("s ",) * 200))
    thread_id = await ai.new_thread()
    async with ai.client.subscribe(ai.people.member, thread_id) as subscription:
        payload = (await ai.send(thread_id))["data"]["sendMessage"]
        while (await subscription.event())["__typename"] != "MessageDelta":
            pass
        await ai.server.stop()
    engine = create_engine(live_database, pool_size=1)
    try:
        async with AsyncSession(engine) as db:
            reply = await db.get(Message, decode_global_id(payload["assistantMessage"]["id"])[1])
    finally:
        await engine.dispose()
    assert reply is not None
    assert reply.status is MessageStatus.INCOMPLETE
    assert reply.content.startswith("s ")
    assert reply.error == "The server stopped while the reply was running."
    assert reply.upstream_sequence is None
    # Nothing was asked in background mode, so nothing is resumed or cancelled upstream.
    model_calls = ai.fake.calls("/v1/responses") + ai.fake.calls("/v1/chat/completions")
    assert model_calls
    assert all("background" not in call.body for call in model_calls)
    assert not ai.fake.responses


async def test_removed_member_stops_receiving_events(ai: AIServer) -> None:
    runtime = ai.server.app.state.atlas["runtime"]
    thread_id = await ai.new_thread()
    async with ai.client.subscribe(ai.people.manager, thread_id, after_sequence=None) as sub:
        async with runtime.sessionmaker() as db:
            manager = await ai.client.data("{ me { id } }", token=ai.people.manager)
            await db.execute(
                sa.delete(ProjectMember).where(
                    col(ProjectMember.user_id) == decode_global_id(manager["me"]["id"])[1],
                    col(ProjectMember.project_id) == ai.people.project_uuid,
                )
            )
            await db.commit()
        assert "errors" not in await ai.send(thread_id)
        message = await sub.message()
    assert message["type"] == "next"
    assert message["payload"]["errors"][0]["extensions"]["code"] == "NOT_FOUND"
