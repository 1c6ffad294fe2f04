"""Benchmark: the nested projects read (projects -> createdBy, members -> user, settings,
viewerRole, threads) against a real uvicorn, at a fixed concurrency.

    .venv/bin/python bench/projects_nested.py [--projects 200 --members 10 --threads 5
        --requests 800 --concurrency 10 --page 20]

Seeds N projects x M members x K threads into DATABASE_URL (migrated to head first), or into a
throw-away database on 127.0.0.1:5432 that is dropped afterwards. Serves the app with uvicorn
in a subprocess (so the load generator does not share the server's event loop), signs in,
fires the query with httpx, and prints requests/s, p50/p99 latency, SQL statements per
request and the server's CPU time per request (from /proc: a figure other load on the machine
moves much less than wall-clock ones). The server counts statements with a
`before_cursor_execute` listener on its engine and reports them on a bench-only route
(`/__bench/statements`), which the real app does not have.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atlas_gql.ai.models import Thread  # noqa: E402
from atlas_gql.auth.models import Role, RoleName, User, UserRole  # noqa: E402
from atlas_gql.auth.sessions import start_session  # noqa: E402
from atlas_gql.config import Settings  # noqa: E402
from atlas_gql.db.engine import create_engine, drop_database, ensure_database  # noqa: E402
from atlas_gql.db.migrate import upgrade_to_head  # noqa: E402
from atlas_gql.db.url import DatabaseTarget, parse_database_url  # noqa: E402
from atlas_gql.projects.models import (  # noqa: E402
    Project,
    ProjectMember,
    ProjectRole,
    ProjectSetting,
)
from atlas_gql.seed import seed  # noqa: E402

LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
JWT_SECRET = "bench-secret-" + "x" * 40
STATEMENTS_PATH = "/__bench/statements"

NESTED_QUERY = """
query Nested($first: Int!) {
  projects(first: $first) {
    edges { node {
      createdBy { email }
      members(first: 10) { totalCount edges { node { role user { email } } } }
      settings { key }
      viewerRole
      threads(first: 3) { edges { node { title } } }
    } }
  }
}"""


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


# --- the server (subprocess) -------------------------------------------------------------


def serve(database_url: str, port: int) -> None:
    """Run the app on 127.0.0.1:port with a statement counter on its engine."""
    import uvicorn

    from atlas_gql.app import create_app, tune_garbage_collector

    target = parse_database_url(database_url)
    engine = create_engine(target, pool_size=20)
    counter = {"statements": 0}

    def count(*_: Any) -> None:
        counter["statements"] += 1

    sa.event.listen(engine.sync_engine, "before_cursor_execute", count)
    app = create_app(settings_for(target), engine=engine)
    tune_garbage_collector()  # as `atlas-gql serve` (app_factory) does

    async def with_counter(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == STATEMENTS_PATH:
            body = json.dumps(counter).encode()
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)

    uvicorn.run(with_counter, host="127.0.0.1", port=port, log_level="warning", lifespan="on")


# --- seeding ------------------------------------------------------------------------------


async def seed_data(
    target: DatabaseTarget, *, projects: int, members: int, threads: int
) -> uuid.UUID:
    """N projects owned by a new PROJECT_MANAGER, each with M-1 other members, K threads and a
    setting. Returns the owner's user id."""
    engine = create_engine(target, pool_size=1)
    try:
        async with AsyncSession(engine) as db, db.begin():
            await seed(db, settings=settings_for(target))
        run = uuid.uuid4().hex[:8]
        async with AsyncSession(engine) as db, db.begin():
            users = [
                {"id": uuid.uuid4(), "email": f"bench-{run}-{i}@example.com", "password_hash": "x"}
                for i in range(max(members, 1))
            ]
            await db.execute(sa.insert(User), users)
            owner_id = users[0]["id"]
            role_id = (
                await db.execute(
                    sa.select(Role.id).where(Role.name == RoleName.PROJECT_MANAGER)  # type: ignore[arg-type]
                )
            ).scalar_one()
            await db.execute(sa.insert(UserRole), [{"user_id": owner_id, "role_id": role_id}])
            project_rows = [
                {"id": uuid.uuid4(), "name": f"Bench {run} {i:04d}", "created_by_id": owner_id}
                for i in range(projects)
            ]
            await db.execute(sa.insert(Project), project_rows)
            member_rows, thread_rows, setting_rows = [], [], []
            for project in project_rows:
                for index, user in enumerate(users):
                    role = ProjectRole.OWNER if index == 0 else ProjectRole.MEMBER
                    member_rows.append(
                        {"project_id": project["id"], "user_id": user["id"], "role": role}
                    )
                for number in range(threads):
                    thread_rows.append(
                        {
                            "project_id": project["id"],
                            "created_by_id": owner_id,
                            "title": f"Thread {number}",
                        }
                    )
                setting_rows.append(
                    {"project_id": project["id"], "setting_key": "monthlyTokenBudget", "value": 1}
                )
            await db.execute(sa.insert(ProjectMember), member_rows)
            if thread_rows:
                await db.execute(sa.insert(Thread), thread_rows)
            await db.execute(sa.insert(ProjectSetting), setting_rows)
        async with AsyncSession(engine) as db:
            await db.execute(sa.text("ANALYZE"))
        return owner_id
    finally:
        await engine.dispose()


async def sign_in(target: DatabaseTarget, user_id: uuid.UUID) -> str:
    engine = create_engine(target, pool_size=1)
    try:
        async with AsyncSession(engine) as db, db.begin():
            tokens = await start_session(db=db, settings=settings_for(target), user_id=user_id)
        return tokens.access_token
    finally:
        await engine.dispose()


# --- the load -----------------------------------------------------------------------------


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


async def statements(client: httpx.AsyncClient) -> int:
    return int((await client.get(STATEMENTS_PATH)).json()["statements"])


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of process `pid` so far (Linux /proc; 0 elsewhere). Unlike
    wall-clock figures, it does not grow when other work shares the machine."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load(
    base_url: str,
    token: str,
    *,
    requests: int,
    concurrency: int,
    page: int,
    server_pid: int | None = None,
) -> dict[str, float]:
    payload = {"query": NESTED_QUERY, "variables": {"first": page}}
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:
        # Warm up (connection pool, prepared statements) and check the answer once.
        check = (await client.post("/graphql", json=payload, headers=headers)).json()
        if "errors" in check:
            raise SystemExit(f"query failed: {check['errors']}")
        edges = check["data"]["projects"]["edges"]
        for _ in range(3 * concurrency):
            await client.post("/graphql", json=payload, headers=headers)

        latencies: list[float] = []
        failures = 0
        remaining = requests

        async def worker() -> None:
            nonlocal remaining, failures
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                response = await client.post("/graphql", json=payload, headers=headers)
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200 or "errors" in response.json():
                    failures += 1

        before = await statements(client)
        cpu_before = cpu_seconds(server_pid)
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(server_pid) - cpu_before
        after = await statements(client)
    latencies.sort()
    return {
        "projects_per_response": len(edges),
        "requests": len(latencies),
        "failures": failures,
        "seconds": elapsed,
        "requests_per_second": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000,
        "statements_per_request": (after - before) / len(latencies),
        "server_cpu_ms": 1000 * cpu / len(latencies),
    }


async def main(args: argparse.Namespace) -> None:
    own_database = not os.environ.get("DATABASE_URL")
    if own_database:
        server = parse_database_url(LOCAL_SERVER)
        target = server.with_database(f"atlas_bench_{uuid.uuid4().hex[:10]}")
    else:
        target = parse_database_url(os.environ["DATABASE_URL"])
    await ensure_database(target)
    process: subprocess.Popen[bytes] | None = None
    try:
        await asyncio.to_thread(upgrade_to_head, target)
        seeding = time.perf_counter()
        owner_id = await seed_data(
            target, projects=args.projects, members=args.members, threads=args.threads
        )
        print(
            f"seeded {args.projects} projects x {args.members} members x {args.threads} threads "
            f"in {time.perf_counter() - seeding:.1f}s ({'throw-away' if own_database else 'given'}"
            f" database {target.database})"
        )
        token = await sign_in(target, owner_id)
        port = free_port()
        url = target.url.render_as_string(hide_password=False)
        process = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, __file__, "--serve", url, "--port", str(port)], cwd=ROOT
        )
        base_url = f"http://127.0.0.1:{port}"
        await wait_until_up(base_url, process)
        figures = await load(
            base_url,
            token,
            requests=args.requests,
            concurrency=args.concurrency,
            page=args.page,
            server_pid=process.pid,
        )
        print(
            f"nested query, projects(first: {args.page}) with members(first: 10), createdBy, "
            f"settings, viewerRole, threads(first: 3); concurrency {args.concurrency}"
        )
        print(
            f"  requests       {figures['requests']:.0f} in {figures['seconds']:.1f}s "
            f"({figures['failures']:.0f} failed, {figures['projects_per_response']:.0f} "
            "projects per response)"
        )
        print(f"  requests/s     {figures['requests_per_second']:.1f}")
        print(f"  latency p50    {figures['p50_ms']:.1f} ms")
        print(f"  latency p99    {figures['p99_ms']:.1f} ms")
        print(f"  latency mean   {figures['mean_ms']:.1f} ms")
        print(f"  SQL statements per request  {figures['statements_per_request']:.2f}")
        print(f"  server CPU per request      {figures['server_cpu_ms']:.1f} ms")
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        if own_database:
            await drop_database(target)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--projects", type=int, default=200)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--threads", type=int, default=5)
    parser.add_argument("--requests", type=int, default=800)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--page", type=int, default=20, help="projects(first:) of the query")
    parser.add_argument("--serve", metavar="DATABASE_URL", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.serve:
        serve(arguments.serve, arguments.port)
    else:
        asyncio.run(main(arguments))
