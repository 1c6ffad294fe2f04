"""A field error stays a field error (issue 10 part 7): a refused argument nulls its field alone,
beside every kind of sibling, in queries and in mutations; every error keeps its code; nothing
is masked or logged as a server error; a mutation's outcome is reported truthfully."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from graphql import GraphQLNonNull, GraphQLObjectType, get_named_type
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from atlas_gql.ai.models import Assistant, Thread
from atlas_gql.graph.schema import build_schema
from atlas_gql.ids import encode_global_id
from atlas_gql.projects.models import Project
from atlas_gql.seed import SAMPLE_ASSISTANT_NAME, SAMPLE_PROJECT_NAME
from tests.conftest import GraphQLClient

SCHEMA = build_schema()._schema

# Where each type that holds a connection field is reached from, in a query and (for the
# non-root ones) in a mutation's payload. A new connection field on another type fails the
# test below until it is added here.
QUERY_PATHS = {"Query": None, "Project": "project(id: $project)", "Thread": "thread(id: $thread)"}
MUTATION_PATHS = {
    "Project": 'createProject(input: {name: "Field errors"})',
    "Thread": 'createThread(input: {assistantId: $assistant, projectId: $project, title: "Field '
    'errors"})',
}

# Siblings of every kind, with what each must still answer.
SIBLINGS: dict[str, tuple[str, Any]] = {
    "scalar": ("sibling: me { email }", {"email": "admin@example.com"}),
    "list from the database": (
        "sibling: projects(first: 3) { edges { node { name createdBy { email } } } }",
        None,
    ),
    "nested connections": (
        "sibling: project(id: $project) { members { totalCount } threads { totalCount } }",
        None,
    ),
    "another refused field": ("sibling: assistants(first: -1) { totalCount }", None),
}


def operation(kind: str, selections: str, ids: dict[str, str]) -> tuple[str, dict[str, str]]:
    """A document declaring the id variables its selections use, and their values."""
    used = {name: value for name, value in ids.items() if f"${name}" in selections}
    declared = ", ".join(f"${name}: ID!" for name in used)
    return f"{kind} ({declared}) {{ {selections} }}" if used else f"{kind} {{ {selections} }}", used


def connection_fields() -> list[tuple[str, str]]:
    """Every (type, field) of the schema whose type is a Relay connection."""
    found = []
    for type_name, named in SCHEMA.type_map.items():
        if not isinstance(named, GraphQLObjectType) or type_name.startswith("__"):
            continue
        for field_name, field in named.fields.items():
            if get_named_type(field.type).name.endswith("Connection"):
                found.append((type_name, field_name))
    return sorted(found)


CONNECTIONS = connection_fields()


def test_the_nullability_rule_holds_across_the_schema() -> None:
    """Query and mutation root fields, and every field that takes arguments, are nullable."""
    offenders = []
    for type_name, named in SCHEMA.type_map.items():
        if not isinstance(named, GraphQLObjectType) or type_name.startswith("__"):
            continue
        if type_name == "Subscription":  # an error ends the stream: events stay non-null
            continue
        for field_name, field in named.fields.items():
            governed = type_name in {"Query", "Mutation"} or bool(field.args)
            if governed and isinstance(field.type, GraphQLNonNull):
                offenders.append(f"{type_name}.{field_name}: {field.type}")
    assert offenders == []
    assert len(CONNECTIONS) >= 9
    assert {parent for parent, _ in CONNECTIONS} <= set(QUERY_PATHS)


@pytest.fixture
async def ids(db: AsyncSession) -> dict[str, str]:
    project = (
        await db.execute(sa.select(Project).where(col(Project.name) == SAMPLE_PROJECT_NAME))
    ).scalar_one()
    thread = (
        await db.execute(sa.select(Thread).where(col(Thread.project_id) == project.id))
    ).scalar_one()
    assistant = (
        await db.execute(sa.select(Assistant).where(col(Assistant.project_id) == project.id))
    ).scalar_one()
    return {
        "project": encode_global_id("Project", project.id),
        "thread": encode_global_id("Thread", thread.id),
        "assistant": encode_global_id("Assistant", assistant.id),
    }


async def error_rows(db: AsyncSession) -> int:
    return int((await db.execute(sa.text("SELECT count(*) FROM error_logs"))).scalar_one())


def refused(parent: str, field: str) -> str:
    """The connection field asked with a page size over the limit, aliased `bad`."""
    selection = f"bad: {field}(first: 101) {{ totalCount }}"
    path = QUERY_PATHS[parent]
    return selection if path is None else f"target: {path} {{ id {selection} }}"


def check_sibling(kind: str, answer: Any) -> None:
    expected = SIBLINGS[kind][1]
    if kind == "another refused field":
        assert answer is None
    elif kind == "list from the database":
        assert answer["edges"], answer
        assert all(edge["node"]["createdBy"]["email"] for edge in answer["edges"])
    elif kind == "nested connections":
        assert answer["members"]["totalCount"] >= 2
        assert answer["threads"]["totalCount"] >= 1
    else:
        assert answer == expected


@pytest.mark.parametrize("kind", list(SIBLINGS))
@pytest.mark.parametrize(("parent", "field"), CONNECTIONS)
async def test_a_refused_page_size_nulls_only_its_field_in_a_query(
    gql: GraphQLClient,
    sign_in: Any,
    db: AsyncSession,
    ids: dict[str, str],
    parent: str,
    field: str,
    kind: str,
) -> None:
    token = await sign_in("admin@example.com")
    logged = await error_rows(db)
    query, variables = operation("query", f"{refused(parent, field)} {SIBLINGS[kind][0]}", ids)

    body = await gql(query, variables, token=token)

    data = body["data"]
    assert data is not None, body
    bad = data["bad"] if parent == "Query" else data["target"]["bad"]
    assert bad is None
    if parent != "Query":
        assert data["target"]["id"]  # the parent of the refused field is intact
    check_sibling(kind, data["sibling"])
    codes = {tuple(error["path"]): error["extensions"]["code"] for error in body["errors"]}
    bad_path = ("bad",) if parent == "Query" else ("target", "bad")
    assert codes[bad_path] == "BAD_USER_INPUT"
    expected_errors = 2 if kind == "another refused field" else 1
    assert len(body["errors"]) == expected_errors, body["errors"]
    assert set(codes.values()) == {"BAD_USER_INPUT"}
    assert await error_rows(db) == logged


# A mutation's payload holds siblings of every kind too: (selection, expected answer).
PAYLOAD_SIBLINGS: dict[str, dict[str, tuple[str, Any]]] = {
    "Project": {
        "scalar": ("sibling: name", "Field errors"),
        "loaded from the database": (
            "sibling: createdBy { email }",
            {"email": "admin@example.com"},
        ),
        "another connection": ("sibling: members { totalCount }", {"totalCount": 1}),
        "another refused field": ("sibling: threads(first: -1) { totalCount }", None),
    },
    "Thread": {
        "scalar": ("sibling: title", "Field errors"),
        "loaded from the database": (
            "sibling: assistant { name }",
            {"name": SAMPLE_ASSISTANT_NAME},
        ),
        "another connection": ("sibling: messages { totalCount }", {"totalCount": 0}),
        "another refused field": ("sibling: messages(last: 101) { totalCount }", None),
    },
}


@pytest.mark.parametrize("kind", list(PAYLOAD_SIBLINGS["Project"]))
@pytest.mark.parametrize(
    ("parent", "field"), [(parent, field) for parent, field in CONNECTIONS if parent != "Query"]
)
async def test_a_refused_page_size_in_a_mutation_payload_keeps_the_mutation(
    gql: GraphQLClient,
    sign_in: Any,
    db: AsyncSession,
    ids: dict[str, str],
    parent: str,
    field: str,
    kind: str,
) -> None:
    """The mutation ran and says so: its payload is there but for the refused field, and
    what it created is stored."""
    token = await sign_in("admin@example.com")
    logged = await error_rows(db)
    sibling, expected = PAYLOAD_SIBLINGS[parent][kind]
    selections = (
        f"created: {MUTATION_PATHS[parent]} {{ id {sibling} bad: {field}(first: 101) "
        "{ totalCount } }"
    )
    mutation, variables = operation("mutation", selections, ids)

    body = await gql(mutation, variables, token=token)

    created = body["data"]["created"]
    assert created["id"], body
    assert created["bad"] is None
    assert created["sibling"] == expected
    codes = {tuple(error["path"]): error["extensions"]["code"] for error in body["errors"]}
    assert codes[("created", "bad")] == "BAD_USER_INPUT"
    assert set(codes.values()) == {"BAD_USER_INPUT"}
    assert len(codes) == (2 if kind == "another refused field" else 1)
    check = "query($id: ID!) { node(id: $id) { id } }"
    stored = await gql(check, {"id": created["id"]}, token=token)
    assert stored["data"]["node"] == {"id": created["id"]}
    assert await error_rows(db) == logged


async def test_mutations_before_a_failing_one_keep_their_effect_and_later_ones_run(
    gql: GraphQLClient, sign_in: Any, db: AsyncSession, ids: dict[str, str]
) -> None:
    token = await sign_in("admin@example.com")
    mutation = """
    mutation($project: ID!, $missing: ID!) {
      first: createProject(input: {name: "Kept first"}) {
        id name members(first: 101) { totalCount }
      }
      refused: updateProject(id: $project, input: {name: null}) { id }
      missing: deleteProject(id: $missing)
      last: createProject(input: {name: "Kept last"}) { id name }
    }"""
    missing = encode_global_id("Project", uuid.uuid4())
    body = await gql(mutation, {"project": ids["project"], "missing": missing}, token=token)

    data = body["data"]
    assert data["first"]["name"] == "Kept first"
    assert data["first"]["members"] is None
    assert data["refused"] is None
    assert data["missing"] is None
    assert data["last"]["name"] == "Kept last"
    codes = {tuple(error["path"]): error["extensions"]["code"] for error in body["errors"]}
    assert codes == {
        ("first", "members"): "BAD_USER_INPUT",
        ("refused",): "BAD_USER_INPUT",
        ("missing",): "NOT_FOUND",
    }
    names = (
        await db.execute(
            sa.select(col(Project.name)).where(col(Project.name).in_(["Kept first", "Kept last"]))
        )
    ).scalars()
    assert sorted(names) == ["Kept first", "Kept last"]
    # The refused rename changed nothing.
    sample = await gql(
        "query($id: ID!) { project(id: $id) { name } }", {"id": ids["project"]}, token=token
    )
    assert sample["data"]["project"]["name"] == SAMPLE_PROJECT_NAME
