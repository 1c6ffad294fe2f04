"""A field error stays a field error (issue 10 part 7): a refused argument nulls its field alone,
beside every kind of sibling, in queries and in mutations; every error keeps its code; nothing
is masked or logged as a server error; a mutation's outcome is reported truthfully.

The connection fields come from the schema. Each is refused two ways (a page size over the
limit, refused before it reads; a malformed cursor, refused by its page query while siblings
are in the middle of theirs) beside siblings of every kind: at the root (scalar, object,
connection, totalCount, nested connections, another refused field), inside its own parent
(Project, Thread), inside a mutation's payload, and beside other mutations (a root Query
connection cannot share a document with a mutation: that pairing does not exist). Each sibling
must answer exactly what it answers alone.

Size: over 400 lines on purpose: the sibling matrix is built from the schema in one place
and every pairing is asserted against it."""

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

# How a connection field is refused: before it reads anything (a page size over the limit,
# refused while its arguments are read) and while it loads (a malformed cursor, refused by the
# page query, when siblings are in the middle of their statements).
REFUSALS = {
    "page size": "first: 101",
    "cursor": 'after: "not-a-cursor"',
}

# Siblings of every kind beside the refused field at the root of a query.
ROOT_SIBLINGS = {
    "scalar": "sibling: __typename",
    "object": "sibling: project(id: $project) { name createdBy { email } }",
    "connection": "sibling: projects(first: 3) { edges { node { name createdBy { email } } } }",
    "totalCount": "sibling: threads { totalCount }",
    "nested connections": (
        "sibling: project(id: $project) { members { totalCount } threads { totalCount } }"
    ),
    "another refused field": "sibling: assistants(first: -1) { totalCount }",
}

# Siblings of every kind inside the object that holds the refused field.
PARENT_SIBLINGS = {
    "Project": {
        "scalar": "sibling: name",
        "object": "sibling: createdBy { email }",
        "connection": "sibling: members(first: 5) { edges { node { role user { email } } } }",
        "totalCount": "sibling: threads { totalCount }",
        "another refused field": "sibling: threads(first: -1) { totalCount }",
    },
    "Thread": {
        "scalar": "sibling: title",
        "object": "sibling: assistant { name }",
        "connection": "sibling: messages(first: 5) { edges { node { content } } }",
        "totalCount": "sibling: messages { totalCount }",
        "another refused field": "sibling: messages(last: 101) { totalCount }",
    },
}
REFUSING_SIBLINGS = {"another refused field"}


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
NESTED = [(parent, field) for parent, field in CONNECTIONS if parent != "Query"]


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
    assert {parent for parent, _ in NESTED} <= set(MUTATION_PATHS) & set(PARENT_SIBLINGS)
    query_type = SCHEMA.query_type
    assert query_type is not None
    for field in query_type.fields.values():
        # Every connection takes the arguments the refusals use.
        if get_named_type(field.type).name.endswith("Connection"):
            assert {"first", "after"} <= set(field.args)


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


# The arguments a connection field cannot go without, given with valid values.
REQUIRED_ARGUMENTS = {"searchMessages": 'query: "sample"'}


def bad_field(field: str, refusal: str) -> str:
    """The connection field asked with a refused argument, aliased `bad`."""
    arguments = ", ".join(filter(None, (REQUIRED_ARGUMENTS.get(field), REFUSALS[refusal])))
    return f"bad: {field}({arguments}) {{ totalCount edges {{ cursor node {{ __typename }} }} }}"


def check_errors(body: dict[str, Any], expected_paths: set[tuple[Any, ...]]) -> None:
    """Each error is a field error at an expected path with BAD_USER_INPUT; nothing masked,
    no driver text (the "Transaction.rollback()" of issue 10 part 7)."""
    errors = body.get("errors", [])
    paths = {tuple(error["path"]) for error in errors if error.get("path")}
    assert paths == expected_paths, errors
    assert len(errors) == len(expected_paths), errors
    for error in errors:
        assert error["extensions"]["code"] == "BAD_USER_INPUT", error
        assert "rollback" not in error["message"].lower(), error
        assert "transaction" not in error["message"].lower(), error


# What each sibling answers alone (every test sees the same seeded data, rolled back after it).
_alone: dict[str, Any] = {}


async def answer_alone(gql: GraphQLClient, token: str, selections: str, ids: dict[str, str]) -> Any:
    """The data of a query of `selections` alone (asked once per test run)."""
    if selections not in _alone:
        body = await gql(*operation("query", selections, ids), token=token)
        _alone[selections] = body["data"]
    return _alone[selections]


def intact(answer: Any, alone: Any, kind: str) -> None:
    """The sibling answers what it answers without the refused field beside it."""
    if kind in REFUSING_SIBLINGS:
        assert answer is None
        return
    assert answer is not None
    assert answer == alone


@pytest.mark.parametrize("refusal", list(REFUSALS))
@pytest.mark.parametrize("kind", list(ROOT_SIBLINGS))
@pytest.mark.parametrize(("parent", "field"), CONNECTIONS)
async def test_a_refused_connection_nulls_only_itself_beside_root_siblings(
    gql: GraphQLClient,
    sign_in: Any,
    db: AsyncSession,
    ids: dict[str, str],
    parent: str,
    field: str,
    kind: str,
    refusal: str,
) -> None:
    token = await sign_in("admin@example.com")
    sibling = ROOT_SIBLINGS[kind]
    alone = await answer_alone(gql, token, sibling, ids)
    logged = await error_rows(db)
    path = QUERY_PATHS[parent]
    refused = bad_field(field, refusal)
    if path is not None:
        refused = f"target: {path} {{ id {refused} }}"
    query, variables = operation("query", f"{refused} {sibling}", ids)

    body = await gql(query, variables, token=token)

    data = body["data"]
    assert data is not None, body
    bad_path: tuple[str, ...] = ("bad",)
    if parent == "Query":
        assert data["bad"] is None
    else:
        assert data["target"]["id"]  # the parent of the refused field is intact
        assert data["target"]["bad"] is None
        bad_path = ("target", "bad")
    intact(data["sibling"], alone["sibling"], kind)
    check_errors(body, {bad_path} | ({("sibling",)} if kind in REFUSING_SIBLINGS else set()))
    assert await error_rows(db) == logged


@pytest.mark.parametrize("refusal", list(REFUSALS))
@pytest.mark.parametrize("kind", list(PARENT_SIBLINGS["Project"]))
@pytest.mark.parametrize(("parent", "field"), NESTED)
async def test_a_refused_connection_nulls_only_itself_beside_its_parents_fields(
    gql: GraphQLClient,
    sign_in: Any,
    db: AsyncSession,
    ids: dict[str, str],
    parent: str,
    field: str,
    kind: str,
    refusal: str,
) -> None:
    token = await sign_in("admin@example.com")
    sibling = PARENT_SIBLINGS[parent][kind]
    selection = f"target: {QUERY_PATHS[parent]} {{ {sibling} }}"
    alone = await answer_alone(gql, token, selection, ids)
    logged = await error_rows(db)
    selections = f"target: {QUERY_PATHS[parent]} {{ id {sibling} {bad_field(field, refusal)} }}"

    body = await gql(*operation("query", selections, ids), token=token)

    target = body["data"]["target"]
    assert target["id"], body
    assert target["bad"] is None
    intact(target["sibling"], alone["target"]["sibling"], kind)
    expected = {("target", "bad")}
    if kind in REFUSING_SIBLINGS:
        expected.add(("target", "sibling"))
    check_errors(body, expected)
    assert await error_rows(db) == logged


@pytest.mark.parametrize("kind", ["connection", "nested connections"])
@pytest.mark.parametrize("field", [field for parent, field in CONNECTIONS if parent == "Query"])
async def test_a_connection_refused_to_the_viewer_nulls_only_itself(
    gql: GraphQLClient, sign_in: Any, db: AsyncSession, ids: dict[str, str], field: str, kind: str
) -> None:
    """Asked by a plain member, each root connection either answers or is null with FORBIDDEN
    (users, errorLogs, activityLogs), and the siblings answer as they do alone."""
    token = await sign_in("user@example.com")
    sibling = ROOT_SIBLINGS[kind]
    alone = (await gql(*operation("query", sibling, ids), token=token))["data"]
    logged = await error_rows(db)

    arguments = ", ".join(filter(None, (REQUIRED_ARGUMENTS.get(field), "first: 2")))
    body = await gql(
        *operation("query", f"asked: {field}({arguments}) {{ totalCount }} {sibling}", ids),
        token=token,
    )

    assert alone["sibling"] is not None
    assert body["data"]["sibling"] == alone["sibling"]
    errors = body.get("errors", [])
    if body["data"]["asked"] is None:
        assert [(error["path"], error["extensions"]["code"]) for error in errors] == [
            (["asked"], "FORBIDDEN")
        ]
    else:
        assert errors == []
    assert await error_rows(db) == logged


# A mutation's payload holds siblings of every kind too: (selection, expected answer).
PAYLOAD_SIBLINGS: dict[str, dict[str, tuple[str, Any]]] = {
    "Project": {
        "scalar": ("sibling: name", "Field errors"),
        "object": ("sibling: createdBy { email }", {"email": "admin@example.com"}),
        "connection": (
            "sibling: members(first: 5) { edges { node { role user { email } } } }",
            {"edges": [{"node": {"role": "OWNER", "user": {"email": "admin@example.com"}}}]},
        ),
        "totalCount": ("sibling: members { totalCount }", {"totalCount": 1}),
        "another refused field": ("sibling: threads(first: -1) { totalCount }", None),
    },
    "Thread": {
        "scalar": ("sibling: title", "Field errors"),
        "object": ("sibling: assistant { name }", {"name": SAMPLE_ASSISTANT_NAME}),
        "connection": ("sibling: messages(first: 5) { edges { node { id } } }", {"edges": []}),
        "totalCount": ("sibling: messages { totalCount }", {"totalCount": 0}),
        "another refused field": ("sibling: messages(last: 101) { totalCount }", None),
    },
}


async def stored_node(gql: GraphQLClient, token: str, node_id: str) -> Any:
    check = "query($id: ID!) { node(id: $id) { id } }"
    return (await gql(check, {"id": node_id}, token=token))["data"]["node"]


@pytest.mark.parametrize("refusal", list(REFUSALS))
@pytest.mark.parametrize("kind", list(PAYLOAD_SIBLINGS["Project"]))
@pytest.mark.parametrize(("parent", "field"), NESTED)
async def test_a_refused_connection_in_a_mutation_payload_keeps_the_mutation(
    gql: GraphQLClient,
    sign_in: Any,
    db: AsyncSession,
    ids: dict[str, str],
    parent: str,
    field: str,
    kind: str,
    refusal: str,
) -> None:
    """The mutation ran and says so: its payload is there but for the refused field, and
    what it created is stored."""
    token = await sign_in("admin@example.com")
    logged = await error_rows(db)
    sibling, expected = PAYLOAD_SIBLINGS[parent][kind]
    selections = f"created: {MUTATION_PATHS[parent]} {{ id {sibling} {bad_field(field, refusal)} }}"

    body = await gql(*operation("mutation", selections, ids), token=token)

    created = body["data"]["created"]
    assert created["id"], body
    assert created["bad"] is None
    assert created["sibling"] == expected
    paths = {("created", "bad")}
    if kind in REFUSING_SIBLINGS:
        paths.add(("created", "sibling"))
    check_errors(body, paths)
    assert await stored_node(gql, token, created["id"]) == {"id": created["id"]}
    assert await error_rows(db) == logged


@pytest.mark.parametrize("refusal", list(REFUSALS))
@pytest.mark.parametrize(("parent", "field"), NESTED)
async def test_a_refused_connection_beside_sibling_mutations(
    gql: GraphQLClient,
    sign_in: Any,
    db: AsyncSession,
    ids: dict[str, str],
    parent: str,
    field: str,
    refusal: str,
) -> None:
    """Mutations before and after the one whose payload holds the refused field run and
    keep their effect; every one of them says so (a retrying client would duplicate nothing
    it was told had failed)."""
    token = await sign_in("admin@example.com")
    logged = await error_rows(db)
    selections = (
        'before: createProject(input: {name: "Sibling before"}) { id members { totalCount } } '
        f"created: {MUTATION_PATHS[parent]} {{ id {bad_field(field, refusal)} }} "
        'after: createProject(input: {name: "Sibling after"}) { id threads { totalCount } }'
    )

    body = await gql(*operation("mutation", selections, ids), token=token)

    data = body["data"]
    assert data["before"]["members"] == {"totalCount": 1}, body
    assert data["after"]["threads"] == {"totalCount": 0}
    assert data["created"]["bad"] is None
    check_errors(body, {("created", "bad")})
    for name in ("before", "created", "after"):
        assert await stored_node(gql, token, data[name]["id"]) == {"id": data[name]["id"]}
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
