"""Benchmark: what the HTTP edge costs and what it holds off.

    .venv/bin/python bench/edge.py [--requests 50000] [--slow 1000] [--header-timeout 2]

1. Overhead: the time the edge middleware (client address behind a trusted proxy, body
   timeout) adds per request, calling the ASGI stack in-process with and without it.
2. Slow clients: a uvicorn subprocess with `atlas-gql serve`'s HTTP protocol and a trivial app;
   N connections each send half a request head and stall (slowloris). Prints the latency of
   normal requests meanwhile, and how long until the server has closed every stalled one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from ipaddress import ip_network
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from atlas_gql.edge import BodyTimeoutMiddleware, ClientAddressMiddleware


async def trivial_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def per_request_seconds(app: Any, requests: int) -> float:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/graphql",
        "scheme": "http",
        "client": ("10.0.0.3", 40000),
        "headers": [
            (b"content-type", b"application/json"),
            (b"x-forwarded-for", b"203.0.113.9, 198.51.100.7"),
        ],
    }
    body: Message = {"type": "http.request", "body": b'{"query":"{ __typename }"}'}

    async def receive() -> Message:
        return body

    async def send(message: Message) -> None:
        return None

    started = time.perf_counter()
    for _ in range(requests):
        await app(dict(scope), receive, send)
    return (time.perf_counter() - started) / requests


async def overhead(requests: int) -> None:
    edge = ClientAddressMiddleware(
        BodyTimeoutMiddleware(trivial_app, timeout=30), trusted_proxies=[ip_network("10.0.0.0/8")]
    )
    bare = min([await per_request_seconds(trivial_app, requests) for _ in range(3)])
    with_edge = min([await per_request_seconds(edge, requests) for _ in range(3)])
    print(
        f"edge middleware: {(with_edge - bare) * 1e6:.1f} µs per request "
        f"(bare app {bare * 1e6:.1f} µs, with edge {with_edge * 1e6:.1f} µs; {requests} calls)"
    )


async def request_latency(port: int) -> float:
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
    await reader.read()
    writer.close()
    return time.perf_counter() - started


async def slow_clients(server: subprocess.Popen[bytes], port: int, count: int) -> None:
    try:
        for _ in range(300):
            try:
                await request_latency(port)
                break
            except OSError:
                await asyncio.sleep(0.1)
        baseline = [await request_latency(port) for _ in range(50)]
        started = time.perf_counter()
        stalled = []
        for _ in range(count):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /graphql HTTP/1.1\r\nHost: bench\r\nContent-Le")
            stalled.append((reader, writer))
        during = [await request_latency(port) for _ in range(50)]
        closed = await asyncio.gather(*(reader.read() for reader, _ in stalled))
        elapsed = time.perf_counter() - started
        for _, writer in stalled:
            writer.close()
        assert all(data == b"" for data in closed)
        print(
            f"slow clients: {count} stalled request heads all closed "
            f"{elapsed:.2f} s after the first opened "
            f"(ATLAS_HEADER_TIMEOUT={os.environ['ATLAS_HEADER_TIMEOUT']}); "
            f"normal request p50 {statistics.median(baseline) * 1e3:.2f} ms before, "
            f"{statistics.median(during) * 1e3:.2f} ms while they were open"
        )
    finally:
        server.terminate()
        server.wait()


def serve(port: int) -> None:
    import uvicorn

    from atlas_gql.serving import HTTP_PROTOCOL

    uvicorn.run(trivial_app, host="127.0.0.1", port=port, http=HTTP_PROTOCOL, log_level="error")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--slow", type=int, default=1000)
    parser.add_argument("--header-timeout", type=float, default=2)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    asyncio.run(overhead(args.requests))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ["ATLAS_HEADER_TIMEOUT"] = f"{args.header_timeout:g}"
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    asyncio.run(slow_clients(server, port, args.slow))


if __name__ == "__main__":
    main()
