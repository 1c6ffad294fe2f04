"""Auth over real sockets: WebSocket refusal (4403) and concurrent refresh on a real uvicorn."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
import sqlalchemy as sa
import websockets

from atlas_gql.auth.account import create_user_account
from atlas_gql.auth.tokens import issue_access_token
from atlas_gql.ids import encode_global_id
from tests.auth.conftest import LOGIN, REFRESH
from tests.conftest import SEED_PASSWORD
from tests.live import LiveServer

UPDATE_USER = """
mutation($id: ID!) { updateUser(id: $id, input: {isActive: false}) { isActive } }
"""


async def connection_init(live_server: LiveServer, token: str) -> str | int:
    """The first answer to connection_init: a message type, or the close code."""
    async with websockets.connect(live_server.ws_url, subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
        init = {"type": "connection_init", "payload": {"Authorization": f"Bearer {token}"}}
        await ws.send(json.dumps(init))
        try:
            message = json.loads(await ws.recv())
        except websockets.ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd is not None else -1
        return str(message["type"])


async def test_websocket_with_an_expired_token_is_closed_with_4403(
    live_server: LiveServer,
) -> None:
    token = await live_server.sign_in("user@example.com")
    assert await connection_init(live_server, token) == "connection_ack"
    claims = jwt.decode(token, options={"verify_signature": False})
    expired, _ = issue_access_token(
        settings=live_server.settings,
        user_id=uuid.UUID(claims["sub"]),
        session_id=uuid.UUID(claims["sid"]),
        now=datetime.now(UTC) - timedelta(hours=1),
    )
    assert await connection_init(live_server, expired) == 4403


async def test_websocket_with_a_token_of_a_deactivated_user_is_closed_with_4403(
    live_server: LiveServer,
) -> None:
    runtime = live_server.app.state.atlas["runtime"]
    email = f"live-{uuid.uuid4().hex[:10]}@example.com"
    async with runtime.sessionmaker() as db:
        user = await create_user_account(db=db, email=email, password="live-password-1")
        await db.commit()
        user_id = user.id
    token = await live_server.sign_in(email)
    assert await connection_init(live_server, token) == "connection_ack"
    admin = await live_server.sign_in("admin@example.com")
    async with httpx.AsyncClient(base_url=live_server.http_url) as client:
        response = await client.post(
            "/graphql",
            json={"query": UPDATE_USER, "variables": {"id": encode_global_id("User", user_id)}},
            headers={"Authorization": f"Bearer {admin}"},
        )
    assert response.json() == {"data": {"updateUser": {"isActive": False}}}
    assert await connection_init(live_server, token) == 4403


@pytest.mark.parametrize("token", ["forged.token.value", ""])
async def test_websocket_with_a_garbage_token_is_closed_with_4403(
    live_server: LiveServer, token: str
) -> None:
    assert await connection_init(live_server, token) == 4403


async def test_concurrent_refreshes_with_one_token_let_one_through(
    live_server: LiveServer,
) -> None:
    async with httpx.AsyncClient(base_url=live_server.http_url) as client:

        async def call(query: str, variables: dict[str, str]) -> dict[str, Any]:
            response = await client.post("/graphql", json={"query": query, "variables": variables})
            body: dict[str, Any] = response.json()
            return body

        signed = await call(LOGIN, {"email": "pm@example.com", "password": SEED_PASSWORD})
        payload = signed["data"]["login"]
        results = await asyncio.gather(
            *(call(REFRESH, {"token": payload["refreshToken"]}) for _ in range(4))
        )
    winners = [result for result in results if (result.get("data") or {}).get("refreshSession")]
    losers = [result for result in results if result.get("errors")]
    # The row claim is atomic: one refresh wins, the replays are treated as reuse.
    assert len(winners) == 1
    assert len(losers) == 3
    for loser in losers:
        assert loser["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    session_id = jwt.decode(payload["accessToken"], options={"verify_signature": False})["sid"]
    runtime = live_server.app.state.atlas["runtime"]
    async with runtime.sessionmaker() as db:
        issued = (
            await db.execute(
                sa.text("SELECT count(*) FROM refresh_tokens WHERE session_id = :sid"),
                {"sid": session_id},
            )
        ).scalar_one()
        reason = (
            await db.execute(
                sa.text("SELECT revoked_reason FROM sessions WHERE id = :sid"), {"sid": session_id}
            )
        ).scalar_one()
    assert issued == 2
    assert reason == "refresh_token_reuse"
