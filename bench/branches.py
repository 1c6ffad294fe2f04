"""Benchmark: reading a thread's branch (`Thread.messages` = the path from the root to the
active leaf, a recursive CTE, docs/branches.md) as the thread grows, on both read paths'
statements, and the siblings of a page of messages.

    .venv/bin/python bench/branches.py [--messages 100,1000,5000 --page 20 --runs 30]

Builds a throw-away database on 127.0.0.1:5432 (dropped afterwards), migrated and seeded,
with one thread per size: a chain of exchanges where every 10th reply was regenerated once
(an abandoned sibling), the active leaf at the end. For each size it times (median of
`--runs`, one connection, after a warm-up) the statements the two read paths send:
- resolver path: `ai.loaders.messages_page`'s page statement (`paginate_by_parent` with the
  active-path condition), the last `--page` messages of the branch;
- compiled path: the same page as a subquery correlated to the thread row (the shape
  `graph/compiled/catalogue.thread_messages_page` builds), as one statement;
- (no tree): the resolver page without the active-path condition (the statement before
  issue 15, listing every message of the thread), for comparison;
- siblings: `ai.tree.siblings_of` for the page's messages (Message.siblings' loader).
It prints milliseconds per statement; statements per request do not depend on the page or
the thread size (one each). Figures vary with the machine's load: compare sizes in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlmodel import col

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atlas_gql.ai import tree  # noqa: E402
from atlas_gql.ai.loaders import MESSAGE_ORDERING, _on_active_paths  # noqa: E402
from atlas_gql.ai.models import Message, MessageRole, MessageStatus, Thread  # noqa: E402
from atlas_gql.auth.models import User  # noqa: E402
from atlas_gql.db.engine import (  # noqa: E402
    create_engine,
    create_sessionmaker,
    drop_database,
    ensure_database,
)
from atlas_gql.db.migrate import upgrade_to_head  # noqa: E402
from atlas_gql.db.pagination import PageRequest, paginate_by_parent  # noqa: E402
from atlas_gql.db.tables import table_of  # noqa: E402
from atlas_gql.db.url import parse_database_url  # noqa: E402
from atlas_gql.projects.models import Project  # noqa: E402

DATABASE = f"atlas_bench_branches_{uuid.uuid4().hex[:8]}"


def chain(thread_id: uuid.UUID, user_id: uuid.UUID, size: int) -> tuple[list[dict[str, Any]], Any]:
    """`size` messages on the branch shown, plus an abandoned reply every 10th exchange."""
    rows: list[dict[str, Any]] = []
    start = datetime(2026, 1, 1, tzinfo=UTC)
    parent: uuid.UUID | None = None
    for index in range(size):
        role = MessageRole.USER if index % 2 == 0 else MessageRole.ASSISTANT
        at = start + timedelta(seconds=index)
        if role is MessageRole.ASSISTANT and index % 20 == 1:
            rows.append(_row(thread_id, parent, user_id, role, f"abandoned {index}", at))
        row = _row(thread_id, parent, user_id, role, f"message {index}", at + timedelta(0, 0, 1))
        rows.append(row)
        parent = row["id"]
    return rows, parent


def _row(thread_id: uuid.UUID, parent: uuid.UUID | None, user_id: uuid.UUID, role: MessageRole,
         content: str, at: datetime) -> dict[str, Any]:  # fmt: skip
    return {
        "id": uuid.uuid4(), "thread_id": thread_id, "parent_id": parent,
        "user_id": user_id if role is MessageRole.USER else None, "role": role,
        "content": content, "status": MessageStatus.COMPLETED, "created_at": at,
    }  # fmt: skip


async def timed(runs: int, work: Any) -> float:
    await work()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        await work()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", default="100,1000,5000")
    parser.add_argument("--page", type=int, default=20)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--explain", action="store_true", help="print the compiled page's plan")
    arguments = parser.parse_args()
    sizes = [int(size) for size in arguments.messages.split(",")]
    target = parse_database_url(f"postgresql://postgres@127.0.0.1:5432/{DATABASE}")
    await ensure_database(target)
    try:
        await asyncio.to_thread(upgrade_to_head, target)
        engine = create_engine(target, pool_size=1)
        sessions = create_sessionmaker(engine)
        async with sessions() as db:
            user = User(email=f"bench-{uuid.uuid4().hex[:6]}@example.com", password_hash="x")
            db.add(user)
            await db.flush()
            project = Project(name="Bench", created_by_id=user.id)
            db.add(project)
            await db.flush()
            threads = {}
            for size in sizes:
                thread = Thread(title=f"{size}", project_id=project.id, created_by_id=user.id)
                db.add(thread)
                await db.flush()
                rows, leaf = chain(thread.id, user.id, size)
                for start in range(0, len(rows), 1000):
                    await db.execute(sa.insert(Message), rows[start : start + 1000])
                thread.active_leaf_id = leaf
                threads[size] = thread.id
            await db.commit()
            await db.execute(sa.text("ANALYZE"))
        request = PageRequest(first=None, after=None, last=arguments.page, before=None)
        threads_table, messages = table_of(Thread), tree.messages
        print(f"page of {arguments.page}, median of {arguments.runs} runs (ms per statement)")
        print(
            f"{'branch':>8} {'resolver page':>14} {'(no tree)':>10} {'compiled page':>14} "
            f"{'siblings':>9}"
        )
        for size in sizes:
            thread_id = threads[size]
            async with sessions() as db:

                async def resolver_page(thread_id: uuid.UUID = thread_id, tree: bool = True) -> Any:
                    return await paginate_by_parent(
                        db, Message, parent_column=col(Message.thread_id), parent_ids=[thread_id],
                        ordering=MESSAGE_ORDERING, request=request,
                        where=_on_active_paths([thread_id]) if tree else (),
                    )  # fmt: skip

                async def linear_page(thread_id: uuid.UUID = thread_id) -> Any:
                    return await resolver_page(thread_id, tree=False)

                page = (await resolver_page())[thread_id]
                assert len(page.items) == min(arguments.page, size)
                inner = messages.alias("m")
                last_page = (
                    sa.select(inner.c.id, inner.c.content)
                    .where(
                        inner.c.thread_id == threads_table.c.id,
                        tree.on_path_to(threads_table.c.active_leaf_id)(inner),
                    )
                    .order_by(inner.c.created_at.desc(), inner.c.id.desc())
                    .limit(arguments.page + 1)
                    .correlate(threads_table)
                    .subquery()
                )
                compiled = sa.select(
                    sa.select(sa.func.json_agg(sa.func.json_build_object("id", last_page.c.id)))
                    .select_from(last_page)
                    .scalar_subquery()
                ).where(threads_table.c.id == thread_id)

                async def compiled_page(compiled: Any = compiled) -> Any:
                    return (await db.execute(compiled)).scalar_one()

                ids = [message.id for message in page.items]
                if arguments.explain:
                    text = str(
                        compiled.compile(engine.sync_engine, compile_kwargs={"literal_binds": True})
                    )
                    for (line,) in (await db.execute(sa.text("EXPLAIN ANALYZE " + text))).all():
                        print(line)

                async def siblings(ids: list[uuid.UUID] = ids) -> Any:
                    return (await db.execute(tree.siblings_of(ids))).all()

                print(
                    f"{size:>8} {await timed(arguments.runs, resolver_page):>14.2f} "
                    f"{await timed(arguments.runs, linear_page):>10.2f} "
                    f"{await timed(arguments.runs, compiled_page):>14.2f} "
                    f"{await timed(arguments.runs, siblings):>9.2f}"
                )
        await engine.dispose()
    finally:
        await drop_database(target)


if __name__ == "__main__":
    asyncio.run(main())
