"""The HTTP edge inside the app: client addresses behind trusted proxies (X-Forwarded-For,
X-Forwarded-Proto) and the request-body timeout, through the ASGI app."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from ipaddress import ip_network
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.types import Message, Receive, Scope, Send

from atlas_gql.app import create_app
from atlas_gql.db.url import DatabaseTarget
from atlas_gql.edge import BodyTimeoutMiddleware, ClientAddressMiddleware, parse_address
from tests.conftest import make_settings

LOOPBACK_AND_PRIVATE = [ip_network("127.0.0.1"), ip_network("10.0.0.0/8"), ip_network("fd00::/8")]


async def echo_client(scope: Scope, receive: Receive, send: Send) -> None:
    """An app that answers with the client address and scheme it was given."""
    body = f"{scope['client'][0]} {scope['scheme']}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def seen_as(peer: str, headers: dict[str, str] | list[tuple[str, str]]) -> list[str]:
    app = ClientAddressMiddleware(echo_client, trusted_proxies=LOOPBACK_AND_PRIVATE)
    transport = httpx.ASGITransport(app=app, client=(peer, 5555))
    async with httpx.AsyncClient(transport=transport, base_url="http://atlas") as client:
        response = await client.get("/", headers=headers)
    return response.text.split()


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "client"),
    [
        pytest.param("203.0.113.9", "198.51.100.1", "203.0.113.9", id="untrusted-peer-ignored"),
        pytest.param("127.0.0.1", None, "127.0.0.1", id="trusted-peer-no-header"),
        pytest.param("127.0.0.1", "198.51.100.1", "198.51.100.1", id="one-proxy"),
        pytest.param(
            "127.0.0.1", "6.6.6.6, 198.51.100.1", "198.51.100.1", id="spoofed-left-part-ignored"
        ),
        pytest.param(
            "10.0.0.2", "6.6.6.6, 198.51.100.1, 10.1.2.3", "198.51.100.1", id="two-proxies-cidr"
        ),
        pytest.param("10.0.0.2", "not-an-ip", "10.0.0.2", id="garbage-keeps-peer"),
        pytest.param("10.0.0.2", "198.51.100.1, garbage", "10.0.0.2", id="garbage-right-most"),
        pytest.param("10.0.0.2", "garbage, 198.51.100.1", "198.51.100.1", id="garbage-left"),
        pytest.param("10.0.0.2", "", "10.0.0.2", id="empty-header"),
        pytest.param("10.0.0.2", "1.2.3.4\x00", "10.0.0.2", id="nul-byte"),
        pytest.param("10.0.0.2", "999.1.1.1", "10.0.0.2", id="not-an-ipv4"),
        pytest.param("10.0.0.2", "10.0.0.7, 10.0.0.8", "10.0.0.7", id="all-trusted-left-most"),
        pytest.param("fd00::1", "2001:DB8:0:0::7", "2001:db8::7", id="ipv6-canonical"),
        pytest.param("fd00::1", "[2001:db8::7]:4711", "2001:db8::7", id="ipv6-bracket-port"),
        pytest.param("127.0.0.1", "198.51.100.1:4711", "198.51.100.1", id="ipv4-with-port"),
        pytest.param("127.0.0.1", "::ffff:198.51.100.1", "198.51.100.1", id="ipv4-mapped"),
        pytest.param("::ffff:10.0.0.2", "198.51.100.1", "198.51.100.1", id="mapped-peer-cidr"),
        pytest.param("2001:db8::1", "198.51.100.1", "2001:db8::1", id="untrusted-ipv6-peer"),
        pytest.param("10.0.0.2", "[2001:db8::7", "10.0.0.2", id="unclosed-bracket"),
    ],
)
async def test_client_address_behind_proxies(
    peer: str, forwarded_for: str | None, client: str
) -> None:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for is not None else {}
    assert (await seen_as(peer, headers))[0] == client


async def test_several_forwarded_for_headers_read_as_one_list() -> None:
    headers = [("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "198.51.100.4, 10.0.0.3")]
    assert (await seen_as("10.0.0.2", headers))[0] == "198.51.100.4"


@pytest.mark.parametrize(
    ("peer", "proto", "scheme"),
    [
        ("127.0.0.1", "https", "https"),
        ("127.0.0.1", "HTTPS", "https"),
        ("127.0.0.1", "http, https", "https"),  # the trusted peer's own (right-most) value
        ("127.0.0.1", "gopher", "http"),
        ("203.0.113.9", "https", "http"),  # an untrusted peer cannot claim TLS
    ],
)
async def test_forwarded_proto_only_from_trusted_peers(peer: str, proto: str, scheme: str) -> None:
    assert (await seen_as(peer, {"X-Forwarded-Proto": proto}))[1] == scheme


async def test_websocket_scheme_follows_forwarded_proto() -> None:
    seen: dict[str, Any] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.update(client=scope["client"], scheme=scope["scheme"])

    middleware = ClientAddressMiddleware(app, trusted_proxies=LOOPBACK_AND_PRIVATE)
    scope = {
        "type": "websocket",
        "scheme": "ws",
        "client": ("127.0.0.1", 5000),
        "headers": [(b"x-forwarded-for", b"198.51.100.9"), (b"x-forwarded-proto", b"https")],
    }
    await middleware(scope, _never_receive, _discard)
    assert seen == {"client": ("198.51.100.9", 0), "scheme": "wss"}


async def test_no_trusted_proxies_by_default_not_even_loopback() -> None:
    app = ClientAddressMiddleware(echo_client, trusted_proxies=[])
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
    async with httpx.AsyncClient(transport=transport, base_url="http://atlas") as client:
        response = await client.get(
            "/", headers={"X-Forwarded-For": "198.51.100.1", "X-Forwarded-Proto": "https"}
        )
    assert response.text == "127.0.0.1 http"


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("1.2.3.4", "1.2.3.4"),
        (" 1.2.3.4 ", "1.2.3.4"),
        ("1.2.3.4:80", "1.2.3.4"),
        ("1.2.3.4:http", None),
        ("[::1]", "::1"),
        ("[::1]:80", "::1"),
        ("[::1]x", None),
        ("::1", "::1"),
        ("unknown", None),
        ("", None),
        ("1.2.3", None),
    ],
)
def test_parse_address(text: str, parsed: str | None) -> None:
    address = parse_address(text)
    assert (str(address) if address is not None else None) == parsed


# --- through the real app ---------------------------------------------------------------------


@pytest.fixture
async def app_with(
    database_target: DatabaseTarget,
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> AsyncIterator[Any]:
    """`await app_with(**settings)` -> the ATLAS app with those settings, in the test's
    transaction."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(**overrides: Any) -> Any:
            settings = make_settings(database_target, atlas_bcrypt_rounds=4, **overrides)
            app = create_app(settings, engine=engine, sessionmaker=sessionmaker)
            await stack.enter_async_context(app.router.lifespan_context(app))
            return app

        yield make


async def failed_login_address(
    app: Any, db: AsyncSession, *, peer: str, forwarded_for: str | None
) -> str:
    """Sign in with a wrong password and return the address its activity row recorded."""
    email = f"edge-{uuid.uuid4().hex[:10]}@example.com"
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for is not None else {}
    transport = httpx.ASGITransport(app=app, client=(peer, 4321))
    async with httpx.AsyncClient(transport=transport, base_url="http://atlas") as client:
        response = await client.post(
            "/graphql",
            json={
                "query": "mutation($e: String!) { login(input: {email: $e, password: "
                '"wrong-password"}) { accessToken } }',
                "variables": {"e": email},
            },
            headers=headers,
        )
    assert response.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    address = (
        await db.execute(
            sa.text(
                "SELECT ip_address FROM activity_logs "
                "WHERE action = 'auth.login_failed' AND details->>'email' = :e"
            ),
            {"e": email},
        )
    ).scalar_one()
    return str(address)


async def test_the_app_records_the_client_behind_a_trusted_proxy(
    app_with: Any, db: AsyncSession
) -> None:
    app = await app_with(atlas_trusted_proxies=[ip_network("10.0.0.0/8")])
    # A client cannot choose its recorded address by writing X-Forwarded-For itself.
    for spoofed in ("6.6.6.6", "127.0.0.1", "garbage", "::1"):
        recorded = await failed_login_address(
            app, db, peer="10.0.0.5", forwarded_for=f"{spoofed}, 198.51.100.23"
        )
        assert recorded == "198.51.100.23"
    assert await failed_login_address(app, db, peer="10.0.0.5", forwarded_for="junk") == (
        "10.0.0.5"
    )
    assert await failed_login_address(app, db, peer="203.0.113.5", forwarded_for="1.1.1.1") == (
        "203.0.113.5"
    )


async def test_the_app_trusts_no_proxy_by_default(app_with: Any, db: AsyncSession) -> None:
    app = await app_with()
    recorded = await failed_login_address(app, db, peer="127.0.0.1", forwarded_for="198.51.100.23")
    assert recorded == "127.0.0.1"


# --- request-body timeout ---------------------------------------------------------------------

WITH_BODY = {"type": "http", "headers": [(b"content-length", b"4")]}


async def stalled_body(first: bytes) -> AsyncIterator[bytes]:
    """A body whose client sends `first` and then nothing more (it never finishes)."""
    yield first
    await asyncio.Event().wait()


async def test_a_trickled_body_is_answered_408(app_with: Any) -> None:
    app = await app_with(atlas_body_timeout=0.3)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://atlas") as client:
        # (bounded, so that a regression fails instead of hanging the suite)
        response = await asyncio.wait_for(
            client.post(
                "/graphql",
                content=stalled_body(b'{"query": "{ __typ'),
                headers={"Content-Type": "application/json"},
            ),
            30,
        )
    assert response.status_code == 408
    assert response.headers["connection"] == "close"
    error = response.json()["errors"][0]
    assert error["extensions"]["code"] == "BAD_REQUEST"
    assert "0.3 seconds" in error["message"]


async def test_a_trickled_upload_is_answered_408(app_with: Any) -> None:
    app = await app_with(atlas_body_timeout=0.3)
    boundary = "atlasboundary"
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="operations"\r\n\r\n'
        '{"query": "mutation($f: Upload!) { uploadFile(file: $f) { id } }", '
        '"variables": {"f": null}}\r\n'
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="map"\r\n\r\n'
        '{"0": ["variables.f"]}\r\n'
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="0"; filename="a.txt"\r\n'
        "Content-Type: text/plain\r\n\r\n"
        "the start of a file that never ends"
    ).encode()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://atlas") as client:
        # (bounded, so that a regression fails instead of hanging the suite)
        response = await asyncio.wait_for(
            client.post(
                "/graphql",
                content=stalled_body(head),
                headers={
                    "Content-Type": f"multipart/form-data; boundary={boundary}",
                    "Apollo-Require-Preflight": "true",
                },
            ),
            30,
        )
    assert response.status_code == 408
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"


async def test_a_body_in_several_chunks_within_the_limit_is_served(app_with: Any) -> None:
    app = await app_with(atlas_body_timeout=5)

    async def chunks() -> AsyncIterator[bytes]:
        for chunk in (b'{"query":', b' "{ __typename }"', b"}"):
            yield chunk

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://atlas") as client:
        response = await client.post(
            "/graphql", content=chunks(), headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 200
    assert response.json() == {"data": {"__typename": "Query"}}


async def test_the_timeout_ends_with_the_body() -> None:
    """Once the body is in, waiting on `receive` (for a disconnect, as streamed responses do)
    is not bounded by the body timeout."""
    released = asyncio.Event()
    messages: list[Message] = [
        {"type": "http.request", "body": b"done", "more_body": False},
    ]

    async def receive() -> Message:
        if messages:
            return messages.pop(0)
        await released.wait()
        return {"type": "http.disconnect"}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive())["body"] == b"done"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        assert (await receive())["type"] == "http.disconnect"

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    # The disconnect comes after the timeout instant (same loop clock): a bounded wait would
    # have given way first.
    asyncio.get_running_loop().call_later(0.2, released.set)
    await BodyTimeoutMiddleware(app, timeout=0.05)(WITH_BODY, receive, send)
    assert [message["type"] for message in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 200


async def test_the_timeout_after_a_response_started_ends_the_request_without_a_second_one() -> None:
    async def receive() -> Message:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await receive()

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    # (bounded, so that a regression fails instead of hanging the suite)
    await asyncio.wait_for(BodyTimeoutMiddleware(app, timeout=0.05)(WITH_BODY, receive, send), 30)
    assert [message.get("status") for message in sent] == [200]


async def _never_receive() -> Message:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def _discard(message: Message) -> None:
    return None


async def websocket_handshake(app: Any, scope: dict[str, Any]) -> list[Message]:
    """Open a WebSocket to the app at the ASGI boundary, then disconnect: what it sent."""
    sent: list[Message] = []
    incoming: asyncio.Queue[Message] = asyncio.Queue()
    incoming.put_nowait({"type": "websocket.connect"})

    async def send(message: Message) -> None:
        sent.append(message)
        # Answered (accepted or refused): the client goes away.
        incoming.put_nowait({"type": "websocket.disconnect", "code": 1000})

    await asyncio.wait_for(app(scope, incoming.get, send), 10)
    return sent


def graphql_websocket_scope(peer: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "path": "/graphql",
        "raw_path": b"/graphql",
        "root_path": "",
        "query_string": b"",
        "server": ("atlas", 80),
        "client": (peer, 4321),
        "headers": [(b"host", b"atlas"), *headers],
        "subprotocols": ["graphql-transport-ws"],
        "extensions": {},
    }


async def test_the_graphql_websocket_bypasses_the_chain_but_keeps_its_rules(app_with: Any) -> None:
    """The GraphQL WebSocket does not pass the HTTP middleware chain (app.AtlasApp): it still
    sees the real client behind a trusted proxy, the view still refuses a foreign Origin, and
    once accepted it keeps only the headers its operations read."""
    app = await app_with(
        atlas_trusted_proxies=[ip_network("10.0.0.0/8")],
        atlas_cors_origins=["https://app.example"],
    )
    proxied = [
        (b"x-forwarded-for", b"6.6.6.6, 198.51.100.23"),
        (b"x-forwarded-proto", b"https"),
        (b"user-agent", b"tests"),
        (b"cookie", b"a=b"),
    ]
    scope = graphql_websocket_scope("10.0.0.5", [*proxied, (b"origin", b"https://app.example")])
    sent = await websocket_handshake(app, scope)
    assert sent[0]["type"] == "websocket.accept"
    assert sent[0]["subprotocol"] == "graphql-transport-ws"
    assert scope["client"] == ("198.51.100.23", 0)
    assert scope["scheme"] == "wss"
    assert sorted(name for name, _ in scope["headers"]) == [b"user-agent"]

    # An untrusted peer's proxy headers are ignored; a foreign page is refused (HTTP 403).
    scope = graphql_websocket_scope("203.0.113.5", [*proxied, (b"origin", b"https://evil.example")])
    sent = await websocket_handshake(app, scope)
    assert [message["type"] for message in sent] == ["websocket.close"]
    assert scope["client"] == ("203.0.113.5", 4321)
    assert scope["scheme"] == "ws"
