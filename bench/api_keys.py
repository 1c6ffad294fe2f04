"""Benchmark: what a personal API key costs per request, next to an access token.

    .venv/bin/python bench/api_keys.py [--requests 300] [--server postgresql://postgres@127.0.0.1:5432/postgres]

Makes a throw-away database on the server (migrated, seeded, dropped afterwards), runs the
app in this process behind httpx's ASGI transport (no sockets: the server's own cost plus the
client's), and sends the same queries signed in (access token; queries take the compiled read
path) and with a key (resolver path, docs/api-keys.md). Printed per case: p50 and p95 latency
and the SQL statements per request (the key's last-use write happens at most once a minute,
so it is outside the steady state measured here)."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atlas_gql.app import create_app
from atlas_gql.auth.account import find_user_by_email
from atlas_gql.auth.sessions import start_session
from atlas_gql.config import Settings
from atlas_gql.db.engine import create_engine, drop_database, ensure_database
from atlas_gql.db.migrate import upgrade_to_head
from atlas_gql.db.url import parse_database_url
from atlas_gql.seed import seed

QUERIES = {
    "me": "{ me { email } }",
    "projects": "{ projects(first: 20) { totalCount nodes { name members { totalCount } } } }",
}
CREATE_KEY = 'mutation { createApiKey(input: {name: "bench"}) { secret } }'


async def measure(client: httpx.AsyncClient, engine: Any, token: str, query: str, n: int) -> str:
    statements = 0

    def count(*_: Any) -> None:
        nonlocal statements
        statements += 1

    headers = {"Authorization": f"Bearer {token}"}
    for _ in range(20):  # warm up: document caches, prepared statements, pool
        await client.post("/graphql", json={"query": query}, headers=headers)
    sa.event.listen(engine.sync_engine, "before_cursor_execute", count)
    timings = []
    try:
        for _ in range(n):
            started = time.perf_counter()
            response = await client.post("/graphql", json={"query": query}, headers=headers)
            timings.append(time.perf_counter() - started)
            assert "errors" not in response.json(), response.text
    finally:
        sa.event.remove(engine.sync_engine, "before_cursor_execute", count)
    timings.sort()
    p50 = statistics.median(timings) * 1000
    p95 = timings[int(len(timings) * 0.95)] * 1000
    return f"p50 {p50:6.2f} ms  p95 {p95:6.2f} ms  {statements / n:4.1f} SQL/request (ORM)"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    target = parse_database_url(args.server).with_database(f"atlas_bench_{uuid.uuid4().hex[:8]}")
    await ensure_database(target)
    try:
        await asyncio.to_thread(upgrade_to_head, target)
        settings = Settings(
            _env_file=None,
            database_url=target.url.render_as_string(hide_password=False),
            atlas_jwt_secret="bench-secret-" + "x" * 40,
            atlas_seed_password="bench-password",
            atlas_user_messages_per_minute=1_000_000,
        )
        engine = create_engine(target, pool_size=5)
        async with AsyncSession(engine) as db, db.begin():
            await seed(db, settings=settings)
        async with AsyncSession(engine) as db:
            user = await find_user_by_email(db=db, email="pm@example.com")
            assert user is not None
            token = (await start_session(db=db, settings=settings, user_id=user.id)).access_token
            await db.commit()
        print(f"{args.requests} sequential requests each, in process (ASGI)")
        secret = ""
        for compiled in (True, False):
            app = create_app(
                settings.model_copy(update={"atlas_compiled_reads": compiled}), engine=engine
            )
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://b") as client:
                    if not secret:
                        created = await client.post(
                            "/graphql",
                            json={"query": CREATE_KEY},
                            headers={"Authorization": f"Bearer {token}"},
                        )
                        secret = created.json()["data"]["createApiKey"]["secret"]
                    cases = [("access token", token), ("API key", secret)]
                    if not compiled:
                        cases = cases[:1]  # a key takes the resolver path either way
                    path = "compiled reads on" if compiled else "compiled reads off"
                    for name, query in QUERIES.items():
                        for label, credential in cases:
                            figures = await measure(
                                client, engine, credential, query, args.requests
                            )
                            print(f"  {name:9s} {label:13s} ({path:18s}) {figures}")
        await engine.dispose()
    finally:
        await drop_database(target)


if __name__ == "__main__":
    asyncio.run(main())
