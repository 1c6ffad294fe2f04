"""`atlas-gql serve` as a user runs it (a subprocess on a real socket): its start-up banner, the
limits on slow and oversized request heads and bodies, and client addresses behind proxies."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import websockets
from redis import Redis
from websockets.typing import Subprotocol

from atlas_gql.config import Settings
from atlas_gql.db.engine import _asyncpg_dsn
from atlas_gql.db.url import DatabaseTarget, parse_database_url
from atlas_gql.serving import banner, hide_url_password, listen_url

REDIS_URL = "redis://127.0.0.1:6379/0"
HEADER_TIMEOUT = 1
BODY_TIMEOUT = 1
MAX_HEADER_BYTES = 8192
SOCKET_TIMEOUT = 30  # the longest a test waits on the server; far above the timeouts under test


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Served:
    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path, **info: Any):
        self.process = process
        self.port = port
        self.log = log
        self.info = info

    def output(self) -> str:
        return self.log.read_text()

    def connect(self, source: str = "127.0.0.1") -> socket.socket:
        sock = socket.create_connection(
            ("127.0.0.1", self.port), timeout=SOCKET_TIMEOUT, source_address=(source, 0)
        )
        return sock


@pytest.fixture(scope="module")
def served(make_database: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One `atlas-gql serve` on a fresh database, with a password in its DATABASE_URL (the
    test server trusts local connections, so any password works), Redis as its broker, short
    timeouts, and 127.0.0.2 as its one trusted proxy."""
    target: DatabaseTarget = make_database("atlas_serve")
    password = target.url.password or "s3cret-db-password"
    url = target.url.set(drivername="postgresql", password=password).update_query_dict(
        {"schema": "public"}
    )
    prefix = f"atlas-test:{uuid.uuid4().hex}:"
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("ATLAS_", "DATABASE_URL", "OPENAI_", "REDIS_URL"))
    }
    environment.update(
        {
            "DATABASE_URL": url.render_as_string(hide_password=False),
            "REDIS_URL": REDIS_URL,
            "ATLAS_RATE_LIMIT_PREFIX": prefix,
            "ATLAS_SEED_PASSWORD": "serve-seed-password",
            "ATLAS_BCRYPT_ROUNDS": "4",
            "ATLAS_TRUSTED_PROXIES": "127.0.0.2",
            "ATLAS_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
            "ATLAS_BODY_TIMEOUT": str(BODY_TIMEOUT),
            "ATLAS_MAX_HEADER_BYTES": str(MAX_HEADER_BYTES),
        }
    )
    port = free_port()
    cwd = tmp_path_factory.mktemp("serve")
    log = cwd / "serve.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "atlas_gql", "serve", "--port", str(port)],
            cwd=cwd,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    served = Served(process, port, log, password=password, target=parse_database_url(str(url)))
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise AssertionError(f"serve exited:\n{served.output()}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "serve did not become ready"
            time.sleep(0.2)
        yield served
    finally:
        process.terminate()
        process.wait(60)
        redis = Redis.from_url(REDIS_URL)
        keys = list(redis.scan_iter(match=f"{prefix}*"))
        if keys:
            redis.delete(*keys)
        redis.close()


# --- banner -----------------------------------------------------------------------------------


def test_serve_states_where_it_listens_and_what_it_uses(served: Served) -> None:
    output = served.output()
    target: DatabaseTarget = served.info["target"]
    expected = [
        "ATLAS 0.1.0",
        f"  listening    http://127.0.0.1:{served.port}/graphql",
        "  workers      1",
        f"  database     postgresql+asyncpg://{target.url.username}:***@"
        f"{target.url.host}:{target.url.port}/{target.database} (schema public)",
        f"  broker       Redis at {REDIS_URL}",
        "  environment  development",
        "  proxies      127.0.0.2/32",
        "  metrics      GET /metrics, loopback clients only",
        "  logs         text, level INFO",
    ]
    start = output.index("ATLAS 0.1.0")
    assert output[start:].splitlines()[: len(expected)] == expected
    assert served.info["password"] not in output


def test_banner_hides_passwords_and_names_the_embedded_database(tmp_path: Path) -> None:
    settings = Settings(
        _env_file=None,
        atlas_env="production",
        atlas_jwt_secret="x" * 40,
        atlas_seed_password="a-production-seed",
        redis_url="rediss://atlas:redis-secret@cache.internal:6380/2",
        atlas_trusted_proxies=[ip_network("10.0.0.0/8"), ip_network("fd00::/8")],
    )
    text = banner(
        settings=settings,
        target=parse_database_url("postgresql://postgres:@/atlas?host=/run/pg"),
        host="::",
        port=9000,
        workers=4,
        reload=False,
        embedded_pgdata=tmp_path / "pgdata",
    )
    assert text.splitlines()[1:] == [
        "  listening    http://[::]:9000/graphql",
        "  workers      4",
        f"  database     embedded PostgreSQL in {tmp_path / 'pgdata'} (database atlas)",
        "  broker       Redis at rediss://atlas:***@cache.internal:6380/2",
        "  environment  production",
        "  proxies      10.0.0.0/8, fd00::/8",
        "  metrics      GET /metrics, loopback clients only; all workers' series (multiprocess)",
        "  logs         json, level INFO",
    ]
    assert "redis-secret" not in text


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw1@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://user:pw2@host/0", "redis://user:***@host/0"),
        ("redis://pw3@host", "redis://***@host"),
        ("redis://host:6379/0?password=pw4&db=1", "redis://host:6379/0?password=***&db=1"),
        ("unix:///run/redis.sock?password=pw5", "unix:///run/redis.sock?password=***"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("redis://us%40er:p%40ss@host", "redis://us%40er:***@host"),
    ],
)
def test_hide_url_password(url: str, shown: str) -> None:
    assert hide_url_password(url) == shown


def test_listen_url() -> None:
    assert listen_url("0.0.0.0", 80) == "http://0.0.0.0:80/graphql"
    assert listen_url("::1", 8000) == "http://[::1]:8000/graphql"
    assert listen_url("localhost", 8000) == "http://localhost:8000/graphql"


# --- slow and oversized request heads ---------------------------------------------------------


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (fails after
    SOCKET_TIMEOUT seconds if it never does)."""
    received = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return received
        except TimeoutError:
            raise AssertionError(f"the server kept the connection open; got {received!r}") from None
        if not chunk:
            return received
        received += chunk


def read_response(sock: socket.socket) -> bytes:
    """One whole response (head and Content-Length body), leaving the connection open."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        assert chunk, f"closed mid-response: {received!r}"
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, f"closed mid-body: {received!r}"
        body += chunk
    return head + b"\r\n\r\n" + body


def test_a_connection_that_never_sends_a_request_is_closed(served: Served) -> None:
    with served.connect() as sock:
        assert read_until_closed(sock) == b""


def test_a_request_line_cut_short_is_closed(served: Served) -> None:
    with served.connect() as sock:
        sock.sendall(b"POST /gra")
        assert read_until_closed(sock) == b""


def test_headers_that_stall_are_closed(served: Served) -> None:
    with served.connect() as sock:
        sock.sendall(b"POST /graphql HTTP/1.1\r\nHost: atlas\r\nContent-Type: appl")
        assert read_until_closed(sock) == b""


def test_the_next_request_on_a_kept_alive_connection_is_bounded_too(served: Served) -> None:
    with served.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: atlas\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: at")
        assert read_until_closed(sock) == b""


def test_oversized_headers_are_refused_with_431(served: Served) -> None:
    with served.connect() as sock:
        # One write, then silence: the server has read everything when it closes (unread data
        # would turn its close into a reset that can discard the response on its way).
        padding = b"".join(
            b"X-Pad-%d: " % index + b"a" * 1000 + b"\r\n"
            for index in range(2 * MAX_HEADER_BYTES // 1000)
        )
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: atlas\r\n" + padding)
        response = read_until_closed(sock)
    assert response.startswith(b"HTTP/1.1 431 ")
    body = json.loads(response.split(b"\r\n\r\n", 1)[1])
    assert body["errors"][0]["extensions"]["code"] == "BAD_REQUEST"


def test_a_complete_request_is_served(served: Served) -> None:
    body = b'{"query": "{ __typename }"}'
    with served.connect() as sock:
        sock.sendall(
            b"POST /graphql HTTP/1.1\r\nHost: atlas\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        response = read_until_closed(sock)
    assert response.startswith(b"HTTP/1.1 200")
    assert response.endswith(b'{"data":{"__typename":"Query"}}')


def test_a_body_that_stalls_gets_408_and_the_connection_closes(served: Served) -> None:
    with served.connect() as sock:
        sock.sendall(
            b"POST /graphql HTTP/1.1\r\nHost: atlas\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"query": "{ __ty'
        )
        response = read_until_closed(sock)
    assert response.startswith(b"HTTP/1.1 408")
    body = json.loads(response.split(b"\r\n\r\n", 1)[1])
    assert body["errors"][0]["extensions"]["code"] == "BAD_REQUEST"


async def test_a_websocket_outlives_the_header_deadline(served: Served) -> None:
    async with websockets.connect(
        f"ws://127.0.0.1:{served.port}/graphql", subprotocols=[Subprotocol("graphql-transport-ws")]
    ) as ws:
        await ws.send(json.dumps({"type": "connection_init"}))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        # A connection opened after the WebSocket is closed by its header deadline: the
        # WebSocket's own deadline has passed by then, and must not have closed it.
        late = served.connect()
        with late:
            assert await asyncio.to_thread(read_until_closed, late) == b""
        await ws.send(json.dumps({"type": "ping"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), SOCKET_TIMEOUT))["type"] == "pong"


# --- client addresses -------------------------------------------------------------------------


def failed_login_address(served: Served, *, source: str, forwarded_for: str) -> str:
    email = f"serve-{uuid.uuid4().hex[:10]}@example.com"
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=SOCKET_TIMEOUT) as client:
        response = client.post(
            f"http://127.0.0.1:{served.port}/graphql",
            json={
                "query": "mutation($e: String!) { login(input: {email: $e, password: "
                '"wrong-password"}) { accessToken } }',
                "variables": {"e": email},
            },
            headers={"X-Forwarded-For": forwarded_for},
        )
    assert response.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    target: DatabaseTarget = served.info["target"]

    async def fetch() -> str:
        conn = await asyncpg.connect(**_asyncpg_dsn(target, target.database))
        try:
            return str(
                await conn.fetchval(
                    "SELECT ip_address FROM activity_logs "
                    "WHERE action = 'auth.login_failed' AND details->>'email' = $1",
                    email,
                )
            )
        finally:
            await conn.close()

    return asyncio.run(fetch())


def test_serve_takes_the_client_address_from_trusted_proxies_only(served: Served) -> None:
    # 127.0.0.1, which uvicorn would trust on its own, is not in ATLAS_TRUSTED_PROXIES.
    assert failed_login_address(served, source="127.0.0.1", forwarded_for="198.51.100.60") == (
        "127.0.0.1"
    )
    assert (
        failed_login_address(served, source="127.0.0.2", forwarded_for="6.6.6.6, 198.51.100.61")
        == "198.51.100.61"
    )
    assert failed_login_address(served, source="127.0.0.2", forwarded_for="<script>") == (
        "127.0.0.2"
    )
