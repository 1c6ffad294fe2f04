"""GET /metrics protection (off, loopback, token), request ids, bounded label values."""

from __future__ import annotations

import logging
import re
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from atlas_gql.app import create_app
from atlas_gql.config import Settings
from atlas_gql.logformat import JsonFormatter, TextFormatter
from atlas_gql.metrics import OTHER, BoundedLabel, accept_request_id
from tests.conftest import make_settings

TOKEN = "metrics-token-" + "x" * 20


@pytest.fixture
def metrics_client(database_target: Any) -> Any:
    """`async with metrics_client(client_host, **settings) as client`."""

    def make(host: str, **overrides: Any) -> Any:
        settings = make_settings(database_target, **overrides)
        app = create_app(settings)

        class Client:
            async def __aenter__(self) -> httpx.AsyncClient:
                self.lifespan = app.router.lifespan_context(app)
                await self.lifespan.__aenter__()
                transport = httpx.ASGITransport(app=app, client=(host, 1234))
                self.client = httpx.AsyncClient(transport=transport, base_url="http://atlas")
                return self.client

            async def __aexit__(self, *exc: Any) -> None:
                await self.client.aclose()
                await self.lifespan.__aexit__(*exc)

        return Client()

    return make


async def test_loopback_only_by_default(metrics_client: Any) -> None:
    async with metrics_client("127.0.0.1") as client:
        response = await client.get("/metrics")
        assert response.status_code == 200
        assert "atlas_graphql_requests_total" in response.text or "# HELP" in response.text
    async with metrics_client("::1") as client:
        assert (await client.get("/metrics")).status_code == 200
    async with metrics_client("203.0.113.9") as client:
        refused = await client.get("/metrics")
        assert refused.status_code == 403
        assert refused.json()["errors"][0]["extensions"]["code"] == "FORBIDDEN"


async def test_off_serves_nothing(metrics_client: Any) -> None:
    async with metrics_client("127.0.0.1", atlas_metrics="off") as client:
        off = await client.get("/metrics")
        assert off.status_code == 404
        assert off.json()["errors"][0]["extensions"]["code"] == "NOT_FOUND"


async def test_token_mode_needs_the_token_from_anywhere(metrics_client: Any) -> None:
    async with metrics_client(
        "203.0.113.9", atlas_metrics="token", atlas_metrics_token=TOKEN
    ) as client:
        missing = await client.get("/metrics")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert missing.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
        for wrong in ("Bearer nope", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer "):
            assert (
                await client.get("/metrics", headers={"Authorization": wrong})
            ).status_code == 401
        ok = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200
        assert "# HELP atlas_graphql_requests" in ok.text
        assert "_created" not in ok.text


@pytest.mark.parametrize("token", [None, "", "short"])
def test_token_mode_refuses_to_start_without_a_real_token(token: str | None) -> None:
    with pytest.raises(ValidationError, match="ATLAS_METRICS_TOKEN"):
        Settings(_env_file=None, atlas_metrics="token", atlas_metrics_token=token)


def test_log_format_defaults_by_environment() -> None:
    from atlas_gql.logformat import log_format

    development = Settings(_env_file=None)
    production = Settings(
        _env_file=None, atlas_env="production", atlas_jwt_secret="y" * 40, atlas_seed_password="p"
    )
    assert log_format(development).value == "text"
    assert log_format(production).value == "json"
    assert log_format(Settings(_env_file=None, atlas_log_format="json")).value == "json"


def test_formatters_put_fields_on_the_line() -> None:
    record = logging.LogRecord("atlas.access", logging.INFO, __file__, 1, "request", None, None)
    record.fields = {"request_id": "abc", "status": 200}
    import json

    line = json.loads(JsonFormatter().format(record))
    assert (line["message"], line["request_id"], line["status"]) == ("request", "abc", 200)
    assert TextFormatter().format(record).endswith("request request_id=abc status=200")


SAFE = re.compile(r"^[-_.:/+=0-9A-Za-z]{8,64}$")


@given(st.text(max_size=100))
def test_any_incoming_request_id_becomes_a_safe_one(text: str) -> None:
    accepted = accept_request_id(text)
    assert SAFE.match(accepted)
    assert accepted == text or len(accepted) == 32


@given(st.lists(st.text(max_size=80), max_size=60))
def test_label_values_are_bounded(values: list[str]) -> None:
    label = BoundedLabel(5, re.compile(r"^[_A-Za-z][_0-9A-Za-z]{0,63}$"), missing="anonymous")
    seen = {label(value) for value in values}
    assert len(seen - {OTHER, "anonymous"}) <= 5
    assert all(v in {OTHER, "anonymous"} or re.match(r"^[_A-Za-z]\w*$", v) for v in seen)
