"""The HTTP edge, as ASGI middleware: who the client is behind trusted proxies, how long a
client may take to send its request body, and CORS whose refusals are JSON. They run inside
the app, so they hold under any ASGI server (and under httpx's ASGITransport in tests), not
only under `atlas-gql serve`."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from atlas_gql.errors import HttpGuard, error_body, run_or_refuse, send_error_response

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

_SCHEMES = {
    "http": {"http": "http", "https": "https"},
    "websocket": {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"},
}


def parse_address(text: str) -> IPAddress | None:
    """An IP address as a peer or a proxy header writes it (`1.2.3.4`, `2001:db8::1`,
    `[2001:db8::1]`, with or without `:port`), IPv4-mapped IPv6 as IPv4; None for anything else."""
    text = text.strip()
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed or (rest and not (rest[:1] == ":" and rest[1:].isdigit())):
            return None
        text = host
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
        if not port.isdigit():
            return None
        text = host
    try:
        address = ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_trusted(address: IPAddress, trusted: Sequence[IPNetwork]) -> bool:
    return any(address in network for network in trusted)


class ClientAddresses:
    """Sets `scope["client"]` to the real client, and `scope["scheme"]` from
    X-Forwarded-Proto, when the connection comes from one of ATLAS_TRUSTED_PROXIES; other
    peers' proxy headers are ignored.

    The client is found by walking X-Forwarded-For from the right (the hop nearest to us)
    while the hop is a trusted proxy: the first address that is not one. What a client wrote
    further left is never believed; an entry that is not an IP address ends the walk (the
    header is malformed from there on), keeping the last address established. Addresses are
    written canonically (one spelling per address, IPv4-mapped IPv6 as IPv4), so per-address
    limits cannot be dodged by spelling an address differently.

    `ClientAddressMiddleware` applies it to HTTP requests and WebSockets; the GraphQL
    WebSocket's entry (`app.AtlasApp`), which bypasses the middleware chain, calls `rewrite`."""

    def __init__(self, *, trusted_proxies: Sequence[IPNetwork]) -> None:
        self.trusted = tuple(trusted_proxies)
        # Peers and proxy hops repeat: parsing, printing and matching them is most of the cost.
        self._classify = functools.lru_cache(maxsize=4096)(self._classify_address)

    def _classify_address(self, text: str) -> tuple[str, bool] | None:
        """(canonical spelling, is a trusted proxy) of an address; None if it is not one."""
        address = parse_address(text)
        if address is None:
            return None
        return str(address), _is_trusted(address, self.trusted)

    def rewrite(self, scope: Scope) -> None:
        """The scope's real client (and scheme), as described above."""
        if scope["type"] not in _SCHEMES or not scope.get("client"):
            return
        host, port = scope["client"]
        peer = self._classify(str(host))
        if peer is None:  # not an IP peer (a Unix socket, a test double): nothing to trust
            return
        client, trusted = peer
        if trusted:
            forwarded_for: list[str] = []
            proto: str | None = None
            for name, value in scope.get("headers", ()):
                if name == b"x-forwarded-for":
                    forwarded_for.extend(value.decode("latin-1").split(","))
                elif name == b"x-forwarded-proto":
                    proto = value.decode("latin-1")
            for entry in reversed(forwarded_for):
                hop = self._classify(entry.strip())
                if hop is None:
                    break
                client, trusted = hop
                port = 0
                if not trusted:
                    break
            if proto is not None:
                # The right-most value is the one the trusted peer itself vouches for.
                scheme = _SCHEMES[scope["type"]].get(proto.rsplit(",", 1)[-1].strip().lower())
                if scheme is not None:
                    scope["scheme"] = scheme
        if client != host:
            scope["client"] = (client, port)


class ClientAddressMiddleware(ClientAddresses):
    """`ClientAddresses` as ASGI middleware: what runs inside it sees the real client."""

    def __init__(self, app: ASGIApp, *, trusted_proxies: Sequence[IPNetwork]) -> None:
        super().__init__(trusted_proxies=trusted_proxies)
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.rewrite(scope)
        await self.app(scope, receive, send)


class BodyTimeoutMiddleware(HttpGuard):
    """Answers 408 when a client has not sent its whole request body within ATLAS_BODY_TIMEOUT
    seconds of the request's start (a client trickling a body would otherwise hold a worker's
    request, its memory and its connection for as long as it likes)."""

    def __init__(self, app: ASGIApp, *, timeout: float) -> None:
        super().__init__(app)
        self.timeout = timeout

    async def guard(self, scope: Scope, receive: Receive, send: Send) -> None:
        deadline = asyncio.get_running_loop().time() + self.timeout
        # Without Content-Length or Transfer-Encoding a request has no body (RFC 9112 6.3):
        # nothing to wait for, so no timer either (GET, health checks, static assets).
        body_complete = not any(
            name in (b"content-length", b"transfer-encoding")
            for name, _ in scope.get("headers", ())
        )

        async def timed_receive() -> Message:
            nonlocal body_complete
            if body_complete:
                # Afterwards the app only waits for a disconnect (streamed responses): unbounded.
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise _BodyTimedOut from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_complete = True
            return message

        await run_or_refuse(
            self.app,
            scope,
            timed_receive,
            send,
            refusal=_BodyTimedOut,
            refuse=functools.partial(_request_timeout, timeout=self.timeout),
        )


class _BodyTimedOut(Exception):
    pass


async def _request_timeout(send: Send, timeout: float) -> None:
    message = f"Request body not received within {timeout:g} seconds."
    # The rest of the body may still be on its way: do not read it as a request.
    await send_error_response(send, status=408, message=message, code="BAD_REQUEST", close=True)


class JsonCORSMiddleware(CORSMiddleware):
    """Starlette's CORS, whose refused preflight (400) has a JSON body with a code instead of
    the text "Disallowed CORS origin": every 4xx of the API is JSON."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        message = bytes(response.body).decode() + " (see ATLAS_CORS_ORIGINS)."
        headers = {
            key: value
            for key, value in response.headers.items()
            if key.lower() not in {"content-length", "content-type"}
        }
        return Response(
            error_body(message, "BAD_REQUEST"),
            status_code=response.status_code,
            headers=headers,
            media_type="application/json",
        )
