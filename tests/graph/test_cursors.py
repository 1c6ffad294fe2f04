"""Issue 10 part 6: a malformed cursor of any shape is BAD_USER_INPUT naming its argument, on
every connection and on both read paths (compiled and resolvers)."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import error_codes


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def packed(value: Any) -> str:
    return b64(json.dumps(value).encode())


UUID = "6a2c6a51-9f8c-4d9e-8f7a-2b1f6c1d0e11"

# Cursors that are not ours, by kind.
SHAPED = [
    "%%%not-base64%%%",
    "=" * 7,
    "a",
    "é",
    "x" * 10_000,
    b64(b"\xff\xfe\xfd"),  # not UTF-8
    b64(b"not json"),
    packed(None),
    packed([]),
    packed(["2025-01-01T00:00:00+00:00"]),
    packed(["2025-01-01T00:00:00+00:00", UUID, "extra"]),
    packed({"a": 1, "b": 2}),  # two keys unpack, then fail as values
    packed(["2025-01-01T00:00:00+00:00", 12345]),
    packed(["2025-01-01T00:00:00+00:00", "not-a-uuid"]),
    packed(["2025-01-01T00:00:00", UUID]),  # no offset: which instant?
    packed(["not a date", UUID]),
    packed([1e308, UUID]),
    packed([None, UUID]),
    packed([["nested"], UUID]),
    b64(b'["1e999", "' + UUID.encode() + b'"]'),
    b64(b"[" * 400 + b"]" * 400),
    b64(('["2025-01-01T00:00:00+00:00\\u0000", "' + UUID + '"]').encode()),
    b64(('["\\ud800", "' + UUID + '"]').encode()),
    "UHJvamVjdDox",  # a global id, not a cursor
]

# Well-formed positions at the ends of time: a page, or BAD_USER_INPUT when it lies outside
# the range the database stores; never a 500.
EXTREME = [
    packed(["9999-12-31T23:59:59-14:00", UUID]),
    packed(["0001-01-01T00:00:00+14:00", UUID]),
    packed(["2025-01-01T00:00:00+00:00", "00000000-0000-0000-0000-000000000000"]),
]

CONNECTIONS = [
    "query ($c: String) { users(after: $c) { totalCount } }",
    "query ($c: String) { projects(after: $c) { edges { cursor } } }",
    "query ($c: String) { threads(after: $c) { totalCount } }",
    "query ($c: String) { assistants(after: $c) { totalCount } }",
    "query ($c: String) { activityLogs(after: $c) { totalCount } }",
    "query ($c: String) { errorLogs(after: $c) { totalCount } }",
    "query ($c: String) { projects(first: 1) { edges { node { members(after: $c) "
    "{ totalCount } } } } }",
    "query ($c: String) { threads(first: 1) { edges { node { messages(before: $c, last: 2) "
    "{ totalCount } } } } }",
]


async def ask(client: httpx.AsyncClient, token: str, document: str, cursor: str | None) -> Any:
    response = await client.post(
        "/graphql",
        content=json.dumps({"query": document, "variables": {"c": cursor}}),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 200, response.text
    return response.json()


def refused_cursor(body: dict[str, Any]) -> None:
    codes = error_codes(body)
    assert codes, body
    assert set(codes) == {"BAD_USER_INPUT"}, body
    # A NUL or a lone surrogate is refused by the input layer first, naming the variable.
    fields = ("after", "before", "$c")
    assert all(error["extensions"]["field"] in fields for error in body["errors"]), body


async def test_every_shape_of_a_bad_cursor_is_bad_user_input_on_every_connection(
    client: httpx.AsyncClient, sign_in: Any
) -> None:
    token = await sign_in("admin@example.com")
    for document in CONNECTIONS:
        for cursor in SHAPED:
            body = await ask(client, token, document, cursor)
            assert body.get("errors"), (document, cursor, body)
            refused_cursor(body)
        for cursor in EXTREME:
            body = await ask(client, token, document, cursor)
            if body.get("errors"):
                refused_cursor(body)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    cursor=st.one_of(
        st.text(max_size=60),
        st.binary(max_size=80).map(b64),
        st.lists(
            st.one_of(
                st.none(),
                st.booleans(),
                st.integers(),
                st.floats(allow_nan=False),
                st.text(max_size=30),
                st.datetimes().map(lambda moment: moment.isoformat()),
            ),
            max_size=3,
        ).map(packed),
    )
)
async def test_generated_cursors_never_reach_an_internal_error(
    client: httpx.AsyncClient, sign_in: Any, cursor: str
) -> None:
    token = await sign_in("admin@example.com")
    for document in CONNECTIONS[:2]:
        body = await ask(client, token, document, cursor)
        if body.get("errors"):
            refused_cursor(body)


async def test_a_valid_cursor_still_pages(client: httpx.AsyncClient, sign_in: Any) -> None:
    token = await sign_in("admin@example.com")
    first = await ask(
        client,
        token,
        "query ($c: String) { users(first: 1, after: $c) { edges { cursor } } }",
        None,
    )
    cursor = first["data"]["users"]["edges"][0]["cursor"]
    body = await ask(
        client,
        token,
        "query ($c: String) { users(first: 1, after: $c) { edges { cursor } } }",
        cursor,
    )
    assert "errors" not in body
    assert body["data"]["users"]["edges"][0]["cursor"] != cursor
