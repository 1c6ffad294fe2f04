"""What the compiled path hands back to the resolver path, and why that is right: the
resolver path answers those requests with an error (or with fields the compiler does not
build). Also: one statement per request, plans cached per shape, values never in the SQL."""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa
from graphql import parse
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from atlas_gql.auth.models import User
from atlas_gql.auth.sessions import revoke_sessions, start_session
from atlas_gql.auth.tokens import decode_access_token
from atlas_gql.config import Settings
from atlas_gql.graph.compiled import Answer, CompiledReads, Fallback, NotCompilable, Plan
from atlas_gql.graph.schema import build_schema
from tests.conftest import error_codes
from tests.graph.compiled.conftest import Both


class Recorder:
    """An asyncpg connection that records the statements sent through it."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver
        self.statements: list[str] = []

    async def fetchrow(self, query: str, *args: Any) -> Any:
        self.statements.append(query)
        return await self.driver.fetchrow(query, *args)


async def compiled_on(
    both: Both, connection: Any, query: str, variables: dict[str, Any] | None, viewer: str
) -> Answer | Fallback:
    token = both.token(viewer)
    claims = decode_access_token(token, settings=both.settings) if token else None
    return await both.reads.run(
        parse(query),
        text=query,
        operation_name=None,
        raw_variables=variables,
        connection=connection,
        claims=claims,
    )


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("mutation { logout }", "a mutation"),
        (
            'subscription { threadEvents(threadId: "VGhyZWFkOng") { __typename } }',
            "a subscription",
        ),
        ("{ __schema { queryType { name } } }", "Query.__schema is not compiled"),
        ("{ apiUsage(groupBy: DAY) { key } }", "Query.apiUsage is not compiled"),
        (
            "{ projects { nodes { usageThisMonth { totalTokens } } } }",
            "Project.usageThisMonth is not compiled",
        ),
    ],
)
async def test_what_the_compiler_does_not_build_falls_back(
    both: Both, query: str, reason: str
) -> None:
    recorder = Recorder(both.driver)
    answer = await compiled_on(both, recorder, query, None, "admin")
    assert answer == Fallback(reason)
    assert recorder.statements == []


async def test_anonymous_viewer_on_a_signed_in_field_falls_back_without_a_statement(
    both: Both,
) -> None:
    query = "{ projects { totalCount } }"
    expected = await both.resolver(query, viewer="anonymous")
    assert error_codes(expected) == ["UNAUTHENTICATED"]
    recorder = Recorder(both.driver)
    answer = await compiled_on(both, recorder, query, None, "anonymous")
    assert isinstance(answer, Fallback)
    assert "UNAUTHENTICATED" in answer.reason
    assert recorder.statements == []
    # Fields without that requirement are served to anonymous clients.
    assert await both.same("{ me { id } }", viewer="anonymous") == {"me": None}


@pytest.mark.parametrize(
    ("viewer", "query", "code"),
    [
        ("member", "{ users { totalCount } }", "FORBIDDEN"),
        ("member", "{ activityLogs { totalCount } }", "FORBIDDEN"),
        ("member", "{ errorLogs { totalCount } }", "FORBIDDEN"),
        ("viewer", "query ($p: ID) { activityLogs(filter: {projectId: $p}) { totalCount } }",
         "FORBIDDEN"),
        ("outsider", "query ($p: ID) { activityLogs(filter: {projectId: $p}) { totalCount } }",
         "NOT_FOUND"),
    ],
)  # fmt: skip
async def test_permission_and_existence_failures_fall_back(
    both: Both, viewer: str, query: str, code: str
) -> None:
    world = both.world
    variables = {
        "p": world.gid("Project", world.projects["alpha"].id),
        "t": world.gid("Thread", world.threads["alpha-1"].id),
        "m": world.gid("Thread", world.users["admin"].id),  # no such thread
    }
    variables = {name: value for name, value in variables.items() if f"${name}" in query}
    expected = await both.resolver(query, variables, viewer=viewer)
    assert error_codes(expected) == [code]
    answer = await both.compiled(query, variables, viewer=viewer)
    assert isinstance(answer, Fallback)


@pytest.mark.parametrize(
    ("viewer", "variable"), [("outsider", "t"), ("admin", "m")]
)  # fmt: skip
async def test_a_hidden_or_missing_thread_is_null_on_both_paths(
    both: Both, viewer: str, variable: str
) -> None:
    """Issue 12 part 6: single-object lookups answer null, never NOT_FOUND."""
    world = both.world
    thread_id = {
        "t": world.gid("Thread", world.threads["alpha-1"].id),
        "m": world.gid("Thread", world.users["admin"].id),  # no such thread
    }[variable]
    query = "query ($t: ID!) { thread(id: $t) { id } }"
    expected = await both.resolver(query, {"t": thread_id}, viewer=viewer)
    assert expected == {"data": {"thread": None}}
    answer = await both.compiled(query, {"t": thread_id}, viewer=viewer)
    assert isinstance(answer, Answer)
    assert json.loads(answer.data) == expected["data"]


LONG = "x" * 201


@pytest.mark.parametrize(
    ("query", "variables"),
    [
        ("{ projects(first: 101) { totalCount } }", None),
        ("query ($n: Int) { projects(first: $n) { totalCount } }", {"n": 101}),
        ("query ($n: Int) { projects(first: $n) { totalCount } }", {"n": -1}),
        ('{ projects(after: "not a cursor") { edges { cursor } } }', None),
        ("query ($c: String) { threads(after: $c) { totalCount } }", {"c": "WyJ4Il0"}),
        ('{ project(id: "garbage") { id } }', None),
        ("query ($id: ID!) { project(id: $id) { id } }", {"id": "VXNlcjo0MiI"}),
        ('{ node(id: "garbage") { id } }', None),
        ("query ($id: ID!) { node(id: $id) { id } }", {"id": "!!"}),
        ("query ($id: ID!) { thread(id: $id) { messages(first: 1, last: 1) { totalCount } } }",
         "thread"),
        ('{ activityLogs(filter: {from: "2026-01-01T00:00:00"}) { totalCount } }', None),
        ('{ activityLogs(filter: {from: "2026-01-02T00:00:00Z", to: "2026-01-01T00:00:00Z"}) '
         "{ totalCount } }", None),
        ("query ($s: String) { users(filter: {search: $s}) { totalCount } }", {"s": LONG}),
    ],
)  # fmt: skip
async def test_bad_input_falls_back_to_the_error_the_resolver_path_gives(
    both: Both, query: str, variables: Any
) -> None:
    if variables == "thread":
        variables = {"id": both.world.gid("Thread", both.world.threads["alpha-1"].id)}
    expected = await both.resolver(query, variables, viewer="admin")
    assert "BAD_USER_INPUT" in error_codes(expected), expected
    answer = await both.compiled(query, variables, viewer="admin")
    assert isinstance(answer, Fallback)


async def test_one_statement_per_request_whatever_the_page_sizes(both: Both) -> None:
    query = """query ($projects: Int, $members: Int, $threads: Int) {
      projects(first: $projects) { edges { node { name
        members(first: $members) { edges { node { user { email } } } }
        threads(first: $threads) { nodes { title messages(last: 5) { nodes { content } } } }
      } } }
    }"""
    recorder = Recorder(both.driver)
    for sizes in ({"projects": 1, "members": 1, "threads": 1}, {"projects": 50, "members": 100,
                                                                "threads": 100}):  # fmt: skip
        answer = await compiled_on(both, recorder, query, sizes, "admin")
        assert isinstance(answer, Answer)
    assert len(recorder.statements) == 2
    assert recorder.statements[0] == recorder.statements[1]


async def test_values_are_parameters_never_sql_text(both: Both) -> None:
    hostile = "'; DROP TABLE users; --"
    query = """query ($s: String, $a: String) {
      users(filter: {search: $s}) { totalCount }
      activityLogs(filter: {action: $a}) { totalCount }
    }"""
    data = await both.same(query, {"s": hostile, "a": hostile}, viewer="admin")
    assert data == {"users": {"totalCount": 0}, "activityLogs": {"totalCount": 0}}
    literal = f'{{ projects(filter: {{search: "{hostile}"}}) {{ totalCount }} }}'
    await both.same(literal, viewer="admin")
    recorder = Recorder(both.driver)
    await compiled_on(both, recorder, literal, None, "admin")
    assert "DROP" not in recorder.statements[0]


def plan_of(reads: CompiledReads, query: str, variables: dict[str, Any]) -> Plan | NotCompilable:
    return reads.plan(parse(query), text=query, operation_name=None, variables=variables)


def test_plans_are_cached_per_shape_of_the_variables() -> None:
    reads = CompiledReads(build_schema()._schema, max_plans=4)
    query = """query ($n: Int, $after: String, $full: Boolean!) {
      projects(first: $n, after: $after) { totalCount edges @include(if: $full) { cursor } }
    }"""
    first = plan_of(reads, query, {"n": 1, "after": None, "full": True})
    assert isinstance(first, Plan)
    # Same shape (other values): the same plan.
    assert plan_of(reads, query, {"n": 7, "after": None, "full": True}) is first
    # A cursor given, a directive flipped: other statements.
    with_cursor = plan_of(reads, query, {"n": 1, "after": "x", "full": True})
    without_edges = plan_of(reads, query, {"n": 1, "after": None, "full": False})
    assert isinstance(with_cursor, Plan)
    assert isinstance(without_edges, Plan)
    assert len({first.sql, with_cursor.sql, without_edges.sql}) == 3
    # The type an ID names picks node(id:)'s table.
    node = "query ($id: ID!) { node(id: $id) { id } }"
    user = plan_of(reads, node, {"id": "VXNlcjowMDAwMDAwMC0wMDAwLTAwMDAtMDAwMC0wMDAwMDAwMDAwMDA"})
    assert isinstance(user, Plan)
    assert "FROM users" in user.sql
    # Refusals are cached too, and the cache stays within its bound.
    assert isinstance(plan_of(reads, node, {"id": "garbage"}), NotCompilable)
    assert len(reads._plans) == 4
    assert plan_of(reads, query, {"n": 1, "after": None, "full": True}) is not first


async def test_an_ended_session_or_inactive_user_falls_back(
    db: AsyncSession, connection: AsyncConnection, settings: Settings
) -> None:
    """The session check is folded into the statement: a revoked session, or a deactivated
    user, makes it hand the request back (the resolver path answers UNAUTHENTICATED)."""
    reads = CompiledReads(build_schema()._schema)
    user = User(email="compiled-session@example.com", password_hash="x")
    db.add(user)
    await db.flush()
    first = await start_session(db=db, settings=settings, user_id=user.id)
    second = await start_session(db=db, settings=settings, user_id=user.id)
    await db.commit()
    driver = (await connection.get_raw_connection()).driver_connection
    assert driver is not None
    query = "{ me { email } }"

    async def run(token: str) -> Answer | Fallback:
        claims = decode_access_token(token, settings=settings)
        return await reads.run(
            parse(query), text=query, operation_name=None, raw_variables=None,
            connection=driver, claims=claims,
        )  # fmt: skip

    answer = await run(first.access_token)
    assert isinstance(answer, Answer)
    assert json.loads(answer.data) == {"me": {"email": user.email}}
    await revoke_sessions(db=db, session_ids=[first.session_id], reason="test")
    await db.commit()
    assert isinstance(await run(first.access_token), Fallback)
    assert isinstance(await run(second.access_token), Answer)
    await db.execute(sa.update(User).where(User.id == user.id).values(is_active=False))  # type: ignore[arg-type]
    await db.commit()
    answer = await run(second.access_token)
    assert isinstance(answer, Fallback)
    assert "session ended" in answer.reason
