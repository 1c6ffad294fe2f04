"""Benchmark: searchMessages over 1,000,000 messages, against a LIKE scan of the same rows.

    .venv/bin/python bench/search.py [--messages 1000000] [--runs 40] [--like-runs 5]
        [--viewer member] [--fresh] [--drop]

Builds (once; kept for the next run unless --fresh) a bench database `atlas_bench_search` on
127.0.0.1:5432 (or BENCH_DATABASE_URL) migrated to head, and fills it (people and threads with
INSERT ... SELECT generate_series, messages generated in Python and loaded with COPY in
batches, the GIN index built after the load): 2,000 users, 200
projects with about 10 members each, 50,000 threads (40,000 in projects, 10,000 personal), and
the messages, ~40 words each drawn from a 30,000-word vocabulary with a Zipf-like (log-uniform)
distribution: a hundred real English words first (most of them stop words), then made-up
words, so a word's rank sets how many messages hold it.

Then it runs typical searches through the service the API calls (`ai.search.search_messages`:
the query check, then the page of 20 with ts_headline; the SQL, the asyncpg prepared
statements and the Python mapping of the real path) as three viewers:
- member: MEMBER of 4 projects, with a few personal threads (~800 threads visible),
- busy member: MEMBER of 20 projects (~4,000 threads),
- admin: ADMIN, who reads every thread (the threads rule);
for queries of every kind (a common, a medium, a rare word; two words; a phrase; `or`; an
exclusion), a fresh word of the kind's frequency band each run. It prints the load average,
p50/p95 per kind and per viewer, the CPU per search of the PostgreSQL backend and of this
process (from /proc: what the machine's other load moves least), the same for `totalCount`
(the count of every match), and a LIKE scan
(`content ILIKE '%word%'`, newest 20, same scope) for the single-word kinds. Figures go to
docs/search.md. Not a test.

Size: about 600 lines on purpose: one script a reader runs and reads top to bottom (the data
it builds, the viewers, the query kinds, the measures), like the other bench scripts; split,
its parts would be modules nothing else imports.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atlas_gql.ai import rules  # noqa: E402
from atlas_gql.ai.search import SearchFilter, search_messages  # noqa: E402
from atlas_gql.auth.actor import Actor  # noqa: E402
from atlas_gql.auth.models import PermissionName, RoleName  # noqa: E402
from atlas_gql.auth.rules import viewer_literals  # noqa: E402
from atlas_gql.auth.viewer import Viewer  # noqa: E402
from atlas_gql.db.engine import create_engine, drop_database, ensure_database  # noqa: E402
from atlas_gql.db.migrate import upgrade_to_head  # noqa: E402
from atlas_gql.db.pagination import PageRequest  # noqa: E402
from atlas_gql.db.url import DatabaseTarget, parse_database_url  # noqa: E402

LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
DATABASE = "atlas_bench_search"
USERS, PROJECTS, PROJECT_THREADS, PERSONAL_THREADS = 2_000, 200, 40_000, 10_000
BATCH = 50_000

# The most frequent English words, in order (most are stop words the `english` configuration
# drops); made-up words follow them in the vocabulary.
ENGLISH = [
    "the",
    "of",
    "and",
    "to",
    "a",
    "in",
    "is",
    "it",
    "you",
    "that",
    "he",
    "was",
    "for",
    "on",
    "are",
    "with",
    "as",
    "his",
    "they",
    "be",
    "at",
    "one",
    "have",
    "this",
    "from",
    "or",
    "had",
    "by",
    "hot",
    "word",
    "but",
    "what",
    "some",
    "we",
    "can",
    "out",
    "other",
    "were",
    "all",
    "there",
    "when",
    "up",
    "use",
    "your",
    "how",
    "said",
    "an",
    "each",
    "she",
    "which",
    "do",
    "their",
    "time",
    "if",
    "will",
    "way",
    "about",
    "many",
    "then",
    "them",
    "write",
    "would",
    "like",
    "so",
    "these",
    "her",
    "long",
    "make",
    "thing",
    "see",
    "him",
    "two",
    "has",
    "look",
    "more",
    "day",
    "could",
    "go",
    "come",
    "did",
    "number",
    "sound",
    "no",
    "most",
    "people",
    "my",
    "over",
    "know",
    "water",
    "than",
    "call",
    "first",
    "who",
    "may",
    "down",
    "side",
    "been",
    "now",
    "find",
]
VOCABULARY_SIZE = 30_000

KINDS = ("common word", "medium word", "rare word", "two words", "phrase", "or", "exclusion")
# Frequency bands, as vocabulary ranks (1 = most frequent).
BANDS = {"common": (101, 300), "medium": (1_000, 3_000), "rare": (10_000, 30_000)}


def vocabulary() -> list[str]:
    """ENGLISH, then made-up words of 2 to 4 syllables (deterministic)."""
    rng = random.Random(15)
    onsets = [
        "b",
        "c",
        "d",
        "f",
        "g",
        "h",
        "j",
        "k",
        "l",
        "m",
        "n",
        "p",
        "r",
        "s",
        "t",
        "v",
        "w",
        "z",
        "br",
        "cl",
        "dr",
        "fl",
        "gr",
        "pl",
        "st",
        "tr",
    ]
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "io", "ou"]
    codas = ["", "", "n", "r", "s", "l", "t", "m"]
    words: list[str] = list(ENGLISH)
    seen = set(words)
    while len(words) < VOCABULARY_SIZE:
        syllables = rng.randint(2, 4)
        word = "".join(
            rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(syllables)
        )
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


# --- the data -------------------------------------------------------------------------------


async def populated(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int(
            (await connection.execute(sa.text("SELECT count(*) FROM messages"))).scalar_one()
        )


async def generate(engine: AsyncEngine, messages: int, words: list[str]) -> None:
    async with engine.begin() as connection:
        run = sa.text
        await connection.execute(run("TRUNCATE users, projects CASCADE"))
        await connection.execute(
            run(
                "INSERT INTO users (id, email, password_hash) SELECT gen_random_uuid(), "
                "'bench-' || n || '@example.com', 'x' FROM generate_series(1, :n) n"
            ),
            {"n": USERS},
        )
        await connection.execute(
            run(
                "CREATE TEMP TABLE bench_users AS SELECT id, "
                "substring(email from 'bench-(\\d+)@')::int AS n FROM users"
            )
        )
        await connection.execute(
            run(
                "INSERT INTO projects (id, name, created_by_id) SELECT gen_random_uuid(), "
                "'Bench ' || g, (SELECT id FROM bench_users WHERE bench_users.n = 1 + g % :u) "
                "FROM generate_series(1, :p) g"
            ),
            {"p": PROJECTS, "u": USERS},
        )
        await connection.execute(
            run(
                "CREATE TEMP TABLE bench_projects AS SELECT id, "
                "substring(name from '\\d+')::int AS n FROM projects"
            )
        )
        # About 10 members per project: user u is in projects u, u+1, ... (mod PROJECTS), one
        # project per 200 users; the three viewers get theirs below.
        await connection.execute(
            run(
                "INSERT INTO project_members (project_id, user_id, role) "
                "SELECT DISTINCT p.id, u.id, 'MEMBER' FROM bench_users u "
                "JOIN bench_projects p ON p.n = 1 + (u.n % :p) WHERE u.n > 3"
            ),
            {"p": PROJECTS},
        )
        for viewer, projects in ((1, 4), (2, 20)):
            await connection.execute(
                run(
                    "INSERT INTO project_members (project_id, user_id, role) "
                    "SELECT p.id, (SELECT id FROM bench_users WHERE n = :v), 'MEMBER' "
                    "FROM bench_projects p WHERE p.n <= :k"
                ),
                {"v": viewer, "k": projects},
            )
        await connection.execute(
            run(
                "INSERT INTO assistants (id, name, model, project_id, created_by_id) "
                "SELECT gen_random_uuid(), 'Helper', 'gpt-4o-mini', p.id, p.created_by_id "
                "FROM projects p"
            )
        )
        # Threads: PROJECT_THREADS spread over the projects, PERSONAL_THREADS over the users.
        await connection.execute(
            run(
                "INSERT INTO threads (id, title, project_id, assistant_id, created_by_id) "
                "SELECT gen_random_uuid(), 'Thread ' || g, p.id, a.id, p.created_by_id "
                "FROM generate_series(1, :t) g JOIN bench_projects bp ON bp.n = 1 + g % :p "
                "JOIN projects p ON p.id = bp.id JOIN assistants a ON a.project_id = p.id"
            ),
            {"t": PROJECT_THREADS, "p": PROJECTS},
        )
        await connection.execute(
            run(
                "INSERT INTO threads (id, title, project_id, created_by_id) "
                "SELECT gen_random_uuid(), 'Own ' || g, NULL, u.id "
                "FROM generate_series(1, :t) g JOIN bench_users u ON u.n = 1 + g % :u"
            ),
            {"t": PERSONAL_THREADS, "u": USERS},
        )
        await connection.execute(
            run("CREATE TABLE IF NOT EXISTS bench_words (rank int PRIMARY KEY, word text)")
        )
        await connection.execute(run("TRUNCATE bench_words"))
        await connection.execute(
            run("INSERT INTO bench_words VALUES (:rank, :word)"),
            [{"rank": rank, "word": word} for rank, word in enumerate(words, start=1)],
        )
        # Loading is faster without the GIN index; it is built afterwards, as the migration
        # defines it.
        await connection.execute(run("DROP INDEX IF EXISTS ix_messages_search_vector"))
    print(f"  users, projects, {PROJECT_THREADS + PERSONAL_THREADS} threads: done", flush=True)

    async with engine.connect() as connection:
        thread_ids = list((await connection.execute(sa.text("SELECT id FROM threads"))).scalars())
    rng = random.Random(1_000_000)
    log_size = math.log(len(words) + 1)
    now = datetime.now(UTC)
    started = time.perf_counter()
    for offset in range(0, messages, BATCH):
        count = min(BATCH, messages - offset)
        records = []
        for number in range(offset, offset + count):
            # A word of rank r is drawn with probability ~ 1/r (log-uniform ranks); a user
            # message has 4-30 words, a reply 20-100.
            user = number % 2 == 0
            length = rng.randint(4, 30) if user else rng.randint(20, 100)
            text = " ".join(
                words[min(len(words), int(math.exp(rng.random() * log_size))) - 1]
                for _ in range(length)
            )
            records.append(
                (
                    thread_ids[(number * 7919) % len(thread_ids)],
                    "USER" if user else "ASSISTANT",
                    "COMPLETED",
                    text,
                    now - timedelta(seconds=rng.random() * 365 * 86_400),
                )
            )
        async with engine.begin() as connection:
            raw = await connection.get_raw_connection()
            await raw.driver_connection.copy_records_to_table(  # type: ignore[union-attr]
                "messages",
                records=records,
                columns=["thread_id", "role", "status", "content", "created_at"],
            )
        done = offset + count
        rate = done / (time.perf_counter() - started)
        print(f"  {done:>9,} messages ({rate:,.0f}/s)", flush=True)
    async with engine.begin() as connection:
        print("  building the GIN index ...", flush=True)
        await connection.execute(sa.text("SET maintenance_work_mem = '512MB'"))
        await connection.execute(
            sa.text("CREATE INDEX ix_messages_search_vector ON messages USING gin (search_vector)")
        )
    async with engine.connect() as connection:
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        await connection.execute(sa.text("VACUUM ANALYZE"))


# --- viewers and queries --------------------------------------------------------------------


async def viewers(engine: AsyncEngine) -> dict[str, Viewer]:
    async with engine.connect() as connection:
        ids = {
            name: (
                await connection.execute(
                    sa.text("SELECT id FROM users WHERE email = :e"),
                    {"e": f"bench-{number}@example.com"},
                )
            ).scalar_one()
            for name, number in (("member", 1), ("busy member", 2), ("admin", 3))
        }
    every = frozenset(PermissionName)
    return {
        name: Viewer(
            user_id=user_id,
            session_id=uuid.uuid4(),
            email=f"{name}@example.com",
            roles=frozenset({RoleName.ADMIN if name == "admin" else RoleName.USER}),
            permissions=every,
        )
        for name, user_id in ids.items()
    }


async def scope(engine: AsyncEngine, viewer: Viewer) -> tuple[int, int]:
    """How many threads and messages the viewer may read."""
    threads = rules.threads
    visible = sa.select(threads.c.id).where(rules.thread_visible(viewer_literals(viewer), threads))
    async with AsyncSession(engine) as db:
        thread_count = await db.scalar(sa.select(sa.func.count()).select_from(visible.subquery()))
        message_count = await db.scalar(
            sa.select(sa.func.count())
            .select_from(rules.messages)
            .where(rules.messages.c.thread_id.in_(visible))
        )
    return int(thread_count or 0), int(message_count or 0)


def make_query(kind: str, words: list[str], rng: random.Random) -> str:
    def pick(band: str) -> str:
        low, high = BANDS[band]
        return words[rng.randint(low, high) - 1]

    if kind == "common word":
        return pick("common")
    if kind == "medium word":
        return pick("medium")
    if kind == "rare word":
        return pick("rare")
    if kind == "two words":
        return f"{pick('common')} {pick('medium')}"
    if kind == "phrase":
        return f'"{pick("common")} {pick("common")}"'
    if kind == "or":
        return f"{pick('medium')} or {pick('medium')}"
    return f"{pick('common')} -{pick('common')}"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1)]


def line(label: str, timings: list[float], extra: str = "") -> str:
    return (
        f"  {label:<28} p50 {statistics.median(timings):8.1f} ms   "
        f"p95 {percentile(timings, 0.95):8.1f} ms   (n={len(timings)}){extra}"
    )


async def timed(action: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = await action()
    return (time.perf_counter() - started) * 1000, result


async def run_search(
    engine: AsyncEngine, viewer: Viewer, text: str, *, with_total: bool
) -> tuple[float, int]:
    async with AsyncSession(engine) as db:
        elapsed, page = await timed(
            lambda: search_messages(
                db=db,
                actor=Actor(viewer=viewer),
                text=text,
                filter=SearchFilter(),
                request=PageRequest(first=20, with_total=with_total),
            )
        )
    return elapsed, page.total_count if with_total else len(page.items)


async def run_like(engine: AsyncEngine, viewer: Viewer, word: str) -> tuple[float, int]:
    """Open WebUI's way: a LIKE scan of the visible messages, newest 20."""
    messages, threads = rules.messages, rules.threads
    statement = (
        sa.select(messages.c.id, messages.c.content)
        .join(threads, threads.c.id == messages.c.thread_id)
        .where(
            rules.thread_visible(viewer_literals(viewer), threads),
            messages.c.content.ilike(f"%{word}%"),
        )
        .order_by(messages.c.created_at.desc())
        .limit(20)
    )
    async with AsyncSession(engine) as db:
        elapsed, result = await timed(lambda: db.execute(statement))
        return elapsed, len(result.all())


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc; 10 ms ticks, so read over many
    searches): a figure the machine's other load moves much less than wall-clock times."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU spent by the database backend and by this process between `start` and `stop`."""

    def __init__(self, backend_pid: int) -> None:
        self.backend_pid = backend_pid
        self.marks = (0.0, 0.0)

    def start(self) -> None:
        self.marks = (cpu_seconds(self.backend_pid), time.process_time())

    def stop(self, count: int) -> str:
        backend = (cpu_seconds(self.backend_pid) - self.marks[0]) * 1000 / count
        client = (time.process_time() - self.marks[1]) * 1000 / count
        return f"  CPU/search: PostgreSQL {backend:5.1f} ms, Python {client:5.1f} ms"


async def measure(
    engine: AsyncEngine, words: list[str], runs: int, like_runs: int, only: str | None
) -> None:
    people = {
        name: viewer
        for name, viewer in (await viewers(engine)).items()
        if only is None or name == only
    }
    rng = random.Random(25110)
    async with engine.connect() as connection:
        # The pool holds one connection, so every search runs on this backend.
        meter = CpuMeter(
            int((await connection.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one())
        )
    print(f"load average before measuring: {os.getloadavg()[0]:.1f}")
    for name, viewer in people.items():
        thread_count, message_count = await scope(engine, viewer)
        print(f"\n{name}: {thread_count:,} threads, {message_count:,} messages visible")
        # Warm the caches (and asyncpg's statement cache) a little, as a running server is.
        for kind in KINDS:
            await run_search(engine, viewer, make_query(kind, words, rng), with_total=False)
        every: list[float] = []
        meter.start()
        for kind in KINDS:
            timings, hits = [], []
            for _ in range(runs):
                elapsed, found = await run_search(
                    engine, viewer, make_query(kind, words, rng), with_total=False
                )
                timings.append(elapsed)
                hits.append(found)
            every += timings
            print(line(kind, timings, f"  hits/page median {statistics.median(hits):.0f}"))
        print(line("all kinds (a page of 20)", every, meter.stop(len(every))))
        totals, counted = [], []
        meter.start()
        for kind in KINDS:
            for _ in range(max(2, runs // 4)):
                elapsed, total = await run_search(
                    engine, viewer, make_query(kind, words, rng), with_total=True
                )
                totals.append(elapsed)
                counted.append(total)
        print(line("with totalCount", totals, meter.stop(len(totals))))
        print(f"  (matches per search with totalCount: median {statistics.median(counted):,.0f})")
        for kind in ("common word", "medium word", "rare word"):
            timings = []
            meter.start()
            for _ in range(like_runs):
                elapsed, _found = await run_like(engine, viewer, make_query(kind, words, rng))
                timings.append(elapsed)
            print(line(f"LIKE scan, {kind}", timings, meter.stop(like_runs)))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=40, help="searches per kind and viewer")
    parser.add_argument("--like-runs", type=int, default=5, help="LIKE scans per kind")
    parser.add_argument(
        "--viewer", choices=["member", "busy member", "admin"], help="measure one viewer only"
    )
    parser.add_argument("--fresh", action="store_true", help="rebuild the bench database")
    parser.add_argument("--drop", action="store_true", help="drop the bench database at the end")
    arguments = parser.parse_args()

    server = parse_database_url(os.environ.get("BENCH_DATABASE_URL", LOCAL_SERVER))
    target: DatabaseTarget = server.with_database(DATABASE)
    if arguments.fresh:
        await drop_database(target)
    await ensure_database(target)
    await asyncio.to_thread(upgrade_to_head, target)
    engine = create_engine(target, pool_size=1)
    words = vocabulary()
    try:
        have = await populated(engine)
        if have != arguments.messages:
            print(f"generating {arguments.messages:,} messages in {DATABASE} (had {have:,}) ...")
            started = time.perf_counter()
            await generate(engine, arguments.messages, words)
            print(f"  generated in {time.perf_counter() - started:.0f} s")
        async with engine.connect() as connection:
            sizes = (
                await connection.execute(
                    sa.text(
                        "SELECT pg_size_pretty(pg_total_relation_size('messages')), "
                        "pg_size_pretty(pg_relation_size('ix_messages_search_vector'))"
                    )
                )
            ).one()
        print(f"messages: {arguments.messages:,} rows, {sizes[0]} with indexes; GIN {sizes[1]}")
        await measure(engine, words, arguments.runs, arguments.like_runs, arguments.viewer)
    finally:
        await engine.dispose()
        if arguments.drop:
            await drop_database(target)


if __name__ == "__main__":
    asyncio.run(main())
