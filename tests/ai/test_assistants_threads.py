"""Assistants and threads over GraphQL (ASGI app, rolled-back transaction)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from atlas_gql.ai import loaders
from atlas_gql.ai.models import Assistant, Thread
from atlas_gql.auth.models import RoleName
from atlas_gql.config import Settings
from atlas_gql.db.pagination import Page, PageRequest
from atlas_gql.errors import BadInput
from atlas_gql.ids import decode_id_of, encode_global_id
from atlas_gql.logs.models import ActivityLog
from atlas_gql.projects.models import Project, ProjectRole
from atlas_gql.seed import SAMPLE_ASSISTANT_NAME, SAMPLE_THREAD_TITLE
from tests.conftest import counting_statements, error_codes
from tests.factories import add_member, create_person

CREATE_ASSISTANT = """
mutation($input: CreateAssistantInput!) {
  createAssistant(input: $input) {
    id name model instructions temperature project { id } files { id }
  }
}"""
CREATE_THREAD = """
mutation($input: CreateThreadInput!) {
  createThread(input: $input) {
    id title openaiThreadId project { id name } assistant { id name } createdBy { email }
    messages { totalCount } files { id }
  }
}"""


@pytest.fixture
async def sample(db: AsyncSession) -> dict[str, Any]:
    project = (
        await db.execute(sa.select(Project).where(col(Project.name) == "Sample Project"))
    ).scalar_one()
    assistant = (
        await db.execute(sa.select(Assistant).where(col(Assistant.name) == SAMPLE_ASSISTANT_NAME))
    ).scalar_one()
    thread = (
        await db.execute(sa.select(Thread).where(col(Thread.title) == SAMPLE_THREAD_TITLE))
    ).scalar_one()
    return {
        "project": encode_global_id("Project", project.id),
        "project_uuid": project.id,
        "assistant": encode_global_id("Assistant", assistant.id),
        "thread": encode_global_id("Thread", thread.id),
    }


@pytest.fixture
def person(db: AsyncSession, settings: Settings, sample: dict[str, Any]) -> Any:
    """`await person(ProjectRole.VIEWER)` -> token of a new USER with that role in the sample
    project (None: not a member)."""

    async def make(project_role: ProjectRole | None = None, role: RoleName = RoleName.USER) -> str:
        person = await create_person(db, settings, role, label="p")
        if project_role is not None:
            await add_member(db, sample["project_uuid"], person.user, project_role)
            await db.commit()
        return person.token

    return make


async def test_manager_creates_a_project_assistant_member_cannot(
    gql: Any, person: Any, sample: dict[str, Any], sign_in: Any, db: AsyncSession
) -> None:
    values = {
        "name": "  Helper ",
        "model": "gpt-4.1-mini",
        "instructions": "Be brief.",
        "temperature": 0.2,
        "projectId": sample["project"],
    }
    member = await sign_in("user@example.com")
    assert error_codes(await gql(CREATE_ASSISTANT, {"input": values}, token=member)) == [
        "FORBIDDEN"
    ]
    pm = await sign_in("pm@example.com")
    created = (await gql(CREATE_ASSISTANT, {"input": values}, token=pm))["data"]["createAssistant"]
    assert created["name"] == "Helper"
    assert created["model"] == "gpt-4.1-mini"
    assert created["project"]["id"] == sample["project"]
    assert created["files"] == []
    # Members see it; outsiders do not.
    listed = await gql(
        "query($p: ID) { assistants(first: 50, filter: {projectId: $p}) "
        "{ totalCount edges { node { id } } } }",
        {"p": sample["project"]},
        token=member,
    )
    assert created["id"] in [e["node"]["id"] for e in listed["data"]["assistants"]["edges"]]
    outsider = await person(None)
    node = await gql(
        "query($id: ID!) { node(id: $id) { id } }", {"id": created["id"]}, token=outsider
    )
    assert node["data"]["node"] is None
    actions = (
        await db.execute(
            sa.select(col(ActivityLog.action)).where(
                col(ActivityLog.entity_type) == "Assistant",
                col(ActivityLog.action) == "assistant.create",
            )
        )
    ).all()
    assert actions


async def test_assistant_input_is_validated(gql: Any, sign_in: Any) -> None:
    token = await sign_in("user@example.com")
    for values, field in (
        ({"name": "x", "model": "gpt-unknown"}, "model"),
        ({"name": "   "}, "name"),
        ({"name": "x", "temperature": 3.5}, "temperature"),
    ):
        body = await gql(CREATE_ASSISTANT, {"input": values}, token=token)
        assert error_codes(body) == ["BAD_USER_INPUT"], body
        assert body["errors"][0]["extensions"]["field"] == field
    personal = await gql(CREATE_ASSISTANT, {"input": {"name": "Mine"}}, token=token)
    assert personal["data"]["createAssistant"]["model"] == "gpt-4o-mini"  # the default
    assert personal["data"]["createAssistant"]["project"] is None


async def test_update_and_delete_assistant(gql: Any, sign_in: Any, person: Any) -> None:
    owner = await sign_in("user@example.com")
    created = (await gql(CREATE_ASSISTANT, {"input": {"name": "Temp"}}, token=owner))["data"][
        "createAssistant"
    ]
    update = """mutation($id: ID!, $input: UpdateAssistantInput!) {
      updateAssistant(id: $id, input: $input) { name model instructions temperature } }"""
    changed = await gql(
        update,
        {"id": created["id"], "input": {"instructions": "New", "model": "gpt-4o"}},
        token=owner,
    )
    assert changed["data"]["updateAssistant"] == {
        "name": "Temp",
        "model": "gpt-4o",
        "instructions": "New",
        "temperature": None,
    }
    other = await person(ProjectRole.OWNER)
    # A personal assistant is invisible to others: NOT_FOUND, not FORBIDDEN.
    assert error_codes(await gql(update, {"id": created["id"], "input": {}}, token=other)) == [
        "NOT_FOUND"
    ]
    delete = "mutation($id: ID!) { deleteAssistant(id: $id) }"
    assert error_codes(await gql(delete, {"id": created["id"]}, token=other)) == ["NOT_FOUND"]
    assert (await gql(delete, {"id": created["id"]}, token=owner))["data"]["deleteAssistant"]


async def test_member_creates_a_thread_with_the_pm_assistant(
    gql: Any, sign_in: Any, sample: dict[str, Any]
) -> None:
    member = await sign_in("user@example.com")
    values = {"projectId": sample["project"], "assistantId": sample["assistant"], "title": "Q3"}
    thread = (await gql(CREATE_THREAD, {"input": values}, token=member))["data"]["createThread"]
    assert thread["title"] == "Q3"
    # The OpenAI conversation is created with the first reply, not now.
    assert thread["openaiThreadId"] is None
    assert thread["project"]["name"] == "Sample Project"
    assert thread["assistant"]["name"] == SAMPLE_ASSISTANT_NAME
    assert thread["createdBy"]["email"] == "user@example.com"
    assert thread["messages"]["totalCount"] == 0
    listed = await gql(
        "query($p: ID) { threads(first: 100, filter: {projectId: $p}) { edges { node { id } } } }",
        {"p": sample["project"]},
        token=member,
    )
    assert listed["data"]["threads"]["edges"][0]["node"]["id"] == thread["id"]


async def test_who_may_create_threads(gql: Any, person: Any, sample: dict[str, Any]) -> None:
    values = {"projectId": sample["project"], "assistantId": sample["assistant"]}
    viewer = await person(ProjectRole.VIEWER)
    outsider = await person(None)
    assert error_codes(await gql(CREATE_THREAD, {"input": values}, token=viewer)) == ["FORBIDDEN"]
    assert error_codes(await gql(CREATE_THREAD, {"input": values}, token=outsider)) == ["NOT_FOUND"]
    assert error_codes(await gql(CREATE_THREAD, {"input": values})) == ["UNAUTHENTICATED"]
    bad = {"projectId": sample["assistant"], "assistantId": sample["assistant"]}
    assert error_codes(await gql(CREATE_THREAD, {"input": bad}, token=viewer)) == ["BAD_USER_INPUT"]


async def test_thread_messages_paginate_oldest_first(
    gql: Any, sign_in: Any, sample: dict[str, Any], person: Any
) -> None:
    member = await sign_in("user@example.com")
    query = """query($id: ID!, $first: Int, $after: String, $last: Int, $before: String) {
      thread(id: $id) { messages(first: $first, after: $after, last: $last, before: $before) {
        totalCount pageInfo { hasNextPage hasPreviousPage endCursor startCursor }
        edges { node { role content status } } } } }"""
    first = (await gql(query, {"id": sample["thread"], "first": 2}, token=member))["data"]
    page = first["thread"]["messages"]
    assert page["totalCount"] == 3
    assert page["edges"][0]["node"]["content"].startswith("Hello!")
    assert page["pageInfo"]["hasNextPage"] is True
    rest = await gql(
        query,
        {"id": sample["thread"], "first": 2, "after": page["pageInfo"]["endCursor"]},
        token=member,
    )
    assert [e["node"]["content"] for e in rest["data"]["thread"]["messages"]["edges"]] == [
        "Great, thanks."
    ]
    last = await gql(query, {"id": sample["thread"], "last": 1}, token=member)
    assert [e["node"]["content"] for e in last["data"]["thread"]["messages"]["edges"]] == [
        "Great, thanks."
    ]
    outsider = await person(None)
    hidden = await gql(query, {"id": sample["thread"]}, token=outsider)
    assert hidden == {"data": {"thread": None}}


async def test_a_bad_messages_cursor_fails_only_its_own_keys(
    db: AsyncSession, sample: dict[str, Any]
) -> None:
    thread_id = decode_id_of(sample["thread"], "Thread")
    loader = loaders.messages_page(lambda: db)
    good, bad, also_good = await asyncio.gather(
        loader.load((thread_id, PageRequest(first=1))),
        loader.load((thread_id, PageRequest(first=1, after="not-a-cursor"))),
        loader.load((uuid.uuid4(), PageRequest(last=2))),
        return_exceptions=True,
    )
    assert isinstance(good, Page)
    assert good.total_count == 3
    assert len(good.items) == 1
    assert isinstance(bad, BadInput)
    assert bad.extensions["field"] == "after"
    assert isinstance(also_good, Page)
    assert also_good.items == []


async def test_rename_and_delete_thread(
    gql: Any, sign_in: Any, sample: dict[str, Any], person: Any
) -> None:
    member = await sign_in("user@example.com")
    values = {"projectId": sample["project"], "assistantId": sample["assistant"], "title": "Old"}
    thread = (await gql(CREATE_THREAD, {"input": values}, token=member))["data"]["createThread"]
    rename = (
        "mutation($id: ID!, $t: String) { updateThread(id: $id, input: {title: $t}) { title } }"
    )
    other_member = await person(ProjectRole.MEMBER)
    assert error_codes(await gql(rename, {"id": thread["id"], "t": "X"}, token=other_member)) == [
        "FORBIDDEN"
    ]
    manager = await person(ProjectRole.MANAGER)
    renamed = await gql(rename, {"id": thread["id"], "t": "New"}, token=manager)
    assert renamed["data"]["updateThread"]["title"] == "New"
    delete = "mutation($id: ID!) { deleteThread(id: $id) }"
    assert error_codes(await gql(delete, {"id": thread["id"]}, token=other_member)) == ["FORBIDDEN"]
    assert (await gql(delete, {"id": thread["id"]}, token=member))["data"]["deleteThread"] == (
        thread["id"]
    )
    gone = await gql("query($id: ID!) { node(id: $id) { id } }", {"id": thread["id"]}, token=member)
    assert gone["data"]["node"] is None


async def test_thread_list_statements_do_not_grow_with_page_size(
    gql: Any, sign_in: Any, sample: dict[str, Any], engine: Any
) -> None:
    member = await sign_in("user@example.com")
    values = {"projectId": sample["project"], "assistantId": sample["assistant"]}
    for _ in range(6):
        await gql(CREATE_THREAD, {"input": values}, token=member)
    query = """query($n: Int) { threads(first: $n) { edges { node {
      id project { name } assistant { name files { id } } createdBy { email } files { id }
      messages(last: 5) { totalCount edges { node { content files { id } } } } } } } }"""
    counts = []
    for size in (1, 6):
        with counting_statements(engine) as statements:
            body = await gql(query, {"n": size}, token=member)
        assert "errors" not in body, body
        assert len(body["data"]["threads"]["edges"]) == size
        counts.append(len(statements))
    assert counts[0] == counts[1]
