"""errorLogs (ADMIN only) and what reaches an error row: never a secret."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from atlas_gql.auth import loaders as auth_loaders
from atlas_gql.ids import encode_global_id as global_id
from atlas_gql.logs.audit import ErrorLogPolicy, record_error
from atlas_gql.logs.models import ErrorLog, ErrorSource
from tests.conftest import GraphQLClient, error_codes
from tests.factories import create_error

ERRORS = """
query Errors($first: Int, $after: String, $filter: ErrorLogFilter) {
  errorLogs(first: $first, after: $after, filter: $filter) {
    totalCount
    pageInfo { hasNextPage endCursor }
    nodes {
      id requestId source errorType message stack operationName path
      upstreamStatus upstreamRequestId details createdAt user { email }
    }
  }
}
"""
BASE = datetime(2002, 7, 8, 9, 0, tzinfo=UTC)
WINDOW = {"from": "2002-07-08T00:00:00Z", "to": "2002-07-09T00:00:00Z"}
PASSWORD = "Correct-Horse-Battery-9"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhYmMiLCJzaWQiOiJ4In0.c2lnbmF0dXJlLWJ5dGVz"


async def test_admin_reads_errors_newest_first_with_filters(
    gql: GraphQLClient, db: AsyncSession, sign_in: Any
) -> None:
    rows = [
        await create_error(db, created_at=BASE + timedelta(minutes=1), source=ErrorSource.GRAPHQL),
        await create_error(
            db,
            created_at=BASE + timedelta(minutes=2),
            source=ErrorSource.UPSTREAM,
            upstream_status=502,
        ),
        await create_error(db, created_at=BASE + timedelta(minutes=3), source=ErrorSource.DATABASE),
    ]
    token = await sign_in("admin@example.com")
    body = await gql(ERRORS, {"first": 2, "filter": WINDOW}, token=token)
    assert "errors" not in body, body
    page = body["data"]["errorLogs"]
    assert page["totalCount"] == 3
    assert [node["source"] for node in page["nodes"]] == ["DATABASE", "UPSTREAM"]
    assert page["nodes"][1]["upstreamStatus"] == 502
    assert page["nodes"][0]["requestId"] == rows[2].request_id
    rest = await gql(
        ERRORS, {"after": page["pageInfo"]["endCursor"], "filter": WINDOW}, token=token
    )
    assert [node["source"] for node in rest["data"]["errorLogs"]["nodes"]] == ["GRAPHQL"]

    upstream = await gql(ERRORS, {"filter": {**WINDOW, "source": "UPSTREAM"}}, token=token)
    assert [node["id"] for node in upstream["data"]["errorLogs"]["nodes"]] == [
        global_id("ErrorLog", rows[1].id)
    ]
    node = await gql(
        "query($id: ID!) { node(id: $id) { ... on ErrorLog { requestId } } }",
        {"id": global_id("ErrorLog", rows[0].id)},
        token=token,
    )
    assert node["data"] == {"node": {"requestId": rows[0].request_id}}


async def test_errors_are_forbidden_to_everyone_but_admins(
    gql: GraphQLClient, db: AsyncSession, sign_in: Any
) -> None:
    row = await create_error(db, created_at=BASE)
    for email in ("user@example.com", "pm@example.com"):
        token = await sign_in(email)
        body = await gql(ERRORS, {}, token=token)
        assert error_codes(body) == ["FORBIDDEN"]
        assert body["data"] == {"errorLogs": None}
        node = await gql(
            "query($id: ID!) { node(id: $id) { id } }",
            {"id": global_id("ErrorLog", row.id)},
            token=token,
        )
        assert node["data"] == {"node": None}
    assert error_codes(await gql(ERRORS, {})) == ["UNAUTHENTICATED"]
    token = await sign_in("admin@example.com")
    bad = await gql(
        ERRORS, {"filter": {"from": "2002-07-09T00:00:00Z", "to": WINDOW["from"]}}, token=token
    )
    assert error_codes(bad) == ["BAD_USER_INPUT"]


async def test_a_masked_error_reaches_the_log_without_secrets(
    gql: GraphQLClient,
    db: AsyncSession,
    sign_in: Any,
    monkeypatch: pytest.MonkeyPatch,
    resolver_path_only: None,
) -> None:
    def exploding_loader(context: Any) -> Any:
        raise RuntimeError(
            f"login failed for password={PASSWORD} with Authorization: Bearer {JWT} "
            "and key sk-proj-abcdefghijklmnop1234"
        )

    monkeypatch.setattr(auth_loaders, "roles_by_user", exploding_loader)
    user_token = await sign_in("user@example.com")
    body = await gql("query Roles { me { roles { name } } }", token=user_token)
    assert error_codes(body) == ["INTERNAL_SERVER_ERROR"]
    request_id = body["errors"][0]["extensions"]["requestId"]

    row = (
        await db.execute(sa.select(ErrorLog).where(col(ErrorLog.request_id) == request_id))
    ).scalar_one()
    stored = f"{row.message}\n{row.stack}\n{row.details}"
    for secret in (PASSWORD, JWT, "sk-proj-abcdefghijklmnop1234"):
        assert secret not in stored
    assert "password=[redacted]" in row.message
    assert "RuntimeError" in (row.stack or "")

    admin = await sign_in("admin@example.com")
    found = await gql(ERRORS, {"first": 100}, token=admin)
    match = [n for n in found["data"]["errorLogs"]["nodes"] if n["requestId"] == request_id]
    assert len(match) == 1
    assert match[0]["operationName"] == "Roles"
    assert match[0]["path"] == "me.roles"
    assert match[0]["source"] == "GRAPHQL"
    assert match[0]["user"] == {"email": "user@example.com"}
    assert PASSWORD not in str(found)
    assert JWT not in str(found)


async def test_upstream_and_database_errors_are_scrubbed_too(
    sessionmaker: async_sessionmaker[AsyncSession], db: AsyncSession
) -> None:
    await record_error(
        policy=ErrorLogPolicy(),
        sessionmaker=sessionmaker,
        request_id="upstream-test-1",
        source=ErrorSource.UPSTREAM,
        error_type="openai.APIStatusError",
        message=f"401 Incorrect API key provided: sk-live-{'x' * 20}",
        upstream_status=401,
        upstream_request_id="req_123",
        details={"apiKey": "sk-live-secret", "headers": {"Authorization": f"Bearer {JWT}"}},
    )
    try:
        # asyncpg names the bad argument's value in its message.
        await db.execute(sa.text("SELECT CAST(:value AS int)"), {"value": PASSWORD})
    except Exception as error:
        await db.rollback()
        await record_error(
            policy=ErrorLogPolicy(),
            sessionmaker=sessionmaker,
            request_id="database-test-1",
            source=ErrorSource.DATABASE,
            error=error,
        )
    rows = {
        row.request_id: row
        for row in (
            await db.execute(
                sa.select(ErrorLog).where(
                    col(ErrorLog.request_id).in_(["upstream-test-1", "database-test-1"])
                )
            )
        ).scalars()
    }
    upstream = rows["upstream-test-1"]
    assert upstream.upstream_status == 401
    assert upstream.upstream_request_id == "req_123"
    assert "sk-live" not in upstream.message
    assert upstream.details == {
        "apiKey": "[redacted]",
        "headers": {"Authorization": "[redacted]"},
    }
    database = rows["database-test-1"]
    assert PASSWORD not in f"{database.message}{database.stack}"
    assert "query argument $1: [redacted] ('[redacted]' object" in database.message
