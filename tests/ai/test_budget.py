"""The monthly token budget holds under concurrency, and replies that end without the
provider's usage (cancelled, cut) still count: an estimated ApiUsageLog row."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import col

from atlas_gql.ai.models import Message, MessageRole, MessageStatus
from atlas_gql.ids import decode_global_id, encode_global_id
from atlas_gql.logs.models import ApiUsageLog
from atlas_gql.logs.usage import estimate_tokens
from tests.ai.conftest import AIServer
from tests.ai.fake_openai import Behaviour
from tests.conftest import error_codes

CANCEL = "mutation($id: ID!) { cancelMessage(id: $id) { id status content } }"
SET_BUDGET = (
    "mutation($p: ID!, $v: JSON!) { setProjectSetting(projectId: $p, "
    'key: "monthlyTokenBudget", value: $v) { key } }'
)
USAGE = """
query($p: ID!) {
  apiUsage(filter: {projectId: $p}, groupBy: PROJECT) {
    key requests inputTokens outputTokens costUsd
  }
  project(id: $p) { usageThisMonth { totalTokens requests } }
}
"""
INSTRUCTIONS = "Answer briefly."


async def _project(ai: AIServer, pm: str, threads: int) -> tuple[str, list[str]]:
    """A new project of pm with an assistant and `threads` threads."""
    name = f"Budget {uuid.uuid4().hex[:8]}"
    project_id = (
        await ai.client.data(
            "mutation($n: String!) { createProject(input: {name: $n}) { id } }",
            {"n": name},
            token=pm,
        )
    )["createProject"]["id"]
    assistant_id = (
        await ai.client.data(
            "mutation($p: ID!, $i: String!) { createAssistant(input: "
            '{name: "B", projectId: $p, instructions: $i}) { id } }',
            {"p": project_id, "i": INSTRUCTIONS},
            token=pm,
        )
    )["createAssistant"]["id"]
    thread_ids = []
    for _ in range(threads):
        thread = await ai.client.data(
            "mutation($i: CreateThreadInput!) { createThread(input: $i) { id } }",
            {"i": {"projectId": project_id, "assistantId": assistant_id}},
            token=pm,
        )
        thread_ids.append(thread["createThread"]["id"])
    return project_id, thread_ids


async def _usage_rows(ai: AIServer, message_id: str) -> list[ApiUsageLog]:
    runtime = ai.server.app.state.atlas["runtime"]
    async with runtime.sessionmaker() as db:
        result = await db.execute(
            sa.select(ApiUsageLog).where(
                col(ApiUsageLog.message_id) == decode_global_id(message_id)[1]
            )
        )
        return list(result.scalars())


async def test_concurrent_sends_in_many_threads_cannot_pass_the_budget_together(
    ai: AIServer,
) -> None:
    pm = await ai.server.sign_in("pm@example.com")
    project_id, threads = await _project(ai, pm, threads=6)
    first, others = threads[0], threads[1:]
    # One completed reply: 21 + 9 = 30 tokens; the budget leaves one token.
    async with ai.client.subscribe(pm, first) as subscription:
        assert "errors" not in await ai.send(first, token=pm)
        await subscription.until_final()
    await ai.client.data(SET_BUDGET, {"p": project_id, "v": 31}, token=pm)

    # Held replies (`delta_permits`: one delta each, then the upstream waits), so every
    # accepted one is still running while the others ask, however slow the machine.
    ai.fake.delta_permits = asyncio.Semaphore(len(others))
    ai.fake.then(*(Behaviour(deltas=("x ",) * 100) for _ in others))
    bodies = await asyncio.gather(*(ai.send(thread, token=pm) for thread in others))

    accepted = [body for body in bodies if "errors" not in body]
    refused = [body for body in bodies if "errors" in body]
    assert len(accepted) == 1, bodies
    assert all(error_codes(body) == ["QUOTA_EXCEEDED"] for body in refused), refused
    extensions = refused[0]["errors"][0]["extensions"]
    assert extensions["budget"] == "PROJECT"
    assert extensions["limit"] == 31
    assert extensions["used"] == 30
    assert extensions["inProgress"] == 1

    # While the accepted reply runs, a further send is refused too; once it is cancelled,
    # its estimated tokens put the project at/over budget, so sending stays refused.
    running_thread = others[bodies.index(accepted[0])]
    idle_thread = next(thread for thread in others if thread != running_thread)
    reply_id = accepted[0]["data"]["sendMessage"]["assistantMessage"]["id"]
    assert error_codes(await ai.send(idle_thread, token=pm)) == ["QUOTA_EXCEEDED"]
    async with ai.client.subscribe(pm, running_thread) as subscription:
        while (await subscription.event())["__typename"] != "MessageDelta":
            pass
        cancelled = await ai.client.data(CANCEL, {"id": reply_id}, token=pm)
    assert cancelled["cancelMessage"]["status"] == "CANCELLED"
    assert cancelled["cancelMessage"]["content"]
    assert error_codes(await ai.send(idle_thread, token=pm)) == ["QUOTA_EXCEEDED"]
    # The upstream was asked for the first reply and exactly one of the concurrent ones.
    assert len(ai.fake.calls("/v1/responses")) == 2


async def test_budget_with_room_admits_concurrent_replies(ai: AIServer) -> None:
    pm = await ai.server.sign_in("pm@example.com")
    project_id, threads = await _project(ai, pm, threads=3)
    await ai.client.data(SET_BUDGET, {"p": project_id, "v": 1_000}, token=pm)
    ai.fake.then(*(Behaviour(deltas=("y ",) * 20, delay=0.02) for _ in threads))
    bodies = await asyncio.gather(*(ai.send(thread, token=pm) for thread in threads))
    assert all("errors" not in body for body in bodies), bodies


async def test_cancelled_reply_without_provider_usage_is_counted_as_an_estimate(
    ai: AIServer,
) -> None:
    pm = await ai.server.sign_in("pm@example.com")
    project_id, [thread_id] = await _project(ai, pm, threads=1)
    # Five deltas, then the upstream holds (`delta_permits`) until the cancel.
    ai.fake.delta_permits = asyncio.Semaphore(5)
    ai.fake.then(Behaviour(deltas=tuple(f"word{i} " for i in range(200))))
    content = "Tell me a long story, please."
    async with ai.client.subscribe(pm, thread_id) as subscription:
        body = await ai.send(thread_id, content, token=pm)
        reply_id = body["data"]["sendMessage"]["assistantMessage"]["id"]
        deltas = 0
        while deltas < 5:
            if (await subscription.event())["__typename"] == "MessageDelta":
                deltas += 1
        cancelled = (await ai.client.data(CANCEL, {"id": reply_id}, token=pm))["cancelMessage"]
        await subscription.until_final()
    assert cancelled["status"] == "CANCELLED"
    text = cancelled["content"]
    assert text.startswith("word0 word1 ")

    [row] = await _usage_rows(ai, reply_id)
    assert row.status == "cancelled_estimated"
    assert row.output_tokens == estimate_tokens(text) > 0
    assert row.input_tokens == estimate_tokens(INSTRUCTIONS + content) > 0
    assert row.cost_usd > 0

    data: dict[str, Any] = await ai.client.data(USAGE, {"p": project_id}, token=pm)
    [bucket] = data["apiUsage"]
    assert bucket["key"] == project_id
    assert bucket["requests"] == 1
    assert bucket["outputTokens"] == row.output_tokens
    assert bucket["inputTokens"] == row.input_tokens
    assert data["project"]["usageThisMonth"] == {
        "totalTokens": row.input_tokens + row.output_tokens,
        "requests": 1,
    }
    # The message keeps the provider's figures only: it reported none.
    message = await ai.client.data(
        "query($id: ID!) { node(id: $id) { ... on Message { inputTokens outputTokens } } }",
        {"id": reply_id},
        token=pm,
    )
    assert message["node"] == {"inputTokens": None, "outputTokens": None}


async def test_cut_reply_after_text_is_counted_and_one_with_usage_is_not_estimated(
    ai: AIServer,
) -> None:
    pm = await ai.server.sign_in("pm@example.com")
    _, [thread_id] = await _project(ai, pm, threads=1)
    ai.fake.then(Behaviour(kind="cut", deltas_before_failure=3), Behaviour())
    replies = []
    for _ in range(2):
        async with ai.client.subscribe(pm, thread_id, after_sequence=None) as subscription:
            body = await ai.send(thread_id, token=pm)
            replies.append(body["data"]["sendMessage"]["assistantMessage"]["id"])
            final = (await subscription.until_final())[-1]
    cut_id, normal_id = replies
    [cut] = await _usage_rows(ai, cut_id)
    assert cut.status == "incomplete_estimated"
    assert cut.output_tokens > 0
    [normal] = await _usage_rows(ai, normal_id)
    assert final["message"]["status"] == "COMPLETED"
    assert (normal.status, normal.input_tokens, normal.output_tokens) == ("completed", 21, 9)


async def test_a_reply_finished_by_another_worker_is_counted_while_running_and_after(
    ai: AIServer,
) -> None:
    """A running reply of another worker (no worker here runs it) holds its saved text
    against the budget; cancelled here (finish_orphan), it leaves an estimated usage row."""
    pm = await ai.server.sign_in("pm@example.com")
    project_id, [thread_id, other_thread] = await _project(ai, pm, threads=2)
    runtime = ai.server.app.state.atlas["runtime"]
    me = await ai.client.data("{ me { id } }", token=pm)
    question, partial = "What is it?", "half an ans"
    now = datetime.now(UTC)
    async with runtime.sessionmaker() as db:
        common: dict[str, Any] = {"thread_id": decode_global_id(thread_id)[1]}
        common["user_id"] = decode_global_id(me["me"]["id"])[1]
        db.add(
            Message(
                **common, role=MessageRole.USER, content=question,
                status=MessageStatus.COMPLETED, created_at=now - timedelta(seconds=2),
            )
        )  # fmt: skip
        reply = Message(
            **common, role=MessageRole.ASSISTANT, content=partial, model="gpt-4o-mini",
            status=MessageStatus.IN_PROGRESS, created_at=now - timedelta(seconds=1),
        )  # fmt: skip
        db.add(reply)
        await db.commit()
    # Nothing used yet, but the running reply is reckoned as ceil(11 / 4) = 3 tokens.
    await ai.client.data(SET_BUDGET, {"p": project_id, "v": 3}, token=pm)
    refused = await ai.send(other_thread, token=pm)
    assert error_codes(refused) == ["QUOTA_EXCEEDED"]
    assert refused["errors"][0]["extensions"]["used"] == 0
    assert refused["errors"][0]["extensions"]["inProgress"] == 1

    reply_id = encode_global_id("Message", reply.id)
    cancelled = await ai.client.data(CANCEL, {"id": reply_id}, token=pm)
    assert cancelled["cancelMessage"]["status"] == "CANCELLED"
    [row] = await _usage_rows(ai, reply_id)
    assert row.status == "cancelled_estimated"
    assert row.model == "gpt-4o-mini"
    assert row.user_id == decode_global_id(me["me"]["id"])[1]
    assert row.project_id == decode_global_id(project_id)[1]
    assert row.output_tokens == estimate_tokens(partial) == 3
    assert row.input_tokens == estimate_tokens(INSTRUCTIONS + question)
    refused = await ai.send(other_thread, token=pm)
    assert error_codes(refused) == ["QUOTA_EXCEEDED"]
    assert "inProgress" not in refused["errors"][0]["extensions"]
    assert len(ai.fake.calls("/v1/responses")) == 0
