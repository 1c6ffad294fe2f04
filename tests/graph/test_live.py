"""The app on a real uvicorn: HTTP and the graphql-transport-ws handshake."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import websockets

from atlas_gql.auth import loaders as auth_loaders
from tests.live import HANG_GUARD, LiveServer


async def test_live_server_answers_http(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.http_url) as client:
        response = await client.post("/graphql", json={"query": "{ __typename }"})
    assert response.json() == {"data": {"__typename": "Query"}}


async def test_websocket_accepts_graphql_transport_ws_with_valid_token(
    live_server: LiveServer,
) -> None:
    token = await live_server.sign_in("user@example.com")
    async with websockets.connect(live_server.ws_url, subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
        await ws.send(
            json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {token}"}})
        )
        assert json.loads(await ws.recv())["type"] == "connection_ack"


async def test_websocket_bad_token_closed_with_4403(live_server: LiveServer) -> None:
    async with websockets.connect(live_server.ws_url, subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
        init = {"type": "connection_init", "payload": {"Authorization": "Bearer forged"}}
        await ws.send(json.dumps(init))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4403


async def test_websocket_refuses_legacy_subprotocol(live_server: LiveServer) -> None:
    try:
        async with websockets.connect(live_server.ws_url, subprotocols=["graphql-ws"]) as ws:  # type: ignore[list-item]
            await ws.recv()
    except (websockets.ConnectionClosed, websockets.InvalidHandshake, websockets.InvalidStatus):
        return
    raise AssertionError("graphql-ws (legacy) must not be accepted")


async def _ws_operation(live_server: LiveServer, token: str, query: str) -> dict[str, Any]:
    """Run one operation over graphql-transport-ws; return its first `next` payload."""
    async with websockets.connect(live_server.ws_url, subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
        init = {"type": "connection_init", "payload": {"Authorization": f"Bearer {token}"}}
        await ws.send(json.dumps(init))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        return await _ws_run(ws, "1", query)


async def _ws_run(ws: Any, operation_id: str, query: str) -> dict[str, Any]:
    await ws.send(
        json.dumps({"id": operation_id, "type": "subscribe", "payload": {"query": query}})
    )
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), HANG_GUARD))
        if message.get("id") != operation_id:
            continue
        if message["type"] == "next":
            payload: dict[str, Any] = message["payload"]
            return payload
        if message["type"] == "error":
            return {"errors": message["payload"]}
        raise AssertionError(message)


async def test_logout_applies_to_an_open_socket(live_server: LiveServer) -> None:
    token = await live_server.sign_in("user@example.com")
    async with websockets.connect(live_server.ws_url, subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
        init = {"type": "connection_init", "payload": {"Authorization": f"Bearer {token}"}}
        await ws.send(json.dumps(init))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        before = await _ws_run(ws, "1", "{ me { email } }")
        assert before == {"data": {"me": {"email": "user@example.com"}}}
        async with httpx.AsyncClient(base_url=live_server.http_url) as client:
            response = await client.post(
                "/graphql",
                json={"query": "mutation { logout }"},
                headers={"Authorization": f"Bearer {token}"},
            )
        assert response.json() == {"data": {"logout": True}}
        after = await _ws_run(ws, "2", "{ me { email } }")
        assert after["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_errors_over_websocket_carry_codes_and_are_masked(
    live_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = await live_server.sign_in("user@example.com")
    bad_id = await _ws_operation(live_server, token, '{ node(id: "nope") { id } }')
    assert bad_id["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"

    def exploding_loader(context: Any) -> Any:
        raise RuntimeError("SELECT password_hash FROM users")

    monkeypatch.setattr(auth_loaders, "all_roles", exploding_loader)
    masked = await _ws_operation(live_server, token, "{ roles { name } }")
    error = masked["errors"][0]
    assert error["message"] == "Internal server error."
    assert error["extensions"]["code"] == "INTERNAL_SERVER_ERROR"
    assert "password_hash" not in json.dumps(masked)
    request_id = error["extensions"]["requestId"]
    runtime = live_server.app.state.atlas["runtime"]
    async with runtime.sessionmaker() as db:
        stored = await db.execute(
            sa.text("SELECT message FROM error_logs WHERE request_id = :rid"), {"rid": request_id}
        )
        assert "password_hash" in stored.scalar_one()
