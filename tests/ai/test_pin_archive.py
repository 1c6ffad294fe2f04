"""Pinned and archived threads (issue 15 part 7): `updateThread(input: {pinned, archived})`,
`threads(filter: {archived, pinned})` hiding archived threads by default, and archived
threads refusing new messages, regenerate, edit and selectBranch until unarchived."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from atlas_gql.ai.models import Message
from atlas_gql.ids import decode_id_of
from atlas_gql.logs.models import ActivityLog
from tests.ai.conftest import AIServer, People, make_people
from tests.conftest import GraphQLClient, error_codes

CREATE = """mutation($input: CreateThreadInput!) { createThread(input: $input) { id } }"""
UPDATE = """mutation($id: ID!, $input: UpdateThreadInput!) {
  updateThread(id: $id, input: $input) { id title pinned archivedAt }
}"""
LIST = """query($project: ID!, $archived: Boolean, $pinned: Boolean) {
  threads(first: 100, filter: {projectId: $project, archived: $archived, pinned: $pinned}) {
    totalCount nodes { id pinned archivedAt }
  }
}"""

REGENERATE = "mutation($id: ID!) { regenerateMessage(input: {messageId: $id}) { id } }"
EDIT = """mutation($id: ID!, $content: String!) {
  editMessage(input: {messageId: $id, content: $content}) { userMessage { id } }
}"""
SELECT_BRANCH = "mutation($id: ID!) { selectBranch(input: {messageId: $id}) { activeLeaf { id } } }"


async def _thread(gql: GraphQLClient, people: People, title: str) -> str:
    body = await gql(
        CREATE,
        {"input": {"projectId": people.project_id, "assistantId": people.assistant_id,
                   "title": title}},
        token=people.member,
    )  # fmt: skip
    thread_id: str = body["data"]["createThread"]["id"]
    return thread_id


async def _listed(gql: GraphQLClient, people: People, **filters: Any) -> list[str]:
    body = await gql(LIST, {"project": people.project_id, **filters}, token=people.member)
    assert "errors" not in body, body
    return [node["id"] for node in body["data"]["threads"]["nodes"]]


async def test_pinned_and_archived_threads_are_listed_by_filter(
    gql: GraphQLClient,
    sign_in: Any,
    sessionmaker: async_sessionmaker[AsyncSession],
    db: AsyncSession,
) -> None:
    people = await make_people(sessionmaker, sign_in)
    plain, pinned, archived = [await _thread(gql, people, title) for title in "abc"]

    body = await gql(UPDATE, {"id": pinned, "input": {"pinned": True}}, token=people.member)
    assert body["data"]["updateThread"]["pinned"] is True
    assert body["data"]["updateThread"]["archivedAt"] is None
    body = await gql(UPDATE, {"id": archived, "input": {"archived": True}}, token=people.manager)
    archived_at = body["data"]["updateThread"]["archivedAt"]
    assert archived_at is not None
    # Omitted fields stay: the title is unchanged by pinning or archiving.
    assert body["data"]["updateThread"]["title"] == "c"

    default = await _listed(gql, people)
    assert {plain, pinned} <= set(default)
    assert archived not in default
    assert await _listed(gql, people, archived=False) == default
    assert archived in await _listed(gql, people, archived=True)
    assert not {plain, pinned} & set(await _listed(gql, people, archived=True))
    assert pinned in await _listed(gql, people, pinned=True)
    assert plain not in await _listed(gql, people, pinned=True)
    assert plain in await _listed(gql, people, pinned=False)
    assert pinned not in await _listed(gql, people, pinned=False)

    # Archiving again keeps the first time; unarchiving brings the thread back.
    body = await gql(UPDATE, {"id": archived, "input": {"archived": True}}, token=people.member)
    assert body["data"]["updateThread"]["archivedAt"] == archived_at
    body = await gql(UPDATE, {"id": archived, "input": {"archived": False}}, token=people.member)
    assert body["data"]["updateThread"]["archivedAt"] is None
    assert archived in await _listed(gql, people)

    details = (
        await db.execute(
            sa.select(col(ActivityLog.details))
            .where(col(ActivityLog.action) == "thread.update")
            .order_by(col(ActivityLog.created_at).desc())
            .limit(4)
        )
    ).scalars().all()  # fmt: skip
    assert {"archived": False} in details
    assert {"archived": True} in details
    assert {"pinned": True} in details


async def test_pin_and_archive_are_refused_to_wrong_viewers_and_null(
    gql: GraphQLClient, sign_in: Any, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    people = await make_people(sessionmaker, sign_in)
    thread = await _thread(gql, people, "guarded")
    for field in ("pinned", "archived"):
        body = await gql(UPDATE, {"id": thread, "input": {field: None}}, token=people.member)
        assert error_codes(body) == ["BAD_USER_INPUT"], body
        assert body["errors"][0]["extensions"]["field"] == field
    body = await gql(UPDATE, {"id": thread, "input": {"pinned": True}}, token=people.outsider)
    assert error_codes(body) == ["NOT_FOUND"]
    body = await gql(UPDATE, {"id": thread, "input": {"archived": True}}, token=people.viewer)
    assert error_codes(body) == ["FORBIDDEN"]
    body = await gql(LIST, {"project": people.project_id, "archived": True}, token=None)
    assert error_codes(body) == ["UNAUTHENTICATED"]
    # Nothing changed.
    assert thread in await _listed(gql, people, pinned=False)


async def test_an_archived_thread_refuses_messages_until_unarchived(ai: AIServer) -> None:
    people = ai.people
    thread = await ai.new_thread()
    await ai.client.data(UPDATE, {"id": thread, "input": {"archived": True}}, token=people.member)
    calls = len(ai.fake.calls("/v1/responses"))

    refused = await ai.send(thread, "Anyone there?")
    assert error_codes(refused) == ["CONFLICT"], refused
    assert "archived" in refused["errors"][0]["message"]
    assert len(ai.fake.calls("/v1/responses")) == calls  # nothing reached the model
    messages = await ai.client.data(
        "query($id: ID!) { thread(id: $id) { messages { totalCount } } }",
        {"id": thread},
        token=people.member,
    )
    assert messages["thread"]["messages"]["totalCount"] == 0

    await ai.client.data(UPDATE, {"id": thread, "input": {"archived": False}}, token=people.member)
    async with ai.client.subscribe(people.member, thread) as subscription:
        sent = await ai.send(thread, "Now?")
        assert "errors" not in sent, sent
        events = await subscription.until_final()
    assert events[-1]["__typename"] == "MessageCompleted"


async def test_an_archived_thread_refuses_regenerate_edit_and_select_branch(ai: AIServer) -> None:
    """Archived means frozen: no new message (send, regenerate, edit) and no other branch
    shown (selectBranch) until unarchived; reading and exporting go on."""
    people = ai.people
    thread = await ai.new_thread()
    async with ai.client.subscribe(people.member, thread) as subscription:
        first = (await ai.send(thread, "First"))["data"]["sendMessage"]
        await subscription.until_final()
    async with ai.client.subscribe(people.member, thread) as subscription:
        regenerated = await ai.client.data(
            REGENERATE, {"id": first["assistantMessage"]["id"]}, token=people.member
        )
        await subscription.until_final()
    shown = await _active_leaf(ai, thread)
    assert shown == regenerated["regenerateMessage"]["id"]
    await ai.client.data(UPDATE, {"id": thread, "input": {"archived": True}}, token=people.member)
    calls = len(ai.fake.calls("/v1/responses"))

    refusals = [
        await ai.client.gql(
            REGENERATE, {"id": first["assistantMessage"]["id"]}, token=people.member
        ),
        await ai.client.gql(
            EDIT, {"id": first["userMessage"]["id"], "content": "Changed"}, token=people.member
        ),
        await ai.client.gql(
            SELECT_BRANCH, {"id": first["assistantMessage"]["id"]}, token=people.member
        ),
    ]
    for refused in refusals:
        assert error_codes(refused) == ["CONFLICT"], refused
        assert "archived" in refused["errors"][0]["message"]
    assert "switch branches" in refusals[2]["errors"][0]["message"]
    # Nothing changed: no model call, no new message, the same branch shown.
    assert len(ai.fake.calls("/v1/responses")) == calls
    assert await _active_leaf(ai, thread) == shown
    assert await _message_count(ai, thread) == 3
    # Who may not post hears that first (the thread's state is not theirs to learn).
    hidden = await ai.client.gql(
        SELECT_BRANCH, {"id": first["assistantMessage"]["id"]}, token=people.outsider
    )
    assert error_codes(hidden) == ["NOT_FOUND"]
    viewer = await ai.client.gql(
        SELECT_BRANCH, {"id": first["assistantMessage"]["id"]}, token=people.viewer
    )
    assert error_codes(viewer) == ["FORBIDDEN"]

    # Unarchived, the branch can be switched again.
    await ai.client.data(UPDATE, {"id": thread, "input": {"archived": False}}, token=people.member)
    switched = await ai.client.data(
        SELECT_BRANCH, {"id": first["assistantMessage"]["id"]}, token=people.member
    )
    assert switched["selectBranch"]["activeLeaf"]["id"] == first["assistantMessage"]["id"]


async def _active_leaf(ai: AIServer, thread: str) -> str:
    data = await ai.client.data(
        "query($id: ID!) { thread(id: $id) { activeLeaf { id } } }",
        {"id": thread},
        token=ai.people.member,
    )
    leaf: str = data["thread"]["activeLeaf"]["id"]
    return leaf


async def _message_count(ai: AIServer, thread: str) -> int:
    async with ai.server.app.state.atlas["runtime"].sessionmaker() as db:
        count = await db.scalar(
            sa.select(sa.func.count())
            .select_from(Message)
            .where(col(Message.thread_id) == decode_id_of(thread, "Thread"))
        )
    return int(count or 0)
