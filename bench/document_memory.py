"""Benchmark: the worker's memory while distinct, padded documents arrive.

    .venv/bin/python bench/document_memory.py [--documents 10000] [--padding 90000]
        [--anonymous] [--concurrency 4]

Serves the app with uvicorn in a subprocess (one worker, on a throw-away database on
127.0.0.1:5432 that is dropped afterwards), then sends --documents distinct documents, each
padded with comments, whitespace or a long string to about --padding bytes: half as HTTP
POSTs, half as `subscribe` messages on one graphql-transport-ws socket. Every document is new
to the server, as an attacker's would be. By default the requests carry a signed-in user's
token, so documents up to 32 KiB (try --padding 20000) enter the parse/validation cache,
which then fills to its byte budget and stays there; with --anonymous nothing enters it.
Prints the worker's RSS (from /proc) before, every 1,000 documents, and after, with the
document cache's entries and bytes (from a bench-only route).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import websockets
from sqlalchemy.ext.asyncio import AsyncSession

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atlas_gql.auth.account import find_user_by_email  # noqa: E402
from atlas_gql.auth.sessions import start_session  # noqa: E402
from atlas_gql.config import Settings  # noqa: E402
from atlas_gql.db.engine import create_engine, drop_database, ensure_database  # noqa: E402
from atlas_gql.db.migrate import upgrade_to_head  # noqa: E402
from atlas_gql.db.url import DatabaseTarget, parse_database_url  # noqa: E402
from atlas_gql.seed import seed  # noqa: E402

LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
JWT_SECRET = "bench-secret-" + "x" * 40
CACHE_PATH = "/__bench/cache"


def settings_for(target: DatabaseTarget) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=target.url.render_as_string(hide_password=False),
        atlas_env="development",
        atlas_jwt_secret=JWT_SECRET,
        atlas_access_token_ttl=3600,
        redis_url=None,
        openai_api_key="sk-bench",
    )


def serve(database_url: str, port: int) -> None:
    """The app on 127.0.0.1:port, plus a route that reports the document cache."""
    import uvicorn

    from atlas_gql.app import create_app, tune_garbage_collector

    settings = settings_for(parse_database_url(database_url))
    app = create_app(settings)
    tune_garbage_collector()  # as `atlas-gql serve` (app_factory) does

    async def with_cache_report(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == CACHE_PATH:
            cache = app.state.atlas["schema"].document_guard.cache
            report = {"entries": len(cache), "bytes": cache.total_bytes, "max": cache.max_bytes}
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": json.dumps(report).encode()})
            return
        await app(scope, receive, send)

    uvicorn.run(
        with_cache_report,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        ws_max_size=settings.atlas_max_body_bytes,
    )


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def padded_document(index: int, padding: int) -> str:
    """A distinct document of about `padding` bytes, padded one of three ways."""
    head = f"query Doc{index} {{ d{index}: __typename }}\n"
    kind = index % 3
    if kind == 0:  # comment lines (each one token; long lines keep the token count low)
        line = "#" + "c" * 1000 + "\n"
        return head + line * max(1, (padding - len(head)) // len(line))
    if kind == 1:  # whitespace
        return head + " " * max(0, padding - len(head))
    string = "s" * max(0, padding - len(head) - 40)  # node() answers BAD_USER_INPUT for it
    return f'query Doc{index} {{ d{index}: __typename a: node(id: "{string}") {{ id }} }}'


async def main_async(args: argparse.Namespace) -> None:
    server = parse_database_url(LOCAL_SERVER)
    target = server.with_database(f"atlas_bench_{uuid.uuid4().hex[:8]}")
    await ensure_database(target)
    process: subprocess.Popen[bytes] | None = None
    try:
        await asyncio.to_thread(upgrade_to_head, target)
        engine = create_engine(target, pool_size=1)
        async with AsyncSession(engine) as db, db.begin():
            await seed(db, settings=settings_for(target))
        async with AsyncSession(engine) as db, db.begin():
            user = await find_user_by_email(db=db, email="user@example.com")
            assert user is not None
            token = (
                await start_session(db=db, settings=settings_for(target), user_id=user.id)
            ).access_token
        await engine.dispose()

        port = free_port()
        url = target.url.render_as_string(hide_password=False)
        process = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, __file__, "--serve", url, str(port)], env={**os.environ}
        )
        base_url = f"http://127.0.0.1:{port}"
        await wait_until_up(base_url, process)
        headers = {} if args.anonymous else {"Authorization": f"Bearer {token}"}
        await run_load(args, process.pid, base_url, port, headers, token)
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
        await drop_database(target)


async def run_load(
    args: argparse.Namespace,
    pid: int,
    base_url: str,
    port: int,
    headers: dict[str, str],
    token: str,
) -> None:
    limits = httpx.Limits(max_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:
        for index in range(50):  # warm up: code paths, pools, allocator arenas
            await client.post("/graphql", json={"query": f"{{ w{index}: __typename }}"})
        before = rss_mib(pid)
        cache = (await client.get(CACHE_PATH)).json()
        print(
            f"{args.documents} documents of ~{args.padding} bytes each, "
            f"{'anonymous' if args.anonymous else 'signed in (cached when at most 32 KiB)'}; "
            f"cache budget {cache['max'] / 2**20:.0f} MiB"
        )
        load = os.getloadavg()
        print(f"machine: {os.cpu_count()} cores, load average {load[0]:.1f} {load[1]:.1f}")
        print(f"{'sent':>7} {'via':>5} {'RSS MiB':>8} {'cache entries':>14} {'cache MiB':>10}")
        print(
            f"{0:>7} {'-':>5} {before:>8.1f} {cache['entries']:>14} {cache['bytes'] / 2**20:>10.1f}"
        )
        half = args.documents // 2
        samples = [before]
        started = time.perf_counter()
        failures = 0

        async def report(sent: int, via: str) -> None:
            rss = rss_mib(pid)
            samples.append(rss)
            state = (await client.get(CACHE_PATH)).json()
            print(
                f"{sent:>7} {via:>5} {rss:>8.1f} {state['entries']:>14} "
                f"{state['bytes'] / 2**20:>10.1f}"
            )

        next_index = 0

        async def http_worker() -> None:
            nonlocal next_index, failures
            while next_index < half:
                index = next_index
                next_index += 1
                document = padded_document(index, args.padding)
                response = await client.post("/graphql", json={"query": document}, headers=headers)
                if response.status_code != 200 or unexpected(response.json()):
                    failures += 1
                if (index + 1) % args.every == 0:
                    await report(index + 1, "http")

        await asyncio.gather(*(http_worker() for _ in range(args.concurrency)))

        async with websockets.connect(
            f"ws://127.0.0.1:{port}/graphql",
            subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
            max_size=None,
        ) as ws:
            init = {"type": "connection_init", "payload": {}}
            if not args.anonymous:
                init["payload"] = {"Authorization": f"Bearer {token}"}
            await ws.send(json.dumps(init))
            assert json.loads(await ws.recv())["type"] == "connection_ack"
            for index in range(half, args.documents):
                document = padded_document(index, args.padding)
                message = {"id": str(index), "type": "subscribe", "payload": {"query": document}}
                await ws.send(json.dumps(message))
                while True:
                    answer = json.loads(await ws.recv())
                    if answer.get("id") != str(index):
                        continue
                    if answer["type"] == "next" and unexpected(answer["payload"]):
                        failures += 1
                    if answer["type"] in {"complete", "error"}:
                        failures += answer["type"] == "error"
                        break
                if (index + 1) % args.every == 0:
                    await report(index + 1, "ws")
        elapsed = time.perf_counter() - started
        after = rss_mib(pid)
        print(
            f"RSS before {before:.1f} MiB, peak {max(samples):.1f} MiB, after {after:.1f} MiB "
            f"(+{after - before:.1f} MiB) for {args.documents} documents "
            f"({args.documents * args.padding / 2**20:.0f} MiB sent) in {elapsed:.0f} s; "
            f"{failures} unexpected answers"
        )


def unexpected(body: dict[str, Any]) -> bool:
    """Anything but data and, for the string-padded documents, node()'s BAD_USER_INPUT."""
    codes = {error.get("extensions", {}).get("code") for error in body.get("errors", [])}
    return not codes <= {"BAD_USER_INPUT"} or not body.get("data")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def wait_until_up(base_url: str, process: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient(base_url=base_url) as client:
        for _ in range(300):
            if process.poll() is not None:
                raise SystemExit(f"server exited with {process.returncode}")
            try:
                if (await client.get("/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit("server did not start")


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=10_000)
    parser.add_argument("--padding", type=int, default=90_000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--anonymous", action="store_true")
    parser.add_argument("--every", type=int, default=1_000, help="report every N documents")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
