"""The hardened endpoint: health, readiness, GraphiQL, GraphQL over HTTP, limits, masking."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from atlas_gql.app import create_app
from atlas_gql.auth import loaders
from atlas_gql.runtime import Runtime
from tests.conftest import GraphQLClient, error_codes, make_settings


async def test_healthz(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


async def test_readyz_when_database_answers(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "database": "ok"}


async def test_readyz_503_when_database_unreachable(database_target: Any) -> None:
    unreachable = database_target.url.set(host="127.0.0.1", port=1)
    settings = make_settings(database_target, database_url=unreachable.render_as_string(False))
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["database"] == "unreachable"


async def test_graphiql_served_offline_to_browsers(client: httpx.AsyncClient) -> None:
    response = await client.get("/graphql", headers={"Accept": "text/html"})
    assert response.status_code == 200
    assert "graphiql" in response.text.lower()
    assert "unpkg.com" not in response.text
    asset = await client.get("/graphql/static/graphiql-3.8.3/graphiql.min.js")
    assert asset.status_code == 200


async def test_typename_over_post_and_get(client: httpx.AsyncClient) -> None:
    post = await client.post("/graphql", json={"query": "{ __typename }"})
    assert post.json() == {"data": {"__typename": "Query"}}
    get = await client.get("/graphql", params={"query": "{ __typename }"})
    assert get.json() == {"data": {"__typename": "Query"}}


async def test_mutation_over_get_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.get("/graphql", params={"query": "mutation { __typename }"})
    assert response.status_code in {400, 405}
    assert "data" not in response.text or "__typename" not in response.text


async def test_graphql_response_json_negotiation(client: httpx.AsyncClient) -> None:
    accept = {"Accept": "application/graphql-response+json"}
    ok = await client.post("/graphql", json={"query": "{ __typename }"}, headers=accept)
    assert ok.status_code == 200
    assert ok.headers["content-type"].startswith("application/graphql-response+json")
    invalid = await client.post("/graphql", json={"query": "{ nope }"}, headers=accept)
    assert invalid.status_code == 400
    body = invalid.json()
    assert "data" not in body
    assert body["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    legacy = await client.post("/graphql", json={"query": "{ nope }"})
    assert legacy.status_code == 200
    assert legacy.headers["content-type"].startswith("application/json")


async def test_unparseable_json_body_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/graphql", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400


async def test_body_size_limit(client: httpx.AsyncClient) -> None:
    padding = "x" * (1024 * 1024 + 10)
    response = await client.post("/graphql", json={"query": "{ __typename }", "pad": padding})
    assert response.status_code == 413
    assert response.json()["errors"][0]["extensions"]["code"] == "PAYLOAD_TOO_LARGE"


async def test_introspection_off_in_production(database_target: Any) -> None:
    settings = make_settings(
        database_target,
        atlas_env="production",
        atlas_seed_password="a-production-seed-password",
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.post(
                "/graphql", json={"query": "{ __schema { types { name } } }"}
            )
            plain = await client.post("/graphql", json={"query": "{ __typename }"})
    assert response.json()["errors"]
    assert "introspection" in response.json()["errors"][0]["message"].lower()
    assert plain.json() == {"data": {"__typename": "Query"}}


async def test_unexpected_errors_are_masked_and_logged(
    gql: GraphQLClient,
    db: AsyncSession,
    sign_in: Any,
    monkeypatch: pytest.MonkeyPatch,
    resolver_path_only: None,
) -> None:
    def exploding_loader(context: Any) -> Any:
        raise RuntimeError("secret internals: SELECT password_hash FROM users")

    monkeypatch.setattr(loaders, "all_roles", exploding_loader)
    token = await sign_in("user@example.com")
    body = await gql("query Roles { roles { name } }", token=token)
    error = body["errors"][0]
    assert error["message"] == "Internal server error."
    assert error["extensions"]["code"] == "INTERNAL_SERVER_ERROR"
    assert "secret" not in str(body)
    request_id = error["extensions"]["requestId"]
    row = (
        await db.execute(
            sa.text(
                "SELECT error_type, message, stack, operation_name, source "
                "FROM error_logs WHERE request_id = :rid"
            ),
            {"rid": request_id},
        )
    ).one()
    assert row.error_type == "builtins.RuntimeError"
    assert "secret internals" in row.message
    assert "Traceback" in row.stack
    assert row.operation_name == "Roles"
    assert row.source == "GRAPHQL"


async def test_cors_preflight_for_configured_origin(client: httpx.AsyncClient) -> None:
    response = await client.options(
        "/graphql",
        headers={
            "Origin": "http://localhost:3000",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "http://localhost:3000"
    other = await client.options(
        "/graphql",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert other.headers.get("access-control-allow-origin") is None


async def test_node_with_malformed_id_is_bad_user_input(gql: GraphQLClient) -> None:
    body = await gql('{ node(id: "not-an-id") { id } }')
    assert error_codes(body) == ["BAD_USER_INPUT"]


async def test_me_is_null_without_token(gql: GraphQLClient) -> None:
    assert (await gql("{ me { email } }")) == {"data": {"me": None}}


async def test_runtime_spawn_tracks_background_tasks(app: Any) -> None:
    runtime: Runtime = app.state.atlas["runtime"]
    finished: list[int] = []

    async def work() -> None:
        finished.append(1)

    await runtime.spawn(work())
    assert finished == [1]
    assert not runtime.background_tasks


async def test_bad_variable_value_is_a_client_error(client: httpx.AsyncClient) -> None:
    query = "query Node($id: ID!) { node(id: $id) { id } }"
    legacy = await client.post("/graphql", json={"query": query, "variables": {"id": {"x": 1}}})
    body = legacy.json()
    assert legacy.status_code == 200
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert "requestId" not in body["errors"][0]["extensions"]
    accept = {"Accept": "application/graphql-response+json"}
    modern = await client.post(
        "/graphql", json={"query": query, "variables": {"id": {"x": 1}}}, headers=accept
    )
    assert modern.status_code == 400
    assert "data" not in modern.json()


async def test_resolver_errors_keep_200_under_graphql_response_json(
    client: httpx.AsyncClient,
) -> None:
    accept = {"Accept": "application/graphql-response+json"}
    response = await client.post(
        "/graphql", json={"query": '{ node(id: "bad") { id } }'}, headers=accept
    )
    assert response.status_code == 200
    assert response.json()["data"] == {"node": None}


async def test_masked_error_process_log_is_redacted(
    gql: GraphQLClient,
    sign_in: Any,
    monkeypatch: pytest.MonkeyPatch,
    resolver_path_only: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def exploding_loader(context: Any) -> Any:
        raise RuntimeError("boom with Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl")

    monkeypatch.setattr(loaders, "all_roles", exploding_loader)
    token = await sign_in("user@example.com")
    body = await gql("{ roles { name } }", token=token)
    assert error_codes(body) == ["INTERNAL_SERVER_ERROR"]
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "unexpected error" in logged
    assert "eyJzdWIiOiIxIn0" not in logged
