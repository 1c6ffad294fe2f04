"""Pinned and archived threads (issue 15 part 7): `updateThread(input: {pinned, archived})`,
`threads(filter: {archived, pinned})` hiding archived threads by default, and archived
threads refusing new messages until unarchived."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

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
