"""Metrics, request ids and access lines after a scripted session on a live server: every
series of docs/observability.md is present and moves; a failed request's access line carries its
code and request id, and so does its ErrorLog row."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import col

from atlas_gql.logformat import ACCESS_LOGGER, JsonFormatter
from atlas_gql.logs.models import ErrorLog
from tests.ai.conftest import AIServer, StartServer
from tests.ai.fake_openai import Behaviour
from tests.ai.test_budget import SET_BUDGET, _project
from tests.ai.test_files import upload
from tests.conftest import error_codes
from tests.live import wait_until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

LOGIN = (
    "mutation Login($e: String!, $p: String!) "
    "{ login(input: {email: $e, password: $p}) { accessToken } }"
)


async def scrape(ai: AIServer) -> Samples:
    async with httpx.AsyncClient(base_url=ai.server.http_url) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every label set that includes `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


@pytest.fixture
def access_lines() -> Iterator[list[logging.LogRecord]]:
    """The access lines logged while the test runs."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger(ACCESS_LOGGER)
    handler, level = Keep(level=logging.DEBUG), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def test_series_are_present_and_move_after_a_scripted_session(
    start_ai_server: StartServer,
) -> None:
    ai = await start_ai_server(atlas_login_max_failures=1)
    before = await scrape(ai)
    thread_id = await ai.new_thread()

    # A reply streamed to a subscriber; while it runs, the live gauges count it.
    ai.fake.then(Behaviour(input_tokens=30, output_tokens=12))
    ai.fake.gates["complete"] = asyncio.Event()
    async with ai.client.subscribe(ai.people.member, thread_id) as subscription:
        sent = await ai.send(thread_id)
        assert "errors" not in sent, sent
        events = [await subscription.event() for _ in range(4)]
        live = await scrape(ai)
        ai.fake.gates["complete"].set()
        events += await subscription.until_final()
    assert events[-1]["__typename"] == "MessageCompleted"
    assert value(live, "atlas_websocket_connections") >= 1
    assert value(live, "atlas_subscriptions_active") >= 1
    assert value(live, "atlas_replies_in_flight") >= 1
    assert ("atlas_db_pool_connections_in_use", ()) in live

    # An upstream failure, a rate-limited login, a refused budget, a named query.
    ai.fake.then(Behaviour(kind="http_error", status=400, error_message="bad request"))
    assert "errors" not in await ai.send(thread_id, "this one fails upstream")
    email = f"metrics-{uuid.uuid4().hex[:8]}@example.com"
    for _ in range(2):
        await ai.client.gql(LOGIN, {"e": email, "p": "wrong-password"})
    pm = await ai.server.sign_in("pm@example.com")
    project_id, [budget_thread] = await _project(ai, pm, 1)
    await ai.client.data(SET_BUDGET, {"p": project_id, "v": 0}, token=pm)
    refused = await ai.send(budget_thread, token=pm)
    assert error_codes(refused) == ["QUOTA_EXCEEDED"]
    await ai.client.data("query Me { me { id } }", token=ai.people.member)

    async def reply_failed() -> bool:
        return total(await scrape(ai), "atlas_upstream_errors_total", status="400") > total(
            before, "atlas_upstream_errors_total", status="400"
        )

    await wait_until(reply_failed)
    after = await scrape(ai)

    def moved(name: str, by: float = 1, **labels: str) -> None:
        change = total(after, name, **labels) - total(before, name, **labels)
        assert change >= by, (name, labels, change)

    moved("atlas_graphql_requests_total", operation_type="mutation", outcome="OK", by=2)
    moved("atlas_graphql_requests_total", operation_type="query", outcome="OK")
    moved("atlas_graphql_requests_total", operation_type="mutation", outcome="QUOTA_EXCEEDED")
    moved("atlas_graphql_requests_total", operation_type="mutation", outcome="RATE_LIMITED")
    moved("atlas_graphql_request_duration_seconds_count", operation_name="Me")
    moved("atlas_graphql_request_duration_seconds_count", operation_name="Login", by=2)
    moved("atlas_graphql_request_duration_seconds_count", operation_name="anonymous")
    moved("atlas_sql_statements_per_request_count", operation_type="query")
    moved("atlas_sql_statements_per_request_sum", operation_type="mutation", by=5)
    moved("atlas_deltas_published_total", by=6)
    moved("atlas_deltas_delivered_total", by=6)
    moved("atlas_upstream_reply_duration_seconds_count", outcome="ok")
    moved("atlas_upstream_reply_duration_seconds_count", outcome="error")
    moved("atlas_upstream_errors_total", status="400")
    moved("atlas_ai_tokens_total", kind="input", by=30)
    moved("atlas_ai_tokens_total", kind="output", by=12)
    moved("atlas_ai_cost_usd_total", by=1e-6)
    moved("atlas_rate_limit_refusals_total")
    moved("atlas_budget_refusals_total")
    # Live gauges are back down once the reply and the subscription ended.
    assert value(after, "atlas_subscriptions_active") < value(live, "atlas_subscriptions_active")
    assert value(after, "atlas_replies_in_flight") < value(live, "atlas_replies_in_flight")


async def test_a_failed_request_logs_its_code_and_id_and_its_error_row_has_the_id(
    start_ai_server: StartServer, access_lines: list[logging.LogRecord]
) -> None:
    # The provider cannot be reached: the upload fails upstream (an ErrorLog row).
    ai = await start_ai_server(openai_base_url="http://127.0.0.1:9/v1", atlas_openai_timeout=2)
    response = await upload(
        ai,
        b"hello",
        token=ai.people.member,
        headers={"X-Request-ID": "support-case-00017", "Apollo-Require-Preflight": "1"},
    )
    body = response.json()
    assert error_codes(body) == ["UPSTREAM_ERROR"]
    assert response.headers["x-request-id"] == "support-case-00017"
    assert body["extensions"]["requestId"] == "support-case-00017"

    [record] = [r for r in access_lines if r.fields["request_id"] == "support-case-00017"]  # type: ignore[attr-defined]
    line: dict[str, Any] = json.loads(JsonFormatter().format(record))
    assert line["outcome"] == "UPSTREAM_ERROR"
    assert line["operation_type"] == "mutation"
    assert line["status"] == 200
    assert line["bytes"] == len(response.content)
    assert line["sql_statements"] >= 1
    assert line["viewer_id"] is not None
    assert ai.people.member not in json.dumps(line)  # never the token

    runtime = ai.server.app.state.atlas["runtime"]
    async with runtime.sessionmaker() as db:
        rows = (
            await db.execute(
                sa.select(ErrorLog).where(col(ErrorLog.request_id) == "support-case-00017")
            )
        ).scalars()
        assert [row.source.value for row in rows] == ["UPSTREAM"]


async def test_an_insane_request_id_is_replaced(ai: AIServer) -> None:
    async with httpx.AsyncClient(base_url=ai.server.http_url) as client:
        response = await client.get("/healthz", headers={"X-Request-ID": 'short" onerror=alert(1)'})
    assert response.headers["x-request-id"] != 'short" onerror=alert(1)'
    assert len(response.headers["x-request-id"]) == 32
