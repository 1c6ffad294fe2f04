"""Malformed requests get a 4xx JSON answer with a code, never a 500; production hides
GraphiQL and field suggestions."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from atlas_gql.app import create_app
from atlas_gql.graph.limits.body import MAX_JSON_DEPTH, MAX_JSON_VALUES
from tests.conftest import make_settings


def assert_refused(response: httpx.Response, status: int, code: str = "BAD_REQUEST") -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["errors"][0]
    assert error["extensions"]["code"] == code
    message: str = error["message"]
    return message


@pytest.mark.parametrize(
    "body", ['"{ __typename }"', "5", "null", "true", "[]", '[{"query": "{ a }"}]']
)
async def test_a_body_that_is_not_an_object_is_400(client: httpx.AsyncClient, body: str) -> None:
    response = await client.post(
        "/graphql", content=body, headers={"Content-Type": "application/json"}
    )
    assert_refused(response, 400)


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 5_000, 200_000])
async def test_json_nested_too_deeply_is_400(client: httpx.AsyncClient, depth: int) -> None:
    nested = "[" * depth + "]" * depth
    body = '{"query": "query($v: [Int]) { __typename }", "variables": {"v": ' + nested + "}}"
    response = await client.post(
        "/graphql", content=body, headers={"Content-Type": "application/json"}
    )
    message = assert_refused(response, 400)
    assert "JSON" in message


async def test_json_with_too_many_values_is_400(client: httpx.AsyncClient) -> None:
    variables = {"ids": ["x"] * (MAX_JSON_VALUES + 1)}
    response = await client.post(
        "/graphql", json={"query": "{ __typename }", "variables": variables}
    )
    assert "values" in assert_refused(response, 400)


async def test_json_within_the_limits_is_accepted(client: httpx.AsyncClient) -> None:
    nested: Any = "x"
    for _ in range(MAX_JSON_DEPTH - 3):
        nested = [nested]
    response = await client.post(
        "/graphql", json={"query": "{ __typename }", "variables": {"unused": nested}}
    )
    assert response.json() == {"data": {"__typename": "Query"}}


@pytest.mark.parametrize(
    "payload",
    [
        {"query": 5},
        {"query": "{ __typename }", "variables": "x"},
        {"query": "{ __typename }", "variables": [1]},
        {"query": "{ __typename }", "extensions": 1},
        {"query": "query A { __typename }", "operationName": "B"},
        {"query": ""},
        {},
    ],
)
async def test_malformed_request_fields_are_400(
    client: httpx.AsyncClient, payload: dict[str, Any]
) -> None:
    assert_refused(await client.post("/graphql", json=payload), 400)


@pytest.mark.parametrize("name", [{"x": 1}, 5, ["A"]])
async def test_an_operation_name_that_is_not_a_string_is_400(
    client: httpx.AsyncClient, name: Any
) -> None:
    response = await client.post(
        "/graphql", json={"query": "query A { __typename }", "operationName": name}
    )
    assert "Unknown operation" in assert_refused(response, 400)


@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_a_subscription_asking_for_json_is_406(
    client: httpx.AsyncClient, method: str
) -> None:
    query = 'subscription { threadEvents(threadId: "x") { __typename } }'
    if method == "POST":
        response = await client.post("/graphql", json={"query": query})
    else:
        response = await client.get("/graphql", params={"query": query})
    message = assert_refused(response, 406)
    assert "WebSocket" in message
    assert "text/event-stream" in message


async def test_a_mutation_over_get_is_400_json(client: httpx.AsyncClient) -> None:
    response = await client.get("/graphql", params={"query": "mutation { __typename }"})
    assert "mutations are not allowed" in assert_refused(response, 400)


async def test_an_unsupported_content_type_is_400_json(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/graphql", content="{ __typename }", headers={"Content-Type": "text/plain"}
    )
    assert_refused(response, 400)


@pytest.fixture
async def production(database_target: Any) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(
        database_target, atlas_env="production", atlas_seed_password="a-production-seed-pw"
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield client


async def test_graphiql_is_off_in_production(production: httpx.AsyncClient) -> None:
    page = await production.get("/graphql", headers={"Accept": "text/html"})
    assert "GraphiQL is off" in assert_refused(page, 400)
    asset = await production.get("/graphql/static/graphiql-3.8.3/graphiql.min.js")
    assert asset.status_code in {404, 405}
    api = await production.get("/graphql", params={"query": "{ __typename }"})
    assert api.json() == {"data": {"__typename": "Query"}}


async def test_graphiql_can_be_turned_on_in_production(database_target: Any) -> None:
    settings = make_settings(
        database_target,
        atlas_env="production",
        atlas_seed_password="a-production-seed-pw",
        atlas_graphiql=True,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            page = await client.get("/graphql", headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert "graphiql" in page.text.lower()


def suggestion_documents() -> list[tuple[str, dict[str, Any] | None]]:
    return [
        ("{ mee { id } }", None),
        ('{ node(id: "x") { ... on User { emial } } }', None),
        ('mutation { createProject(input: { nam: "x" }) { id } }', None),
        ('mutation { addProjectMember(projectId: "p", userId: "u", role: OWNR) { id } }', None),
        (
            'mutation($role: ProjectRole!) { addProjectMember(projectId: "p", userId: "u", '
            "role: $role) { id } }",
            {"role": "OWNR"},
        ),
        (
            "mutation($input: CreateProjectInput!) { createProject(input: $input) { id } }",
            {"input": {"nam": "x"}},
        ),
    ]


@pytest.mark.parametrize(("document", "variables"), suggestion_documents())
async def test_suggestions_are_hidden_when_introspection_is_off(
    production: httpx.AsyncClient, document: str, variables: dict[str, Any] | None
) -> None:
    response = await production.post(
        "/graphql", json={"query": document, "variables": variables or {}}
    )
    errors = response.json()["errors"]
    assert errors
    assert "Did you mean" not in json.dumps(errors)


@pytest.mark.parametrize(("document", "variables"), suggestion_documents())
async def test_suggestions_help_in_development(
    client: httpx.AsyncClient, document: str, variables: dict[str, Any] | None
) -> None:
    response = await client.post("/graphql", json={"query": document, "variables": variables or {}})
    assert "Did you mean" in json.dumps(response.json()["errors"])


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        ({"query": "query Q { __typename } subscription S { threadEvents(threadId: \"x\") "
          "{ __typename } }", "operationName": "S"}, {}),
        ({"query": "subscription ($t: ID!) { threadEvents(threadId: $t) { __typename } }",
          "variables": {"t": "x"}}, {"Accept": "application/graphql-response+json"}),
        ({"query": "subscription { ...F } fragment F on Subscription "
          "{ threadEvents(threadId: \"x\") { __typename } }"}, {"Accept": "application/json"}),
        ({"query": "subscription { threadEvents(threadId: \"x\") { __typename } }"},
         {"Accept": "*/*"}),
    ],
)  # fmt: skip
async def test_every_shape_of_a_subscription_asking_for_json_is_406(
    client: httpx.AsyncClient, sign_in: Any, body: dict[str, Any], headers: dict[str, str]
) -> None:
    """Variants: chosen by operationName, with variables, through a fragment, whatever JSON
    media type is accepted, signed in (where the compiled read path looks first)."""
    for token in (None, await sign_in("user@example.com")):
        auth = {"Authorization": f"Bearer {token}"} if token else {}
        response = await client.post("/graphql", json=body, headers={**headers, **auth})
        assert "text/event-stream" in assert_refused(response, 406)


@pytest.mark.parametrize(
    "raw",
    [b"[]", b'[{"query": "{ __typename }"}]', b'"{ __typename }"', b"5", b"null", b"true",
     b'{"query": "{ __typename }", "variables": ' + b'{"a":' * 40 + b"1" + b"}" * 41],
)  # fmt: skip
async def test_a_body_that_is_not_an_object_or_too_deep_is_400_json(
    client: httpx.AsyncClient, raw: bytes
) -> None:
    response = await client.post(
        "/graphql", content=raw, headers={"Content-Type": "application/json"}
    )
    assert_refused(response, 400)
