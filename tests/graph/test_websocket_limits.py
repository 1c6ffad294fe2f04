"""WebSocket limits on a real uvicorn: message size, connection_init payload, message shape,
document size and complexity."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import websockets
from websockets.typing import Subprotocol

from atlas_gql.graph.limits.body import MAX_JSON_DEPTH
from atlas_gql.graph.websocket import MAX_CONNECTION_INIT_BYTES, DocumentTexts
from tests.graph.document_attacks import ATTACKS
from tests.live import HANG_GUARD, LiveServer

PROTOCOL = [Subprotocol("graphql-transport-ws")]


async def connect(live_server: LiveServer) -> Any:
    return await websockets.connect(
        live_server.ws_url,
        subprotocols=PROTOCOL,
        max_size=None,
    )


async def closed_with(ws: Any) -> tuple[int, str]:
    """Wait for the server to close the socket; its close code and reason."""

    async def drain() -> None:
        while True:
            await asyncio.wait_for(ws.recv(), HANG_GUARD)

    with pytest.raises(websockets.ConnectionClosed) as closed:
        await drain()
    assert closed.value.rcvd is not None, closed.value
    return closed.value.rcvd.code, closed.value.rcvd.reason


async def acked_socket(live_server: LiveServer, email: str) -> Any:
    """A socket past connection_init, signed in as `email`."""
    token = await live_server.sign_in(email)
    ws = await connect(live_server)
    init = {"type": "connection_init", "payload": {"Authorization": f"Bearer {token}"}}
    await ws.send(json.dumps(init))
    assert json.loads(await ws.recv())["type"] == "connection_ack"
    return ws


@pytest.fixture
async def acked(live_server: LiveServer) -> AsyncIterator[Any]:
    """A socket past connection_init, as a signed-in user."""
    ws = await acked_socket(live_server, "user@example.com")
    try:
        yield ws
    finally:
        await ws.close()


async def first_answer(ws: Any, operation_id: str) -> dict[str, Any]:
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), HANG_GUARD))
        if message.get("id") == operation_id:
            return message  # type: ignore[no-any-return]


async def test_a_message_over_the_body_limit_closes_with_1009(live_server: LiveServer) -> None:
    limit = live_server.settings.atlas_max_body_bytes
    ws = await connect(live_server)
    padding = "x" * limit
    await ws.send(json.dumps({"type": "connection_init", "payload": {"pad": padding}}))
    code, reason = await closed_with(ws)
    assert code == 1009
    assert str(limit) in reason


async def test_a_large_connection_init_payload_closes_with_4400(live_server: LiveServer) -> None:
    ws = await connect(live_server)
    payload = {"Authorization": "Bearer x", "pad": "x" * MAX_CONNECTION_INIT_BYTES}
    await ws.send(json.dumps({"type": "connection_init", "payload": payload}))
    code, reason = await closed_with(ws)
    assert code == 4400
    assert "connection_init" in reason


@pytest.mark.parametrize(
    "message",
    [
        "[]",
        '"connection_init"',
        "5",
        "null",
        '{"type": 5}',
        json.dumps({"type": "x" * 500}),  # quoted in the close reason: truncated, not a crash
        "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1),
        '{"type": "connection_init", "payload": ' + "[" * 3000 + "]" * 3000 + "}",
        "not json",
    ],
)
async def test_malformed_messages_close_with_4400(live_server: LiveServer, message: str) -> None:
    ws = await connect(live_server)
    await ws.send(message)
    code, _ = await closed_with(ws)
    assert code == 4400


@pytest.mark.parametrize(
    "subscribe",
    [
        {"id": "1", "type": "subscribe", "payload": "{ __typename }"},
        {"id": "1", "type": "subscribe", "payload": {"query": 5}},
        {"id": "1", "type": "subscribe", "payload": {"query": "{ a }", "variables": [1]}},
        {"id": "1", "type": "subscribe", "payload": {"query": "{ a }", "operationName": 1}},
        {"id": 1, "type": "subscribe", "payload": {"query": "{ __typename }"}},
        {"type": "subscribe", "payload": {"query": "{ __typename }"}},
    ],
)
async def test_malformed_subscribe_messages_close_with_4400(
    acked: Any, subscribe: dict[str, Any]
) -> None:
    await acked.send(json.dumps(subscribe))
    code, _ = await closed_with(acked)
    assert code == 4400


async def test_a_document_over_the_byte_limit_is_refused(
    acked: Any, live_server: LiveServer
) -> None:
    padded = "{ __typename }\n#" + "x" * live_server.settings.atlas_max_document_bytes
    await acked.send(json.dumps({"id": "big", "type": "subscribe", "payload": {"query": padded}}))
    answer = await first_answer(acked, "big")
    assert answer["type"] == "error"
    assert answer["payload"][0]["extensions"]["code"] == "PAYLOAD_TOO_LARGE"
    # The socket stays usable.
    await acked.send(
        json.dumps({"id": "ok", "type": "subscribe", "payload": {"query": "{ __typename }"}})
    )
    assert (await first_answer(acked, "ok"))["payload"] == {"data": {"__typename": "Query"}}


async def test_a_fragment_bomb_is_refused(acked: Any) -> None:
    bomb = next(a for a in ATTACKS if a.name == "aliased fragment bomb").build(30)
    await acked.send(json.dumps({"id": "bomb", "type": "subscribe", "payload": {"query": bomb}}))
    answer = await first_answer(acked, "bomb")
    assert answer["type"] == "error"
    assert answer["payload"][0]["extensions"]["code"] == "QUERY_TOO_COMPLEX"


def test_document_texts_keep_one_copy_each_within_their_limit() -> None:
    texts = DocumentTexts(limit=10)
    first = texts.shared("".join(["abc", "d"]))
    assert texts.shared("".join(["ab", "cd"])) is first  # equal texts: the first one's copy
    texts.shared("efghij")  # 4 + 6 characters: both kept
    assert texts.shared("abcd" + "") is first
    texts.shared("klm")  # over the limit: the oldest goes
    again = "".join(["ab", "cd"])
    assert texts.shared(again) is again
    long = "x" * 11  # longer than the limit: never kept
    assert texts.shared(long) is long
    assert texts.shared("x" * 11) is not long
