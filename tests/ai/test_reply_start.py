"""sendMessage reads its thread in one statement, then again with the row lock
(`reply_reads.read_thread_for_reply`). Under a lock that waited for another transaction,
PostgreSQL reads the locked row again but the rest of the statement (the running reply) as its
snapshot saw it: the statement says so (`fresh` false), and sendMessage then reads the running
reply again, so a reply stored by the transaction it waited for is a CONFLICT, not a second
running reply."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from atlas_gql.ai.exchange_rows import flush_exchange
from atlas_gql.ai.models import Message, MessageRole, MessageStatus, Thread
from atlas_gql.ai.reply_reads import read_thread_for_reply
from atlas_gql.ai.threads import running_reply
from atlas_gql.auth.models import RoleName
from atlas_gql.auth.viewer import Viewer
from atlas_gql.db import driver
from atlas_gql.db.engine import create_engine, create_sessionmaker
from atlas_gql.db.tables import new_row
from atlas_gql.db.url import DatabaseTarget
from atlas_gql.errors import NotFound
from atlas_gql.logs.audit import record_activity
from atlas_gql.logs.usage import advisory_lock, project_budget_lock, user_budget_lock
from atlas_gql.projects.models import ProjectSetting
from tests.ai.conftest import AIServer, StartServer
from tests.factories import create_assistant, create_project, create_thread, create_user
from tests.live import wait_until


@pytest.fixture
async def sessions(
    live_database: DatabaseTarget,
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(live_database, pool_size=3)
    try:
        yield create_sessionmaker(engine)
    finally:
        await engine.dispose()


async def _thread_of_new_user(
    sessions: async_sessionmaker[AsyncSession],
    *,
    in_project: bool = False,
    project_budget: int | None = None,
) -> tuple[Viewer, Thread]:
    """A new user's thread (`in_project`: in a project of theirs, with `project_budget`), and
    the user as its viewer."""
    async with sessions() as db:
        user = await create_user(db)
        project = await create_project(db, creator=user) if in_project else None
        assistant = await create_assistant(db, creator=user, project=project)
        thread = await create_thread(db, creator=user, project=project, assistant=assistant)
        if project is not None and project_budget is not None:
            db.add(
                ProjectSetting(
                    project_id=project.id, setting_key="monthlyTokenBudget", value=project_budget
                )
            )
        await db.commit()
    viewer = Viewer(
        user_id=user.id,
        session_id=uuid.uuid4(),
        email=user.email,
        roles=frozenset({RoleName.USER}),
        permissions=frozenset(),
    )
    return viewer, thread


async def _waits_for(db: AsyncSession, pid: object, kind: str, event: str | None = None) -> bool:
    """Whether the backend `pid` waits for a lock of `kind` (and `event`: "advisory", ...)."""
    waiting = (
        await db.execute(
            sa.text("SELECT wait_event_type, wait_event FROM pg_stat_activity WHERE pid = :pid"),
            {"pid": pid},
        )
    ).one()
    await db.rollback()
    return waiting[0] == kind and (event is None or waiting[1] == event)


async def test_a_locked_read_that_waited_says_its_running_reply_may_be_stale(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    viewer, thread = await _thread_of_new_user(sessions)
    async with sessions() as holder, sessions() as waiter, sessions() as observer:
        # Unlocked, and locked without waiting: the row is the snapshot's.
        seen = await read_thread_for_reply(waiter, viewer, thread.id, lock=False)
        assert (seen.postable, seen.running_id, seen.fresh) == (True, None, True)
        await waiter.rollback()
        waiter_pid = await waiter.scalar(sa.select(sa.func.pg_backend_pid()))
        # Another send holds the lock and stores its running reply.
        await holder.execute(sa.select(Thread).where(col(Thread.id) == thread.id).with_for_update())
        now = datetime.now(UTC)
        holder.add(
            Message(
                thread_id=thread.id,
                role=MessageRole.ASSISTANT,
                status=MessageStatus.IN_PROGRESS,
                created_at=now,
            )
        )
        await holder.execute(
            sa.update(Thread)
            .where(col(Thread.id) == thread.id)
            .values(last_event_sequence=col(Thread.last_event_sequence) + 1025)
        )
        await holder.flush()
        locked = asyncio.create_task(read_thread_for_reply(waiter, viewer, thread.id, lock=True))

        await wait_until(lambda: _waits_for(observer, waiter_pid, "Lock"))
        await holder.commit()
        read = await locked
        # The locked row is the new one; the running reply is the snapshot's (none): stale.
        assert read.thread.last_event_sequence == thread.last_event_sequence + 1025
        assert (read.running_id, read.fresh) == (None, False)
        # What sendMessage reads then: the reply stored meanwhile (a CONFLICT).
        assert await running_reply(waiter, thread.id) is not None
        await waiter.rollback()


async def test_the_rows_read_are_the_orm_s_and_the_session_s(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """The thread and its assistant, read as plain columns, are the rows the ORM loads (every
    column's value and type), persistent in the session: a change is flushed as the ORM's
    UPDATE. A thread the session holds already is that row, refreshed (as `populate_existing`
    did), its pending change dropped."""
    viewer, thread = await _thread_of_new_user(sessions)
    async with sessions() as db:
        read = await read_thread_for_reply(db, viewer, thread.id, lock=True)
        assert read.assistant is not None
        async with sessions() as orm:
            for row in (read.thread, read.assistant):
                loaded = await orm.get(type(row), row.id)
                assert loaded is not None
                for attr in sa.inspect(type(row)).column_attrs:
                    mine, theirs = getattr(row, attr.key), getattr(loaded, attr.key)
                    assert (mine, type(mine)) == (theirs, type(theirs)), attr.key
        assert sa.inspect(read.thread).persistent
        assert sa.inspect(read.assistant).persistent
        assert not db.dirty
        read.thread.title = "Renamed"
        await db.flush()
        assert await db.scalar(sa.select(col(Thread.title)).where(col(Thread.id) == thread.id)) == (
            "Renamed"
        )
        await db.commit()
    async with sessions() as db:
        held = await db.get(Thread, thread.id)
        assert held is not None
        held.title = "Pending"
        again = await read_thread_for_reply(db, viewer, thread.id, lock=True)
        assert again.thread is held
        assert held.title == "Renamed"
        assert not db.is_modified(held)
        await db.rollback()


async def _holds(db: AsyncSession, key: str) -> bool:
    """Whether another transaction holds the budget lock `key` (tried, then given back)."""
    taken = await db.scalar(
        sa.select(sa.func.pg_try_advisory_xact_lock(sa.func.hashtextextended(key, 0)))
    )
    await db.rollback()
    return not taken


async def _thread_row_is_locked(db: AsyncSession, thread_id: uuid.UUID) -> bool:
    """Whether another transaction holds the thread's row lock."""
    try:
        await db.execute(
            sa.select(col(Thread.id))
            .where(col(Thread.id) == thread_id)
            .with_for_update(nowait=True)
        )
    except DBAPIError as error:
        # (Another error is no answer: False, and the caller's assertion says so.)
        return "could not obtain lock" in str(error)
    finally:
        await db.rollback()
    return False


async def test_the_locked_read_takes_the_budgets_locks_after_the_thread_s(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """The locked read takes the thread's row lock, then the project's budget lock (when it
    has a budget), then `user_lock`: the order every writer takes them in. While it waits for
    the project's, it holds the thread's and not yet the sender's; then it holds all three
    until its transaction ends. The project's key is `project_budget_lock`'s."""
    viewer, thread = await _thread_of_new_user(sessions, in_project=True, project_budget=5)
    assert thread.project_id is not None
    project_key = project_budget_lock(thread.project_id)
    user_key = user_budget_lock(viewer.user_id)
    async with sessions() as holder, sessions() as waiter, sessions() as observer:
        # (Its transaction begins here: the read below runs on this connection.)
        waiter_pid = await waiter.scalar(sa.select(sa.func.pg_backend_pid()))
        await holder.execute(sa.select(advisory_lock(sa.literal(project_key))))
        read = asyncio.create_task(
            read_thread_for_reply(waiter, viewer, thread.id, lock=True, user_lock=user_key)
        )

        try:
            await wait_until(lambda: _waits_for(observer, waiter_pid, "Lock", "advisory"))
            assert await _thread_row_is_locked(observer, thread.id)
            assert not await _holds(observer, user_key)
        finally:
            await holder.commit()
            locked = await read
        assert locked.project_budget == 5
        assert await _thread_row_is_locked(observer, thread.id)
        assert await _holds(observer, project_key)
        assert await _holds(observer, user_key)
        await waiter.rollback()
        assert not await _thread_row_is_locked(observer, thread.id)
        assert not await _holds(observer, project_key)
        assert not await _holds(observer, user_key)


async def test_the_locked_read_takes_no_budget_lock_without_a_budget(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """No project budget and no `user_lock`: the thread's row lock alone."""
    viewer, thread = await _thread_of_new_user(sessions, in_project=True)
    assert thread.project_id is not None
    async with sessions() as waiter, sessions() as observer:
        locked = await read_thread_for_reply(waiter, viewer, thread.id, lock=True)
        assert locked.project_budget is None
        assert await _thread_row_is_locked(observer, thread.id)
        assert not await _holds(observer, project_budget_lock(thread.project_id))
        assert not await _holds(observer, user_budget_lock(viewer.user_id))
        await waiter.rollback()


async def test_the_exchange_s_rows_are_left_as_a_flush_leaves_them(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """The exchange's statement stores its rows, and they become the session's as a flush
    leaves new rows (ai/exchange_rows.py): persistent, nothing pending or modified; the
    transaction's own, so a rollback makes them transient again and stores nothing, and a
    commit keeps them."""
    viewer, thread = await _thread_of_new_user(sessions)
    for outcome in ("rollback", "commit"):
        sent: list[str] = []
        driver.listen(sent.append)
        try:
            async with sessions() as db:
                read = await read_thread_for_reply(db, viewer, thread.id, lock=True)
                now = datetime.now(UTC)
                question = new_row(
                    Message, thread_id=thread.id, user_id=viewer.user_id, role=MessageRole.USER,
                    content=f"Stored at {outcome}", status=MessageStatus.COMPLETED,
                    created_at=now, completed_at=now,
                )  # fmt: skip
                db.add(question)
                read.thread.active_leaf_id = question.id
                activity = record_activity(
                    db=db, action="message.send", user_id=viewer.user_id, entity_id=question.id
                )
                assert await flush_exchange(db, thread=read.thread, activity=activity) is None
                assert "INSERT INTO messages" in sent[-1], sent
                for row in (question, activity, read.thread):
                    assert sa.inspect(row).persistent
                    assert not db.is_modified(row)
                # (The thread may stay in `dirty` with nothing to write: a flush sends nothing.)
                assert not db.new
                assert not [row for row in db.dirty if db.is_modified(row)]
                if outcome == "rollback":
                    await db.rollback()
                    assert sa.inspect(question).transient
                    assert sa.inspect(activity).transient
                else:
                    await db.commit()
        finally:
            driver.remove(sent.append)
        async with sessions() as db:
            stored = await db.scalar(
                sa.select(sa.func.count())
                .select_from(Message)
                .where(col(Message.id) == question.id)
            )
        assert stored == (1 if outcome == "commit" else 0), outcome


async def test_a_thread_the_viewer_cannot_see_is_not_found(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    _, thread = await _thread_of_new_user(sessions)
    other, _ = await _thread_of_new_user(sessions)
    async with sessions() as db:
        for lock in (False, True):
            with pytest.raises(NotFound):
                await read_thread_for_reply(db, other, thread.id, lock=lock)


SET_BUDGET = (
    "mutation($p: ID!, $v: JSON!) { setProjectSetting(projectId: $p, "
    'key: "monthlyTokenBudget", value: $v) { key } }'
)


async def _send_statements(ai: AIServer, thread_id: str, content: str) -> list[str]:
    """The statements sendMessage's request runs (its own task's: not the reply's, which
    starts once it commits, nor a subscription's), through the engine or on the driver's
    connection (db/driver.py)."""
    engine = ai.server.app.state.atlas["runtime"].sessionmaker.kw["bind"]
    seen: list[tuple[asyncio.Task[Any] | None, str]] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append((asyncio.current_task(), " ".join(statement.split())))

    def record_driver(statement: str) -> None:
        seen.append((asyncio.current_task(), " ".join(statement.split())))

    sa.event.listen(engine.sync_engine, "before_cursor_execute", record)
    driver.listen(record_driver)
    try:
        body = await ai.send(thread_id, content)
    finally:
        sa.event.remove(engine.sync_engine, "before_cursor_execute", record)
        driver.remove(record_driver)
    assert "errors" not in body, body
    [sender] = {task for task, text in seen if "INSERT INTO messages" in text}
    return [text for task, text in seen if task is sender]


async def test_send_message_runs_a_fixed_number_of_statements(
    start_ai_server: StartServer,
) -> None:
    """Every check on (the sender's rate and budget, the project's budget): four statements.
    On the driver's connection before the operation's transaction (db/driver.py): the session
    check, and the sender with the thread's running reply and the rate's token (one
    statement). In the transaction: the thread locked, then the two budgets' locks (one
    statement, on the session's connection, no ORM), the exchange's rows with its activity
    row, the thread's update and both budgets' usage with their replies in flight (one
    statement, ai/exchange_rows.py, after the locks'). The same number in a thread with a
    longer history."""
    ai = await start_ai_server(atlas_user_monthly_tokens=10**12)
    await ai.client.data(
        SET_BUDGET, {"p": ai.people.project_id, "v": 10**12}, token=ai.people.manager
    )
    thread_id = await ai.new_thread()
    counts = []
    for turn in range(3):
        async with ai.client.subscribe(ai.people.member, thread_id) as subscription:
            statements = await _send_statements(ai, thread_id, f"Question {turn}")
            await subscription.until_final()
        counts.append(len(statements))
    # Each statement in full on a failure (pytest cuts a list short in the message).
    assert counts == [4, 4, 4], "\n".join(statements)
    # The thread is read once, locked, and the same statement takes the two budgets' locks
    # (the project's first) once it holds the thread's row.
    [locked] = [text for text in statements if "FROM threads LEFT OUTER JOIN" in text]
    assert "FOR UPDATE OF threads" in locked, locked
    assert locked.count("pg_advisory_xact_lock") == 2, locked
    assert not [text for text in statements if text.startswith("SELECT pg_advisory_xact_lock")]
    # The exchange's rows (its two messages, its activity row, the thread) and both budgets'
    # reads are one statement, the last.
    exchange = statements[-1]
    assert "INSERT INTO messages" in exchange, exchange
    assert "INSERT INTO activity_logs" in exchange
    assert "UPDATE threads" in exchange
    assert "pg_advisory_xact_lock" not in exchange
    assert "api_usage_logs.project_id" in exchange
    assert "api_usage_logs.user_id" in exchange


async def test_the_exchange_s_values_are_the_orm_s(start_ai_server: StartServer) -> None:
    """The exchange's statement sends its values as a session's statement does (each type's
    bind processing: an enum's name, a JSON document, JSON null for no citations): read back,
    they are the rows the ORM would have written."""
    ai = await start_ai_server()
    thread_id = await ai.new_thread()
    async with ai.client.subscribe(ai.people.member, thread_id) as subscription:
        body = await ai.send(thread_id, "Values")
        assert "errors" not in body, body
        await subscription.until_final()
    sessionmaker = ai.server.app.state.atlas["runtime"].sessionmaker
    async with sessionmaker() as db:
        question = await db.scalar(sa.select(Message).where(col(Message.content) == "Values"))
        assert question is not None
        rows = (
            await db.execute(
                sa.text(
                    "SELECT role, status, jsonb_typeof(citations) FROM messages "
                    "WHERE id = :id OR parent_id = :id ORDER BY created_at"
                ),
                {"id": question.id},
            )
        ).all()
        details = await db.scalar(
            sa.text(
                "SELECT jsonb_typeof(details) FROM activity_logs "
                "WHERE action = 'message.send' AND entity_id = :id"
            ),
            {"id": str(question.id)},
        )
    assert [tuple(row) for row in rows] == [
        ("USER", "COMPLETED", "null"),
        ("ASSISTANT", "COMPLETED", "null"),
    ], rows
    assert (question.role, question.status) == (MessageRole.USER, MessageStatus.COMPLETED)
    assert details == "object"
