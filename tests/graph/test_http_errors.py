"""GraphQL over HTTP details: every 4xx has a JSON body with `errors[].extensions.code` (unknown
operation names, batches, bad JSON, wrong methods and content types, unknown paths, refused
CORS preflights), and a document of several operations without `operationName` is refused."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atlas_gql.errors import ErrorCode

# Every code an answer may carry: the kernel's list plus the pre-execution ones.
DOCUMENTED_CODES = {code.value for code in ErrorCode} | {
    "GRAPHQL_VALIDATION_FAILED",
    "QUERY_TOO_COMPLEX",
}
JSON_TYPES = ("application/json", "application/graphql-response+json")
MODERN = "application/graphql-response+json"


def assert_json_error(response: httpx.Response, status: int | None = None) -> list[str]:
    """A 4xx answer with a GraphQL-shaped JSON body; its codes."""
    if status is not None:
        assert response.status_code == status, response.text
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"].split(";")[0] in JSON_TYPES, response.headers
    body = response.json()
    assert isinstance(body, dict), body
    assert body["errors"], body
    codes = [error["extensions"]["code"] for error in body["errors"]]
    assert all(isinstance(error["message"], str) for error in body["errors"])
    assert set(codes) <= DOCUMENTED_CODES, codes
    return codes


@pytest.mark.parametrize("accept", ["application/json", MODERN])
async def test_several_operations_without_an_operation_name_are_refused(
    client: httpx.AsyncClient, accept: str
) -> None:
    query = "query A { __typename } query B { me { id } }"
    response = await client.post("/graphql", json={"query": query}, headers={"Accept": accept})
    assert assert_json_error(response, 400) == ["BAD_REQUEST"]
    assert "operationName" in response.json()["errors"][0]["message"]
    named = await client.post(
        "/graphql", json={"query": query, "operationName": "A"}, headers={"Accept": accept}
    )
    assert named.status_code == 200
    assert named.json()["data"] == {"__typename": "Query"}


async def test_several_operations_over_get_are_refused(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/graphql", params={"query": "query A { __typename } query B { __typename }"}
    )
    assert assert_json_error(response, 400) == ["BAD_REQUEST"]


async def test_one_anonymous_operation_with_fragments_still_runs(
    client: httpx.AsyncClient,
) -> None:
    query = "fragment F on Query { __typename } { ...F }"
    response = await client.post("/graphql", json={"query": query})
    assert response.json() == {"data": {"__typename": "Query"}}


@pytest.mark.parametrize("accept", ["application/json", MODERN])
async def test_an_unknown_operation_name_is_400_json(
    client: httpx.AsyncClient, accept: str
) -> None:
    response = await client.post(
        "/graphql",
        json={"query": "query A { __typename }", "operationName": "B"},
        headers={"Accept": accept},
    )
    assert assert_json_error(response, 400) == ["BAD_REQUEST"]


@pytest.mark.parametrize(
    "body", ['[{"query": "{ __typename }"}]', '[{"query": "{ a }"}, {"query": "{ b }"}]', "[]"]
)
async def test_a_batch_is_400_json(client: httpx.AsyncClient, body: str) -> None:
    response = await client.post(
        "/graphql", content=body, headers={"Content-Type": "application/json"}
    )
    assert assert_json_error(response, 400) == ["BAD_REQUEST"]


@pytest.mark.parametrize("body", ["{bad", '{"query": ', "\xff\xfe", "", "{'query': 1}"])
async def test_bad_json_is_400_json(client: httpx.AsyncClient, body: str) -> None:
    response = await client.post(
        "/graphql", content=body.encode("latin-1"), headers={"Content-Type": "application/json"}
    )
    assert assert_json_error(response, 400) == ["BAD_REQUEST"]


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
async def test_a_wrong_method_is_405_json_with_allow(
    client: httpx.AsyncClient, method: str
) -> None:
    response = await client.request(method, "/graphql", json={"query": "{ __typename }"})
    assert assert_json_error(response, 405) == ["BAD_REQUEST"]
    assert response.headers["allow"] == "GET, POST"


async def test_head_on_the_endpoint_is_405_json(client: httpx.AsyncClient) -> None:
    response = await client.head("/graphql")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"


async def test_a_post_to_healthz_is_405_json(client: httpx.AsyncClient) -> None:
    assert_json_error(await client.post("/healthz"), 405)


async def test_an_unknown_path_is_404_json(client: httpx.AsyncClient) -> None:
    response = await client.get("/graphq1")
    assert assert_json_error(response, 404) == ["NOT_FOUND"]
    assert "/graphql" in response.json()["errors"][0]["message"]


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/xml", "application/x-www-form-urlencoded", "application/graphql"],
)
async def test_a_wrong_content_type_is_400_json(
    client: httpx.AsyncClient, content_type: str
) -> None:
    response = await client.post(
        "/graphql", content="{ __typename }", headers={"Content-Type": content_type}
    )
    assert assert_json_error(response, 400) == ["BAD_REQUEST"]


async def test_a_refused_cors_preflight_is_json(client: httpx.AsyncClient) -> None:
    response = await client.options(
        "/graphql",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert assert_json_error(response, 400) == ["BAD_REQUEST"]
    assert "origin" in response.json()["errors"][0]["message"]
    allowed = await client.options(
        "/graphql",
        headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"},
    )
    assert allowed.status_code == 200


async def test_a_body_over_the_limit_is_413_json(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/graphql",
        content=b'{"query": "' + b" " * (2 * 1024 * 1024) + b'{ __typename }"}',
        headers={"Content-Type": "application/json"},
    )
    assert assert_json_error(response, 413) == ["PAYLOAD_TOO_LARGE"]


# -- generated bad bodies ---------------------------------------------------------------------

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
REQUEST_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "query": JSON_VALUES | st.sampled_from(["{ __typename }", "query A { a } query B { b }"]),
        "variables": JSON_VALUES,
        "operationName": JSON_VALUES,
        "extensions": JSON_VALUES,
    },
)
BAD_BODIES = (
    st.binary(max_size=200)
    | st.text(max_size=200).map(str.encode)
    | JSON_VALUES.map(lambda value: json.dumps(value).encode())
    | REQUEST_FIELDS.map(lambda value: json.dumps(value).encode())
    | REQUEST_FIELDS.map(lambda value: json.dumps(value).encode()[:-1])
)
CONTENT_TYPES = st.sampled_from(
    ["application/json", "application/json; charset=utf-8", "text/plain", "", "application/*"]
)
ACCEPTS = st.sampled_from(["application/json", MODERN, "*/*", "", "text/event-stream"])


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=BAD_BODIES, content_type=CONTENT_TYPES, accept=ACCEPTS)
async def test_no_body_a_client_sends_gets_a_500_or_a_4xx_without_json(
    client: httpx.AsyncClient, body: bytes, content_type: str, accept: str
) -> None:
    headers = {"Content-Type": content_type, "Accept": accept}
    response = await client.post("/graphql", content=body, headers=headers)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert_json_error(response)
    elif response.headers["content-type"].startswith("text/event-stream"):
        assert "INTERNAL_SERVER_ERROR" not in response.text, response.text
    else:
        payload: Any = response.json()
        codes = [error["extensions"]["code"] for error in payload.get("errors", [])]
        assert "INTERNAL_SERVER_ERROR" not in codes, payload


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    params=st.dictionaries(
        st.sampled_from(["query", "variables", "operationName", "extensions", "x"]),
        st.text(max_size=60),
    )
)
async def test_no_query_string_gets_a_500_or_a_4xx_without_json(
    client: httpx.AsyncClient, params: dict[str, str]
) -> None:
    response = await client.get("/graphql", params=params, headers={"Accept": MODERN})
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert_json_error(response)
