"""Issue 10 part 6: the one input-sanitising layer (graph/limits/inputs.py). A NUL character
or a lone surrogate anywhere in a string a client sends (a variable, a literal, a JSON value,
an object key) is BAD_USER_INPUT naming where it is, before any resolver or limiter runs, on
every transport; nothing is written."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncSession

from atlas_gql.auth.models import User
from atlas_gql.logs.models import ActivityLog, ErrorLog
from tests.conftest import GraphQLClient, error_codes
from tests.graph.test_websocket_limits import acked_socket, first_answer
from tests.live import LiveServer

FUZZ = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

# What PostgreSQL cannot store in text: NUL, and every lone UTF-16 surrogate (JSON carries
# them as `\ud800`-style escapes).
unstorable = st.one_of(st.just("\x00"), st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF))
plain = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), min_size=0, max_size=12
)


@st.composite
def tainted(draw: st.DrawFn) -> str:
    """Ordinary text with one unstorable character somewhere in it."""
    return draw(plain) + draw(unstorable) + draw(plain)


def post_raw(client: httpx.AsyncClient, body: dict[str, Any], token: str | None = None) -> Any:
    # json.dumps writes a lone surrogate as its `\udXXX` escape, as a browser would.
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return client.post("/graphql", content=json.dumps(body), headers=headers)


async def counts(db: AsyncSession) -> tuple[int, ...]:
    """Rows that a refused operation must not have written."""
    tables = (User, ActivityLog, ErrorLog)
    return tuple(
        [(await db.execute(sa.select(sa.func.count()).select_from(t))).scalar_one() for t in tables]
    )


def refused_at(body: dict[str, Any], field: str) -> None:
    assert body.get("data") is None, body
    assert error_codes(body) == ["BAD_USER_INPUT"], body
    error = body["errors"][0]
    assert error["extensions"]["field"] == field, error
    assert f"`{field}`" in error["message"]


# Operations with a string variable at several depths: (document, variables builder, field).
VARIABLE_CASES: list[tuple[str, Any, str, bool]] = [
    (
        "mutation ($input: LoginInput!) { login(input: $input) { accessToken } }",
        lambda s: {"input": {"email": s, "password": "whatever-password"}},
        "$input.email",
        False,
    ),
    (
        "mutation ($input: RegisterInput!) { register(input: $input) { accessToken } }",
        lambda s: {"input": {"email": "new@example.com", "password": "password1", "name": s}},
        "$input.name",
        False,
    ),
    (
        "mutation ($input: CreateProjectInput!) { createProject(input: $input) { id } }",
        lambda s: {"input": {"name": "ok", "description": s}},
        "$input.description",
        True,
    ),
    (
        'mutation ($p: ID!, $v: JSON!) { setProjectSetting(projectId: $p, key: "k", value: $v)'
        " { key } }",
        lambda s: {"p": "UHJvamVjdDox", "v": {"a": [1, {"b": s}]}},
        "$v.a[1].b",
        True,
    ),
    (
        "query ($s: String) { users(filter: {search: $s}) { totalCount } }",
        lambda s: {"s": s},
        "$s",
        True,
    ),
    (
        "query ($id: ID!) { node(id: $id) { id } }",
        lambda s: {"id": s},
        "$id",
        True,
    ),
]


@FUZZ
@given(text=tainted(), case=st.sampled_from(VARIABLE_CASES))
async def test_an_unstorable_string_in_a_variable_is_refused_naming_it(
    client: httpx.AsyncClient,
    db: AsyncSession,
    sign_in: Any,
    text: str,
    case: tuple[str, Any, str, bool],
) -> None:
    document, variables, field, signed_in = case
    token = await sign_in("admin@example.com") if signed_in else None
    before = await counts(db)
    response = await post_raw(client, {"query": document, "variables": variables(text)}, token)
    assert response.status_code == 200, response.text
    refused_at(response.json(), field)
    assert await counts(db) == before


@FUZZ
@given(key=tainted())
async def test_an_unstorable_object_key_of_a_json_value_is_refused(
    client: httpx.AsyncClient, sign_in: Any, key: str
) -> None:
    token = await sign_in("admin@example.com")
    document = (
        'mutation ($v: JSON!) { setProjectSetting(projectId: "x", key: "k", value: $v) { key } }'
    )
    response = await post_raw(client, {"query": document, "variables": {"v": {key: 1}}}, token)
    body = response.json()
    assert error_codes(body) == ["BAD_USER_INPUT"], body
    assert body["errors"][0]["extensions"]["field"].endswith("(a key)")


LITERAL_CASES = [
    (
        'mutation { login(input: {email: "%s", password: "xxxxxxxx"}) { accessToken } }',
        "input.email",
    ),
    ('mutation { createProject(input: {name: "%s"}) { id } }', "input.name"),
    (
        'mutation { setProjectSetting(projectId: "x", key: "k", value: {a: ["%s"]}) { key } }',
        "value.a[0]",
    ),
    ('query ($s: String = "%s") { users(filter: {search: $s}) { totalCount } }', "$s"),
    ('{ users(filter: {search: "%s"}) { totalCount } }', "filter.search"),
]


@FUZZ
@given(
    before=plain.map(lambda t: json.dumps(t)[1:-1]),
    escape=st.sampled_from(["\\u0000", "\\u{0}", "\\u{00}"]),
    case=st.sampled_from(LITERAL_CASES),
)
async def test_a_nul_in_a_literal_is_refused_naming_its_argument(
    client: httpx.AsyncClient,
    db: AsyncSession,
    sign_in: Any,
    before: str,
    escape: str,
    case: tuple[str, str],
) -> None:
    template, field = case
    token = await sign_in("admin@example.com")
    rows = await counts(db)
    response = await post_raw(client, {"query": template % (before + escape)}, token)
    body = response.json()
    refused_at(body, field)
    assert await counts(db) == rows


async def test_login_with_a_nul_email_is_refused_before_the_limiter_counts_it(
    gql: GraphQLClient, db: AsyncSession
) -> None:
    failures = sa.select(sa.func.count()).where(ActivityLog.action.like("auth.login%"))  # type: ignore[attr-defined]
    before = (await db.execute(failures)).scalar_one()
    for _ in range(3):
        body = await gql(
            'mutation ($e: String!) { login(input: {email: $e, password: "xxxxxxxxx"}) '
            "{ accessToken } }",
            {"e": "admin@example.com\x00"},
        )
        refused_at(body, "$e")
    assert (await db.execute(failures)).scalar_one() == before


async def test_a_nul_in_a_compiled_query_variable_is_refused(
    client: httpx.AsyncClient, sign_in: Any, app: Any
) -> None:
    """The compiled read path leaves it to the guard's refusal (counted as refused)."""
    token = await sign_in("admin@example.com")
    stats = app.state.atlas["runtime"].compiled_stats
    document = "query ($s: String) { users(filter: {search: $s}) { totalCount } }"
    compiled, refused = stats.compiled, stats.fallback_reasons["refused"]
    response = await post_raw(client, {"query": document, "variables": {"s": "zzz-nobody"}}, token)
    assert response.json() == {"data": {"users": {"totalCount": 0}}}
    assert stats.compiled == compiled + 1
    for text in ("a\x00", "\ud800b", "\udc00"):
        response = await post_raw(client, {"query": document, "variables": {"s": text}}, token)
        refused_at(response.json(), "$s")
    assert stats.fallback_reasons["refused"] == refused + 3


async def test_over_the_websocket_a_nul_in_a_subscription_variable_is_refused(
    live_server: LiveServer,
) -> None:
    ws = await acked_socket(live_server, "user@example.com")
    try:
        for operation_id, (query, variables, field) in enumerate(
            [
                (
                    "subscription ($t: ID!) { threadEvents(threadId: $t) { sequence } }",
                    {"t": "VGhyZWFk\ud800"},
                    "$t",
                ),
                (
                    'subscription { threadEvents(threadId: "a\\u0000") { sequence } }',
                    None,
                    "threadId",
                ),
                (
                    "mutation ($i: CreateProjectInput!) { createProject(input: $i) { id } }",
                    {"i": {"name": "x\x00"}},
                    "$i.name",
                ),
            ]
        ):
            message = {
                "id": str(operation_id),
                "type": "subscribe",
                "payload": {"query": query, "variables": variables},
            }
            await ws.send(json.dumps(message))
            answer = await first_answer(ws, str(operation_id))
            assert answer["type"] == "error", answer
            [error] = answer["payload"]
            assert error["extensions"] == {"code": "BAD_USER_INPUT", "field": field}, error
    finally:
        await ws.close()


@pytest.mark.parametrize(
    "variables",
    [{"ok": "fine", "x": "\x00"}, {"list": ["a", "b", "\udfff"]}, {"\x00": 1}],
)
async def test_unused_variables_are_checked_too(
    client: httpx.AsyncClient, variables: dict[str, Any]
) -> None:
    response = await post_raw(client, {"query": "{ __typename }", "variables": variables})
    assert error_codes(response.json()) == ["BAD_USER_INPUT"]


async def test_valid_surrogate_pairs_and_other_controls_pass(
    client: httpx.AsyncClient, sign_in: Any
) -> None:
    token = await sign_in("admin@example.com")
    document = "query ($s: String) { users(filter: {search: $s}) { totalCount } }"
    for text in ("😀", "\ud83d\ude00", "tab\tbell\x07", "é"):
        response = await post_raw(client, {"query": document, "variables": {"s": text}}, token)
        assert "errors" not in response.json(), (text, response.json())


def defaults_that_are_not_null() -> set[str]:
    """Arguments and input fields whose default is something other than null."""
    from graphql import GraphQLInputObjectType, GraphQLObjectType, Undefined

    from atlas_gql.graph.schema import build_schema

    found = set()
    for type_ in build_schema()._schema.type_map.values():
        if type_.name.startswith("__"):
            continue
        if isinstance(type_, GraphQLInputObjectType):
            for name, field in type_.fields.items():
                if field.default_value not in (Undefined, None):
                    found.add(f"{type_.name}.{name}")
        elif isinstance(type_, GraphQLObjectType):
            for field_name, object_field in type_.fields.items():
                for name, argument in object_field.args.items():
                    if argument.default_value not in (Undefined, None):
                        found.add(f"{type_.name}.{field_name}({name})")
    return found


async def test_explicit_null_for_an_argument_with_a_default_means_the_default(
    client: httpx.AsyncClient, sign_in: Any
) -> None:
    """docs/security.md ("Inputs"): a nullable argument's null is its default; a non-null one
    with a default refuses null as any non-null input does. Every such argument is here."""
    assert defaults_that_are_not_null() == {
        "Mutation.logout(allSessions)",
        "Query.apiKeys(includeRevoked)",
        "Query.exportThread(format)",  # ExportFormat! = JSON: null refused, as fileIds'
        "SendMessageInput.fileIds",
    }
    answers = []
    for argument in ("(includeRevoked: null)", "", "(includeRevoked: false)"):
        response = await post_raw(
            client,
            {"query": f"{{ apiKeys{argument} {{ totalCount }} }}"},
            await sign_in("user@example.com"),
        )
        answers.append(response.json())
    assert answers[0] == answers[1] == answers[2], answers
    assert "errors" not in answers[0], answers
    token = await sign_in("user@example.com")
    for literal in ("allSessions: null", ""):
        document = f"mutation {{ logout({literal}) }}" if literal else "mutation { logout }"
        response = await post_raw(client, {"query": document}, await sign_in("user@example.com"))
        assert response.json() == {"data": {"logout": True}}
    response = await post_raw(
        client,
        {
            "query": "mutation ($a: Boolean) { logout(allSessions: $a) }",
            "variables": {"a": None},
        },
        token,
    )
    assert response.json() == {"data": {"logout": True}}
    for body in (
        {
            "query": 'mutation { sendMessage(input: {threadId: "x", content: "y", fileIds: null}) '
            "{ userMessage { id } } }"
        },
        {
            "query": "mutation ($i: SendMessageInput!) { sendMessage(input: $i) "
            "{ userMessage { id } } }",
            "variables": {"i": {"threadId": "x", "content": "y", "fileIds": None}},
        },
    ):
        response = await post_raw(client, body, await sign_in("user@example.com"))
        codes = error_codes(response.json())
        assert codes in (["GRAPHQL_VALIDATION_FAILED"], ["BAD_USER_INPUT"]), response.json()
