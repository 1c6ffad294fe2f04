"""The `atlas-gql` command line, run as a user runs it (a subprocess)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg

from atlas_gql.db.engine import _asyncpg_dsn
from atlas_gql.db.url import DatabaseTarget

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("ATLAS_", "DATABASE_URL", "OPENAI_", "REDIS_URL"))
    }
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-m", "atlas_gql", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def url_of(target: DatabaseTarget) -> str:
    return target.url.set(drivername="postgresql").render_as_string(hide_password=False)


def count(target: DatabaseTarget, query: str) -> int:
    import asyncio

    async def fetch() -> int:
        conn = await asyncpg.connect(**_asyncpg_dsn(target, target.database))
        try:
            return int(await conn.fetchval(query))
        finally:
            await conn.close()

    return asyncio.run(fetch())


def test_export_schema_matches_committed_sdl(tmp_path: Path) -> None:
    result = run_cli("export-schema", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (ROOT / "schema" / "schema.graphql").read_text()
    out = tmp_path / "schema.graphql"
    assert run_cli("export-schema", str(out), cwd=tmp_path).returncode == 0
    # Descriptions (block strings) split declarations over lines: compare without them.
    described = out.read_text()
    sdl = " ".join(re.sub(r'"""[\s\S]*?"""', " ", described).split())
    sdl = sdl.replace("( ", "(").replace(" )", ")")
    for declaration in (
        "directive @hasPermission(permission: PermissionName!)",
        "directive @authenticated",
        "interface Node",
        "node(id: ID!): Node",
        "scalar DateTime",
        "scalar JSON",
    ):
        assert declaration in sdl


def test_migrate_and_seed_twice_on_a_fresh_database(make_database: Any, tmp_path: Path) -> None:
    target = make_database("atlas_cli")
    env = {
        "DATABASE_URL": url_of(target) + "?schema=public",
        "ATLAS_SEED_PASSWORD": "cli-seed-pass",
    }
    migrated = run_cli("migrate", cwd=tmp_path, **env)
    assert migrated.returncode == 0, migrated.stderr
    for _ in range(2):
        seeded = run_cli("seed", cwd=tmp_path, **env)
        assert seeded.returncode == 0, seeded.stderr
        assert "seed complete: 3 roles, 3 permissions, 3 users" in seeded.stdout
    assert count(target, "SELECT count(*) FROM users") == 3
    assert count(target, "SELECT count(*) FROM projects") == 1
    created = run_cli(
        "create-user",
        "--email",
        "New.Person@Example.com",
        "--password",
        "long-enough-1",
        "--role",
        "project_manager",
        cwd=tmp_path,
        **env,
    )
    assert created.returncode == 0, created.stderr
    assert (
        count(target, "SELECT count(*) FROM users WHERE lower(email) = 'new.person@example.com'")
        == 1
    )
    # The audit trail names the command line (the system actor) as the creator.
    assert (
        count(
            target,
            "SELECT count(*) FROM activity_logs WHERE action = 'user.create' "
            "AND user_id IS NULL AND user_agent = 'atlas-gql (system)'",
        )
        == 1
    )
    duplicate = run_cli(
        "create-user",
        "--email",
        "new.person@example.com",
        "--password",
        "long-enough-1",
        cwd=tmp_path,
        **env,
    )
    assert duplicate.returncode == 1
    assert "already exists" in duplicate.stderr
    assert "Traceback" not in duplicate.stderr


def test_unknown_role_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli(
        "create-user",
        "--email",
        "a@b.io",
        "--password",
        "long-enough-1",
        "--role",
        "KING",
        cwd=tmp_path,
        DATABASE_URL="postgresql://postgres@127.0.0.1:1/none",
    )
    assert result.returncode == 2
    assert "unknown role" in result.stderr


def test_malformed_database_url_is_one_clear_line(tmp_path: Path) -> None:
    result = run_cli("migrate", cwd=tmp_path, DATABASE_URL="mysql://root@localhost/atlas")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: DATABASE_URL must be a PostgreSQL URL (postgresql://...), not 'mysql'"
    ]


def test_unreachable_database_is_one_clear_line(tmp_path: Path) -> None:
    result = run_cli(
        "migrate", cwd=tmp_path, DATABASE_URL="postgresql://postgres@127.0.0.1:1/atlas"
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(
        "error: cannot reach the database at postgresql+asyncpg://postgres@127.0.0.1:1/atlas"
    )


def test_database_refusing_us_is_one_clear_line(tmp_path: Path) -> None:
    result = run_cli(
        "migrate", cwd=tmp_path, DATABASE_URL="postgresql://postgres@127.0.0.1:5432/atlas.dev"
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: cannot use the database at")


def test_production_with_development_secret_refuses_to_start(tmp_path: Path) -> None:
    result = run_cli("serve", cwd=tmp_path, ATLAS_ENV="production")
    assert result.returncode == 1
    assert "ATLAS_JWT_SECRET" in result.stderr
    assert "Traceback" not in result.stderr


def test_no_command_prints_usage(tmp_path: Path) -> None:
    result = run_cli(cwd=tmp_path)
    assert "serve" in result.stdout + result.stderr
    assert "export-schema" in result.stdout + result.stderr
