"""Auth test helpers: apps with other settings, clients at other addresses, sign-in calls."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from atlas_gql.app import create_app
from atlas_gql.db.url import DatabaseTarget
from tests.conftest import NO_PERIODIC_SWEEP, GraphQLClient, make_settings
from tests.live import LiveServer

LOGIN = """
mutation Login($email: String!, $password: String!) {
  login(input: {email: $email, password: $password}) {
    accessToken refreshToken accessTokenExpiresAt
    user { id email roles { name } permissions }
  }
}
"""

REFRESH = """
mutation Refresh($token: String!) {
  refreshSession(refreshToken: $token) { accessToken refreshToken user { email } }
}
"""

REGISTER = """
mutation Register($email: String!, $password: String!, $name: String) {
  register(input: {email: $email, password: $password, name: $name}) {
    accessToken refreshToken user { id email name roles { name } permissions }
  }
}
"""

ME = "{ me { id email roles { name } permissions } }"

REDIS_URL = "redis://127.0.0.1:6379/0"


async def login(gql: GraphQLClient, email: str, password: str) -> dict[str, Any]:
    """The body of a `login` call."""
    return await gql(LOGIN, {"email": email, "password": password})


async def signed_in(gql: GraphQLClient, email: str, password: str) -> dict[str, Any]:
    """The AuthPayload of a successful `login`."""
    body = await login(gql, email, password)
    assert "errors" not in body, body
    payload: dict[str, Any] = body["data"]["login"]
    return payload


@pytest.fixture
async def make_gql(
    database_target: DatabaseTarget,
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> AsyncIterator[Any]:
    """`await make_gql(ip="198.51.100.1", atlas_login_max_failures=3)` -> a GraphQLClient for
    an app with those settings, seen from that client address, in the test's transaction."""
    async with contextlib.AsyncExitStack() as stack:
        apps: dict[tuple[tuple[str, Any], ...], Any] = {}

        async def make(ip: str = "203.0.113.7", **overrides: Any) -> GraphQLClient:
            key = tuple(sorted(overrides.items()))
            app = apps.get(key)
            if app is None:
                # On the test's one connection: no periodic sweep (tests/conftest.py `app`).
                settings = make_settings(database_target, **{**NO_PERIODIC_SWEEP, **overrides})
                app = apps[key] = create_app(settings, engine=engine, sessionmaker=sessionmaker)
                await stack.enter_async_context(app.router.lifespan_context(app))
            transport = httpx.ASGITransport(app=app, client=(ip, 4321))
            client = await stack.enter_async_context(
                httpx.AsyncClient(transport=transport, base_url="http://testserver")
            )
            return GraphQLClient(client)

        yield make


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A unique key prefix on the real Redis, cleaned up afterwards."""
    prefix = f"atlas-test:{uuid.uuid4().hex}:"
    yield prefix
    client = Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def loopback_addresses() -> Iterator[str]:
    """Client addresses of a block of 127.0.0.0/8 no other test uses (never 127.0.0.1, whose
    failed sign-ins would limit the other live tests): a connection from 127.a.b.n reaches
    the server as that client address."""
    block = uuid.uuid4().int
    prefix = f"127.{2 + block % 250}.{(block >> 8) % 256}"
    for host in range(1, 255):
        yield f"{prefix}.{host}"


async def live_login(
    server: LiveServer, email: str, password: str, *, address: str
) -> dict[str, Any]:
    """The body of a `login` call to a live server, sent from `address`."""
    transport = httpx.AsyncHTTPTransport(local_address=address)
    async with httpx.AsyncClient(
        transport=transport, base_url=server.http_url, timeout=120
    ) as client:
        response = await client.post(
            "/graphql", json={"query": LOGIN, "variables": {"email": email, "password": password}}
        )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body
