"""The app on a real uvicorn: HTTP and the graphql-transport-ws handshake."""

from __future__ import annotations

import json

import httpx
import pytest
import websockets

from tests.conftest import LiveServer


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
