"""Microbench of compiled reads on issue 13's nested read: compile time, plan lookup, and
execute time of the one statement (no HTTP server; bench/compiled_reads.py has the side by
side).

    .venv/bin/python bench/compiled_micro.py [--executions 1000 --database-url URL]

Uses the same dedicated PostgreSQL and data as compiled_reads.py (20 projects, 116 members,
58 threads), then prints:
- compile: parsing excluded, the validated document to SQL text and parameter sources (cold,
  a new compiler each time);
- plan lookup: the cached plan for a request (variable shapes and the cache key);
- arguments: JWT verification plus the statement's parameters;
- execute: one round trip of the prepared statement on one asyncpg connection (sequential),
  and PostgreSQL's own execution time from pg_stat_statements;
- the size of the JSON text.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import asyncpg
from graphql import parse, validate

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compiled_reads import (
    ATLAS_QUERY,
    DATABASE,
    DedicatedPostgres,
    prepare_database,
    settings_for,
    stats_url_for,
)

from atlas_gql.auth.tokens import decode_access_token
from atlas_gql.graph.compiled import Answer, CompiledReads, Plan, compile_plan
from atlas_gql.graph.schema import build_schema


def figures(label: str, seconds: list[float]) -> str:
    ordered = sorted(seconds)
    p50 = statistics.median(ordered) * 1e6
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e6
    return f"  {label:34s} p50 {p50:9.1f} µs   p99 {p99:9.1f} µs   ({len(ordered)} runs)"


async def main(args: argparse.Namespace) -> None:
    dedicated = None if args.database_url else DedicatedPostgres()
    try:
        if dedicated is not None:
            url = dedicated.start()
        else:
            url = args.database_url.rsplit("/", 1)[0] + f"/{DATABASE}"
        token, _ = await prepare_database(url)
        settings = settings_for(url)
        schema = build_schema()._schema
        document = parse(ATLAS_QUERY)
        assert not validate(schema, document)
        operation = document.definitions[0]

        compile_times = []
        plan: Plan | None = None
        for _ in range(args.compiles):
            started = time.perf_counter()
            plan = compile_plan(schema, document, operation, {})  # type: ignore[arg-type]
            compile_times.append(time.perf_counter() - started)
        assert plan is not None

        reads = CompiledReads(schema)
        lookups = []
        for _ in range(args.executions):
            started = time.perf_counter()
            cached = reads.plan(document, text=ATLAS_QUERY, operation_name="Nested", variables={})
            lookups.append(time.perf_counter() - started)
        assert isinstance(cached, Plan)

        arguments_times = []
        for _ in range(args.executions):
            started = time.perf_counter()
            claims = decode_access_token(token, settings=settings)
            cached.arguments({}, claims)
            arguments_times.append(time.perf_counter() - started)

        stats_url = await stats_url_for(url)
        connection = await asyncpg.connect(url)
        try:
            for _ in range(20):  # warm-up: prepared, past PostgreSQL's custom plans
                await reads.execute(cached, connection=connection, variables={}, claims=claims)
            if stats_url:
                stats = await asyncpg.connect(stats_url)
                await stats.execute("SELECT pg_stat_statements_reset()")
            executions = []
            answer = None
            for _ in range(args.executions):
                started = time.perf_counter()
                answer = await reads.execute(
                    cached, connection=connection, variables={}, claims=claims
                )
                executions.append(time.perf_counter() - started)
            assert isinstance(answer, Answer)
            server_ms = None
            if stats_url:
                server_ms = await stats.fetchval(
                    "SELECT sum(total_exec_time) / sum(calls) FROM pg_stat_statements "
                    "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = $1) "
                    "AND query LIKE 'WITH viewer AS%'",
                    DATABASE,
                )
                await stats.close()
        finally:
            await connection.close()

        print("compiled read of issue 13's query (20 projects, members(first: 10), threads(3))")
        print(figures("compile (cold, SQL + sources)", compile_times))
        print(figures("plan lookup (cached)", lookups))
        print(figures("JWT check + parameters", arguments_times))
        print(figures("execute (round trip, prepared)", executions))
        if server_ms is not None:
            print(f"  {'PostgreSQL execution (mean)':34s} {server_ms * 1000:9.1f} µs")
        print(f"  JSON text: {len(answer.data)} characters, {len(cached.sql)} characters of SQL")
    finally:
        if dedicated is not None:
            dedicated.stop()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--executions", type=int, default=1000)
    parser.add_argument("--compiles", type=int, default=50)
    parser.add_argument("--database-url", help="use this server instead of a dedicated one")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
