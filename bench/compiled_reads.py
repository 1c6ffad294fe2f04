"""Side by side: ATLAS and PostGraphile v4 serving issue 13's nested read from one database.

    .venv/bin/python bench/compiled_reads.py [--duration 10 --rounds 4 --repeats 2
        --connections 16 --database-url URL --servers postgraphile,atlas,atlas-off]

What it does:
- starts a dedicated PostgreSQL 15 (initdb in a temporary folder, pg_stat_statements
  preloaded, so the statements each server sends can be counted; stopped and removed at the
  end), unless --database-url names a server to use (then statements are counted only if that
  server preloads pg_stat_statements);
- creates a database with Alembic (ATLAS's migrations) and fills it with ATLAS's models: 20
  projects, 116 memberships and 58 threads, the 30 users they need, the seed's roles and
  permissions; the viewer owns the 20 projects;
- starts ATLAS (`atlas-gql serve --workers 1`, once with ATLAS_COMPILED_READS=true and once
  with false) and PostGraphile v4 (bench/postgraphile, Node 20) on that database. PostGraphile
  verifies the same access token (HS256, issuer and audience), runs as a role whose
  row-level-security policies check the token's session (live, user active) and show the
  projects the viewer belongs to with their members and threads, as ATLAS's session check
  and project rules do;
- checks that both answer the same data (ATLAS's global ids decoded to PostGraphile's uuids);
- counts SQL statements per request (pg_stat_statements, 50 sequential requests), measures
  the unloaded latency (wrk, one connection, p50), then runs wrk with 16 connections in
  alternating rounds (one round per server in turn), 4 rounds each, repeated twice, and
  prints requests/s per round and the medians.

wrk is installed with apt-get when missing (falls back to nothing: the script stops and says
so). PostGraphile is installed with `npm ci` in bench/postgraphile when node_modules is missing.
Size: over 400 lines on purpose: a self-contained benchmark script (servers, load tool,
report) that runs on its own; nothing in it is imported elsewhere.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atlas_gql.ai.models import Thread  # noqa: E402
from atlas_gql.auth.models import (  # noqa: E402
    Permission,
    PermissionName,
    Role,
    RoleName,
    RolePermission,
    User,
    UserRole,
)
from atlas_gql.auth.sessions import start_session  # noqa: E402
from atlas_gql.config import Settings  # noqa: E402
from atlas_gql.db.engine import create_engine, ensure_database  # noqa: E402
from atlas_gql.db.migrate import upgrade_to_head  # noqa: E402
from atlas_gql.db.url import DatabaseTarget, parse_database_url  # noqa: E402
from atlas_gql.projects.models import Project, ProjectMember, ProjectRole  # noqa: E402
from atlas_gql.seed import PERMISSION_DESCRIPTIONS, ROLE_DESCRIPTIONS, ROLE_PERMISSIONS  # noqa: E402

JWT_SECRET = "bench-secret-" + "x" * 40
POSTGRAPHILE_DIR = ROOT / "bench" / "postgraphile"
DATABASE = "atlas_bench_compiled"

# Issue 13's query, as a frontend sends it.
ATLAS_QUERY = """query Nested {
  projects(first: 20) { edges { node {
    id name
    createdBy { email }
    members(first: 10) { edges { node { role user { email name } } } }
    threads(first: 3) { edges { node { id title } } }
  } } }
}"""
# The same selection in PostGraphile's names, aliased to ATLAS's answer shape.
POSTGRAPHILE_QUERY = """query Nested {
  projects: allProjects(first: 20, orderBy: [CREATED_AT_DESC, ID_DESC]) { edges { node {
    id name
    createdBy: userByCreatedById { email }
    members: projectMembersByProjectId(first: 10, orderBy: [CREATED_AT_ASC, ID_ASC]) {
      edges { node { role user: userByUserId { email name } } }
    }
    threads: threadsByProjectId(first: 3, orderBy: [CREATED_AT_DESC, ID_DESC]) {
      edges { node { id title } }
    }
  } } }
}"""

# 20 projects: members per project (the owner included) sum to 116, threads to 58; some
# projects hold more than a page (10 members, 3 threads) so `first` cuts.
MEMBERS_PER_PROJECT = (12, 3, 8, 5, 6, 4, 7, 5, 6, 4, 9, 5, 4, 6, 5, 4, 7, 5, 6, 5)
THREADS_PER_PROJECT = (5, 2, 3, 1, 4, 3, 2, 3, 3, 2, 4, 3, 2, 3, 3, 2, 4, 3, 3, 3)
USERS = 30

# PostGraphile's side: a role, the session check and the project rule as row-level security.
POSTGRAPHILE_SETUP = """
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'atlas_bench_viewer') THEN
    CREATE ROLE atlas_bench_viewer NOLOGIN;
  END IF;
END $$;
CREATE SCHEMA IF NOT EXISTS atlas_bench;
GRANT USAGE ON SCHEMA public, atlas_bench TO atlas_bench_viewer;
GRANT SELECT ON projects, project_members, threads TO atlas_bench_viewer;
GRANT SELECT (id, email, name, is_active, created_at, updated_at) ON users TO atlas_bench_viewer;

-- The token's session is live and its user active (ATLAS's per-request session check).
CREATE OR REPLACE FUNCTION atlas_bench.viewer_id() RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public AS $f$
  SELECT users.id FROM users JOIN sessions ON sessions.user_id = users.id
  WHERE users.id = nullif(current_setting('jwt.claims.sub', true), '')::uuid
    AND sessions.id = nullif(current_setting('jwt.claims.sid', true), '')::uuid
    AND users.is_active AND sessions.revoked_at IS NULL AND sessions.expires_at > now()
$f$;
CREATE OR REPLACE FUNCTION atlas_bench.viewer_is_admin() RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public AS $f$
  SELECT EXISTS (
    SELECT 1 FROM user_roles JOIN roles ON roles.id = user_roles.role_id
    WHERE user_roles.user_id = atlas_bench.viewer_id() AND roles.name = 'ADMIN')
$f$;
-- Projects the viewer belongs to; every project for ADMIN.
CREATE OR REPLACE FUNCTION atlas_bench.visible_project_ids() RETURNS SETOF uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public AS $f$
  SELECT id FROM projects WHERE atlas_bench.viewer_is_admin()
  UNION
  SELECT project_id FROM project_members WHERE user_id = atlas_bench.viewer_id()
$f$;

ALTER TABLE projects ENABLE ROW LEVEL SECURITY;
ALTER TABLE project_members ENABLE ROW LEVEL SECURITY;
ALTER TABLE threads ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS bench_visible ON projects;
DROP POLICY IF EXISTS bench_visible ON project_members;
DROP POLICY IF EXISTS bench_visible ON threads;
CREATE POLICY bench_visible ON projects FOR SELECT TO atlas_bench_viewer
  USING (id IN (SELECT atlas_bench.visible_project_ids()));
CREATE POLICY bench_visible ON project_members FOR SELECT TO atlas_bench_viewer
  USING (project_id IN (SELECT atlas_bench.visible_project_ids()));
CREATE POLICY bench_visible ON threads FOR SELECT TO atlas_bench_viewer
  USING (project_id IN (SELECT atlas_bench.visible_project_ids())
         OR (project_id IS NULL AND created_by_id = (SELECT atlas_bench.viewer_id())));
"""


def settings_for(url: str) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=url,
        atlas_env="development",
        atlas_jwt_secret=JWT_SECRET,
        atlas_access_token_ttl=3600,
        redis_url=None,
        openai_api_key="sk-bench",
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- a dedicated PostgreSQL with pg_stat_statements ------------------------------------------


def _postgres_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)
    if not candidates:
        raise SystemExit(f"{name} not found: install PostgreSQL or pass --database-url")
    return str(candidates[0])


class DedicatedPostgres:
    """A throw-away server in a temporary folder, on a free port of 127.0.0.1."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="atlas-bench-pg-"))
        self.port = free_port()
        # PostgreSQL refuses to run as root: run it as the `postgres` account then.
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *command: str) -> None:
        subprocess.run([*self.as_user, *command], check=True, capture_output=True)

    def start(self) -> str:
        if self.as_user:
            shutil.chown(self.folder, user="postgres", group="postgres")
        data = self.folder / "data"
        self._run(
            _postgres_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
            "-E", "UTF8", "--no-locale", "--no-sync",
        )  # fmt: skip
        options = " ".join(
            f"-c {setting}"
            for setting in (
                f"port={self.port}",
                "listen_addresses=127.0.0.1",
                f"unix_socket_directories={self.folder}",
                "shared_preload_libraries=pg_stat_statements",
                "pg_stat_statements.track=top",
                "max_connections=200",
                "fsync=off",
                "synchronous_commit=off",
                "full_page_writes=off",
            )
        )
        self._run(
            _postgres_bin("pg_ctl"), "-D", str(data), "-o", options,
            "-l", str(self.folder / "server.log"), "-w", "start",
        )  # fmt: skip
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def stop(self) -> None:
        data = self.folder / "data"
        if data.exists():
            subprocess.run(
                [*self.as_user, _postgres_bin("pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
                capture_output=True,
                check=False,
            )
        shutil.rmtree(self.folder, ignore_errors=True)


# --- data ------------------------------------------------------------------------------------


async def fill(target: DatabaseTarget) -> uuid.UUID:
    """Roles and permissions as the seed grants them, 30 users, 20 projects owned by the
    viewer with 116 memberships and 58 threads. Returns the viewer's user id."""
    engine = create_engine(target, pool_size=1)
    base = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    try:
        async with AsyncSession(engine) as db, db.begin():
            await db.execute(
                sa.insert(Role),
                [{"name": name, "description": ROLE_DESCRIPTIONS[name]} for name in RoleName],
            )
            await db.execute(
                sa.insert(Permission),
                [
                    {"name": name, "description": PERMISSION_DESCRIPTIONS[name]}
                    for name in PermissionName
                ],
            )
            roles = {row.name: row.id for row in (await db.execute(sa.select(Role))).scalars()}
            permissions = {
                row.name: row.id for row in (await db.execute(sa.select(Permission))).scalars()
            }
            await db.execute(
                sa.insert(RolePermission),
                [
                    {"role_id": roles[role], "permission_id": permissions[permission]}
                    for role, granted in ROLE_PERMISSIONS.items()
                    for permission in granted
                ],
            )
            users = [
                {
                    "id": uuid.uuid4(),
                    "email": f"person{number:02d}@bench.example.com",
                    "name": f"Person {number:02d}",
                    "password_hash": "not-a-password",
                    "created_at": base + timedelta(minutes=number),
                }
                for number in range(USERS)
            ]
            await db.execute(sa.insert(User), users)
            viewer_id: uuid.UUID = users[0]["id"]
            await db.execute(
                sa.insert(UserRole),
                [{"user_id": user["id"], "role_id": roles[RoleName.USER]} for user in users[1:]]
                + [{"user_id": viewer_id, "role_id": roles[RoleName.PROJECT_MANAGER]}],
            )
            projects = [
                {
                    "id": uuid.uuid4(),
                    "name": f"Project {number:02d}",
                    "description": f"Bench project number {number}",
                    "created_by_id": viewer_id,
                    "created_at": base + timedelta(hours=1, minutes=number),
                }
                for number in range(len(MEMBERS_PER_PROJECT))
            ]
            await db.execute(sa.insert(Project), projects)
            members, threads = [], []
            for number, project in enumerate(projects):
                joined = project["created_at"]
                others = [users[1 + (number * 3 + k) % (USERS - 1)] for k in range(USERS - 1)]
                for k, user in enumerate([users[0], *others][: MEMBERS_PER_PROJECT[number]]):
                    role = ProjectRole.OWNER if k == 0 else list(ProjectRole)[1 + k % 3]
                    members.append(
                        {
                            "project_id": project["id"],
                            "user_id": user["id"],
                            "role": role,
                            "created_at": joined + timedelta(seconds=k, microseconds=k * 137),
                        }
                    )
                for k in range(THREADS_PER_PROJECT[number]):
                    threads.append(
                        {
                            "project_id": project["id"],
                            "created_by_id": others[k % 3]["id"],
                            "title": f"Thread {k} of project {number:02d}",
                            "created_at": joined + timedelta(minutes=5 + k),
                        }
                    )
            await db.execute(sa.insert(ProjectMember), members)
            await db.execute(sa.insert(Thread), threads)
        async with engine.connect() as connection:
            await connection.execute(sa.text("ANALYZE"))
            await connection.commit()
        return viewer_id
    finally:
        await engine.dispose()


async def sign_in(url: str, user_id: uuid.UUID) -> str:
    engine = create_engine(parse_database_url(url), pool_size=1)
    try:
        async with AsyncSession(engine) as db, db.begin():
            tokens = await start_session(db=db, settings=settings_for(url), user_id=user_id)
        return tokens.access_token
    finally:
        await engine.dispose()


async def setup_postgraphile_rules(url: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(POSTGRAPHILE_SETUP)
    finally:
        await connection.close()


# --- servers ---------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    label: str
    command: list[str]
    environment: dict[str, str]
    query: str
    cwd: Path = ROOT
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/graphql"

    def start(self, folder: Path) -> None:
        self.log = (folder / f"{self.name}.log").open("wb")
        environment = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("ATLAS_", "DATABASE_URL", "REDIS_URL", "OPENAI_"))
        }
        environment.update(self.environment, PORT=str(self.port))
        self.process = subprocess.Popen(
            [part.replace("{port}", str(self.port)) for part in self.command],
            cwd=self.cwd,
            env=environment,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.log is not None:
            self.log.close()


def atlas_server(name: str, url: str, *, compiled: bool) -> Server:
    return Server(
        name=name,
        label=f"ATLAS (ATLAS_COMPILED_READS={'true' if compiled else 'false'})",
        command=[
            str(ROOT / ".venv" / "bin" / "atlas-gql"),
            *("serve", "--host", "127.0.0.1", "--port", "{port}", "--workers", "1"),
        ],
        environment={
            "DATABASE_URL": url,
            "ATLAS_ENV": "development",
            "ATLAS_JWT_SECRET": JWT_SECRET,
            "ATLAS_ACCESS_TOKEN_TTL": "3600",
            "OPENAI_API_KEY": "sk-bench",
            "ATLAS_COMPILED_READS": "true" if compiled else "false",
        },
        query=ATLAS_QUERY,
    )


def postgraphile_server(url: str) -> Server:
    return Server(
        name="postgraphile",
        label="PostGraphile v4",
        command=["node", "server.js"],
        cwd=POSTGRAPHILE_DIR,
        environment={
            "DATABASE_URL": url,
            "JWT_SECRET": JWT_SECRET,
            "NODE_ENV": "production",
        },
        query=POSTGRAPHILE_QUERY,
    )


async def wait_until_answering(server: Server, token: str) -> dict[str, Any]:
    """The server's first answer to the query (it must have no errors)."""
    payload = {"query": server.query}
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(timeout=10) as client:
        for _ in range(600):
            if server.process is not None and server.process.poll() is not None:
                raise SystemExit(f"{server.label} exited with {server.process.returncode}")
            try:
                response = await client.post(server.url, json=payload, headers=headers)
            except httpx.TransportError:
                await asyncio.sleep(0.1)
                continue
            body: dict[str, Any] = response.json()
            if body.get("errors") or response.status_code != 200:
                raise SystemExit(f"{server.label} answered {response.status_code}: {body}")
            return body
    raise SystemExit(f"{server.label} did not start")


def _decode_global_id(value: str) -> str:
    raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
    return raw.partition(":")[2]


def atlas_answer_as_postgraphile(answer: Any) -> Any:
    """ATLAS's answer with global ids decoded to the raw uuids PostGraphile shows."""
    if isinstance(answer, dict):
        return {
            key: _decode_global_id(value) if key == "id" else atlas_answer_as_postgraphile(value)
            for key, value in answer.items()
        }
    if isinstance(answer, list):
        return [atlas_answer_as_postgraphile(item) for item in answer]
    return answer


# --- measuring -------------------------------------------------------------------------------


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk not found: installing it with apt-get", flush=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, capture_output=True)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is not installed and apt-get could not install it")
    return found


def ensure_postgraphile() -> None:
    if (POSTGRAPHILE_DIR / "node_modules" / "postgraphile").exists():
        return
    print("installing PostGraphile (npm ci in bench/postgraphile)", flush=True)
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=POSTGRAPHILE_DIR, check=True)


def wrk_script(folder: Path, server: Server, token: str) -> Path:
    body = json.dumps({"query": server.query})
    script = folder / f"{server.name}.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = [==[{body}]==]\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {token}"\n'
    )
    return script


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def run_wrk(
    wrk: str, script: Path, url: str, *, connections: int, threads: int, seconds: int
) -> dict[str, float]:
    output = subprocess.run(
        [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "60s",
         "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)\b", output)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors:.*", output)
    if rate is None or p50 is None:
        raise SystemExit(f"could not read wrk's output:\n{output}")
    if bad is not None or errors is not None:
        print(f"    warning: {bad.group(0) if bad else ''} {errors.group(0) if errors else ''}")
    return {
        "requests_per_second": float(rate.group(1)),
        "p50_ms": float(p50.group(1)) * _UNITS[p50.group(2)],
    }


# Statements that only frame a transaction, check a pooled connection or pass JWT claims.
_FRAMING = re.compile(r"^\s*(begin|commit|rollback|savepoint|release|set |reset |;|select 1\b|"
                      r"select set_config)", re.IGNORECASE)  # fmt: skip


@dataclass
class StatementCount:
    per_request: float
    carrying_data: float
    breakdown: list[tuple[float, str]]


async def count_statements(
    stats_url: str | None, server: Server, token: str, *, requests: int = 50
) -> StatementCount | None:
    """SQL statements per request, from pg_stat_statements (None when not available)."""
    if stats_url is None:
        return None
    connection = await asyncpg.connect(stats_url)
    try:
        database_oid = await connection.fetchval(
            "SELECT oid FROM pg_database WHERE datname = $1", DATABASE
        )
        await connection.execute("SELECT pg_stat_statements_reset()")
        payload = {"query": server.query}
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(timeout=30) as client:
            for _ in range(requests):
                response = await client.post(server.url, json=payload, headers=headers)
                response.raise_for_status()
        rows = await connection.fetch(
            "SELECT query, calls FROM pg_stat_statements WHERE dbid = $1 ORDER BY calls DESC",
            database_oid,
        )
    finally:
        await connection.close()
    breakdown = [(row["calls"] / requests, " ".join(row["query"].split())[:90]) for row in rows]
    total = sum(calls for calls, _ in breakdown)
    data = sum(calls for calls, text in breakdown if not _FRAMING.match(text))
    return StatementCount(total, data, breakdown)


async def stats_url_for(url: str) -> str | None:
    """A URL of the server's maintenance database when it tracks statements."""
    maintenance = url.rsplit("/", 1)[0] + "/postgres"
    connection = await asyncpg.connect(maintenance)
    try:
        preloaded = await connection.fetchval("SHOW shared_preload_libraries")
        if "pg_stat_statements" not in preloaded:
            return None
        await connection.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    finally:
        await connection.close()
    return maintenance


# --- main ------------------------------------------------------------------------------------


async def prepare_database(url: str) -> tuple[str, uuid.UUID]:
    target = parse_database_url(url)
    await ensure_database(target)
    await asyncio.to_thread(upgrade_to_head, target)
    viewer_id = await fill(target)
    await setup_postgraphile_rules(url)
    token = await sign_in(url, viewer_id)
    return token, viewer_id


def median_line(label: str, figures: list[float]) -> str:
    rounds = "  ".join(f"{value:7.1f}" for value in figures)
    return f"  {label:38s} {rounds}   median {statistics.median(figures):7.1f}"


async def main(args: argparse.Namespace) -> None:
    wrk = ensure_wrk()
    ensure_postgraphile()
    dedicated = None if args.database_url else DedicatedPostgres()
    work = Path(tempfile.mkdtemp(prefix="atlas-bench-compiled-"))
    servers: list[Server] = []
    try:
        if dedicated is not None:
            url = dedicated.start()
            print(f"dedicated PostgreSQL on 127.0.0.1:{dedicated.port} (pg_stat_statements)")
        else:
            url = args.database_url.rsplit("/", 1)[0] + f"/{DATABASE}"
        started = time.perf_counter()
        token, _ = await prepare_database(url)
        print(
            f"database {DATABASE}: {len(MEMBERS_PER_PROJECT)} projects, "
            f"{sum(MEMBERS_PER_PROJECT)} members, {sum(THREADS_PER_PROJECT)} threads, "
            f"{USERS} users ({time.perf_counter() - started:.1f}s)"
        )
        stats_url = await stats_url_for(url)
        wanted = args.servers.split(",")
        catalogue = {
            "postgraphile": lambda: postgraphile_server(url),
            "atlas": lambda: atlas_server("atlas", url, compiled=True),
            "atlas-off": lambda: atlas_server("atlas-off", url, compiled=False),
        }
        servers = [catalogue[name]() for name in wanted]
        for server in servers:
            server.start(work)
        answers = {server.name: await wait_until_answering(server, token) for server in servers}
        check_answers(answers)

        print("\nunloaded (one connection, wrk p50) and SQL statements per request:")
        unloaded: dict[str, float] = {}
        counts: dict[str, StatementCount | None] = {}
        for server in servers:
            script = wrk_script(work, server, token)
            run_wrk(wrk, script, server.url, connections=1, threads=1, seconds=2)  # warm-up
            figures = run_wrk(
                wrk, script, server.url, connections=1, threads=1, seconds=args.unloaded_seconds
            )
            unloaded[server.name] = figures["p50_ms"]
            counts[server.name] = await count_statements(stats_url, server, token)
            count = counts[server.name]
            described = (
                "n/a (no pg_stat_statements)"
                if count is None
                else f"{count.per_request:.2f} ({count.carrying_data:.2f} carrying data)"
            )
            print(
                f"  {server.label:38s} p50 {figures['p50_ms']:6.2f} ms   "
                f"{figures['requests_per_second']:7.1f} req/s sequential   statements {described}"
            )
            if count is not None and args.verbose:
                for calls, text in count.breakdown:
                    print(f"      {calls:5.2f}  {text}")

        print(
            f"\nloaded: wrk -t{args.threads} -c{args.connections} -d{args.duration}s, "
            f"alternating rounds, requests/s"
        )
        medians: dict[str, list[float]] = {server.name: [] for server in servers}
        for repeat in range(args.repeats):
            per_round: dict[str, list[float]] = {server.name: [] for server in servers}
            for _ in range(args.rounds):
                for server in servers:
                    figures = run_wrk(
                        wrk,
                        wrk_script(work, server, token),
                        server.url,
                        connections=args.connections,
                        threads=args.threads,
                        seconds=args.duration,
                    )
                    per_round[server.name].append(figures["requests_per_second"])
            print(f" series {repeat + 1}:")
            for server in servers:
                print(median_line(server.label, per_round[server.name]))
                medians[server.name].append(statistics.median(per_round[server.name]))

        print("\nsummary")
        print(
            f"  {'server':38s} {'req/s (median per series)':28s} {'unloaded p50':>12s}   "
            "SQL statements per request"
        )
        for server in servers:
            count = counts[server.name]
            statements = (
                "n/a"
                if count is None
                else f"{count.per_request:.0f} ({count.carrying_data:.0f} carrying data)"
            )
            series = " / ".join(f"{value:.1f}" for value in medians[server.name])
            print(
                f"  {server.label:38s} {series:28s} {unloaded[server.name]:9.2f} ms   {statements}"
            )
        if "postgraphile" in medians:
            for server in servers:
                if server.name == "postgraphile":
                    continue
                ratios = " / ".join(
                    f"{mine / theirs:.2f}x"
                    for mine, theirs in zip(
                        medians[server.name], medians["postgraphile"], strict=True
                    )
                )
                print(f"  {server.label} vs PostGraphile: {ratios}")
    finally:
        for server in servers:
            server.stop()
        if dedicated is not None:
            dedicated.stop()
        shutil.rmtree(work, ignore_errors=True)


def check_answers(answers: dict[str, dict[str, Any]]) -> None:
    """Both servers must answer the same data (ATLAS's ids decoded to uuids)."""
    reference: Any = None
    for name, answer in answers.items():
        data = answer["data"]
        comparable = atlas_answer_as_postgraphile(data) if name.startswith("atlas") else data
        if reference is None:
            reference = comparable
        elif comparable != reference:
            raise SystemExit(f"{name} answers differently from {next(iter(answers))}")
    projects = reference["projects"]["edges"]
    members = sum(len(edge["node"]["members"]["edges"]) for edge in projects)
    threads = sum(len(edge["node"]["threads"]["edges"]) for edge in projects)
    print(
        f"answers identical across {', '.join(answers)}: {len(projects)} projects, "
        f"{members} members and {threads} threads on the page"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per loaded round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--unloaded-seconds", type=int, default=5)
    parser.add_argument("--servers", default="postgraphile,atlas,atlas-off")
    parser.add_argument("--database-url", help="use this server instead of a dedicated one")
    parser.add_argument("--verbose", action="store_true", help="list the statements")
    return parser.parse_args()


def _stop(signal_number: int, _: Any) -> None:
    # Unwind through main's `finally`, which stops the servers and the dedicated PostgreSQL.
    raise SystemExit(128 + signal_number)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    asyncio.run(main(parse_args()))
