"""The reads a new reply's checks make (ai/messages.py `prepare_reply`, `check_budgets`),
each one statement built once with bound parameters: building the rules' SQL and its cache
key costs more than running it, and these run at every sendMessage, editMessage and
regenerateMessage. A reply's start reads its thread once, locked (`read_thread_for_reply`);
whether a reply nobody runs is in the way is read before, with the sender
(`read_sender_and_running`, or `take_message_token`, which takes the sender's rate token in
the same statement), so it is recovered before the thread is locked."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased
from sqlmodel import col

from atlas_gql.ai import rules
from atlas_gql.ai.models import Assistant, Message, MessageRole, MessageStatus, Thread
from atlas_gql.auth import buckets
from atlas_gql.auth.models import PermissionName, User
from atlas_gql.auth.rules import ViewerRef
from atlas_gql.auth.viewer import Viewer
from atlas_gql.db.driver import DriverStatement, fetch_in_transaction, fetch_outside_transaction
from atlas_gql.db.tables import LoadedRow, table_of
from atlas_gql.errors import NotFound
from atlas_gql.logs.models import ApiUsageLog
from atlas_gql.logs.usage import (
    BUDGET_SETTING_KEY,
    CHARS_PER_TOKEN,
    InFlight,
    advisory_lock,
    in_month,
    month_start,
    next_month_start,
    parse_budget,
    project_budget_lock_of,
)
from atlas_gql.projects.models import ProjectSetting


@dataclass(frozen=True)
class ThreadForReply:
    """One read of what a new reply depends on in its thread (`read_thread_for_reply`)."""

    thread: Thread
    postable: bool
    # The reply running in the thread (its id), if any.
    running_id: uuid.UUID | None
    assistant: Assistant | None
    # False when the thread row changed after the statement's snapshot (the lock waited for
    # another transaction): `running_id` may then be stale and is read again.
    fresh: bool
    # The project's monthlyTokenBudget setting (read with the lock only).
    project_budget: int | None


# The thread's and its assistant's columns, read as plain columns and made the session's rows
# (`db.tables.LoadedRow`): the ORM's loading of the two entities cost more than the statement.
_THREAD_ROW = LoadedRow.of(Thread)
_ASSISTANT_ROW = LoadedRow.of(Assistant)


def _thread_for_reply_statement(*, lock: bool) -> DriverStatement:
    """The thread `:thread_id` as the viewer (`:viewer_id`, `:viewer_is_admin`) sees it, with
    whether they may post in it, its running reply and its assistant, as plain columns: the
    thread's (`_THREAD_ROW`), then postable, the running reply's id, the assistant's
    (`_ASSISTANT_ROW`), fresh, the project's budget. Built once, with bound parameters:
    building the rules' SQL and its cache key costs more than running it."""
    viewer = ViewerRef(
        user_id=sa.bindparam("viewer_id", type_=sa.Uuid),
        is_admin=sa.bindparam("viewer_is_admin", type_=sa.Boolean),
        # Seeing and posting in a thread depend on who the viewer is, their memberships and
        # ADMIN, never on their permissions.
        permissions={permission: sa.false() for permission in PermissionName},
    )
    running = aliased(Message, name="running_reply")
    threads = rules.threads
    assistants = table_of(Assistant)
    # Under a lock that waited for another transaction PostgreSQL reads the locked row again,
    # the rest of the row as the statement's snapshot saw it: `fresh` tells (the thread row
    # of the snapshot is the version locked).
    snapshot = threads.alias("snapshot")
    fresh = (
        sa.select(sa.literal_column("snapshot.xmin") == sa.literal_column("threads.xmin"))
        .where(snapshot.c.id == threads.c.id)
        .scalar_subquery()
    )
    budget = (
        sa.select(col(ProjectSetting.value))
        .where(
            col(ProjectSetting.project_id) == threads.c.project_id,
            col(ProjectSetting.setting_key) == BUDGET_SETTING_KEY,
        )
        .scalar_subquery()
    )
    statement = (
        sa.select(
            *_THREAD_ROW.columns,
            rules.thread_postable(viewer, threads).label("postable"),
            col(running.id).label("running_id"),
            *_ASSISTANT_ROW.columns,
            fresh.label("fresh") if lock else sa.true().label("fresh"),
            budget.label("project_budget") if lock else sa.null().label("project_budget"),
        )
        .select_from(threads)
        .outerjoin(
            running,
            sa.and_(
                col(running.thread_id) == threads.c.id,
                col(running.status) == MessageStatus.IN_PROGRESS,
            ),
        )
        .outerjoin(assistants, assistants.c.id == threads.c.assistant_id)
        .where(threads.c.id == sa.bindparam("thread_id", type_=sa.Uuid))
        .where(rules.thread_visible(viewer, threads))
        .limit(1)
    )
    if not lock:
        return DriverStatement.of(statement)
    return DriverStatement.of(_taking_budget_locks(statement.with_for_update(of=threads), threads))


def _taking_budget_locks(locked: sa.Select[Any], threads: sa.FromClause) -> sa.Select[Any]:
    """`locked` (the thread's read FOR UPDATE) with, after its columns, the budget locks a
    reply is held to taken once the row lock is granted (`check_budgets`), in the order every
    writer takes them: the project's when it has a budget, then `:user_lock` (the sender's,
    NULL: none). Each layer is a subquery PostgreSQL never flattens (one with FOR UPDATE, one
    with a volatile function in its target list), so the row lock comes first, then the
    project's, then the sender's: the order sendMessage took them in before (the thread read,
    then the exchange's statement). Taken here, the exchange's statement (a later statement,
    whose READ COMMITTED snapshot is taken after the locks were granted) reads both budgets
    (docs/ai.md, "Cheaper reply starts, sixth pass")."""
    read = locked.set_label_style(sa.LABEL_STYLE_TABLENAME_PLUS_COL).subquery("locked_thread")
    project_id = read.corresponding_column(threads.c.project_id)
    assert project_id is not None
    project_locked = sa.case(
        (read.c.project_budget.is_not(None), advisory_lock(project_budget_lock_of(project_id)))
    )
    with_project = sa.select(*read.c, project_locked.label("project_locked")).subquery(
        "project_locked"
    )
    user_lock = sa.bindparam("user_lock", type_=sa.String)
    user_locked = sa.case((user_lock.is_not(None), advisory_lock(user_lock)))
    return sa.select(*with_project.c, user_locked.label("user_locked"))


def _sender_and_running_statement() -> sa.Select[User, Message]:
    running = aliased(Message, name="running_reply")
    return (
        sa.select(User, running)
        .outerjoin(
            running,
            sa.and_(
                col(running.thread_id) == sa.bindparam("thread_id", type_=sa.Uuid),
                col(running.status) == MessageStatus.IN_PROGRESS,
            ),
        )
        .where(col(User.id) == sa.bindparam("user_id", type_=sa.Uuid))
        .limit(1)
    )


_SENDER_AND_RUNNING = _sender_and_running_statement()


def message_bucket_key(user_id: uuid.UUID) -> str:
    """The key of a sender's sendMessage bucket (ai/messages.py `message_bucket`)."""
    return f"messages:user:{user_id}"


@dataclass(frozen=True)
class RunningReply:
    """The reply running in a thread, as far as a new reply's start looks at it: its id, and
    whether anyone still runs it (`recovery.is_stale`)."""

    id: uuid.UUID
    created_at: datetime
    heartbeat_at: datetime | None
    reply_worker_id: uuid.UUID | None
    upstream_sequence: int | None
    event_sequence_base: int | None
    openai_response_id: str | None


# What a new reply's start reads of the reply running in the thread, in `RunningReply`'s order.
_RUNNING_FIELDS = tuple(field.name for field in fields(RunningReply))


def _sender_running_and_token_statement() -> sa.Select[Any]:
    """`_sender_and_running_statement` as plain columns (what a new reply's start reads of
    the sender and of the running reply: `SenderCounted`), taking a token of the sender's
    message bucket in the same statement: their own rate or `:default_per_minute`, per
    minute."""
    sender_id = sa.bindparam("user_id", type_=sa.Uuid)
    per_minute = sa.func.coalesce(
        col(User.messages_per_minute), sa.bindparam("default_per_minute", type_=sa.Integer)
    )
    taken = buckets.taking_per_period(per_minute, seconds=60, where=col(User.id) == sender_id)
    left = sa.select(taken.c.tokens).scalar_subquery()
    running = aliased(Message, name="running_reply")
    return (
        sa.select(
            col(User.messages_per_minute),
            col(User.monthly_token_budget),
            *(getattr(running, field) for field in _RUNNING_FIELDS),
            left.label("taken"),
        )
        .outerjoin(
            running,
            sa.and_(
                col(running.thread_id) == sa.bindparam("thread_id", type_=sa.Uuid),
                col(running.status) == MessageStatus.IN_PROGRESS,
            ),
        )
        .where(col(User.id) == sender_id)
        .limit(1)
    )


# One statement on the driver's connection, with no transaction and no ORM session (it runs
# before the operation's session begins: `db.driver`).
_SENDER_RUNNING_AND_TOKEN = DriverStatement.of(_sender_running_and_token_statement())


@dataclass(frozen=True)
class SenderCounted:
    """What `take_message_token` read: whether the sender exists (False: nothing taken),
    their own limits, the reply running in the thread, and whether a token of the sender's
    rate was taken."""

    found: bool
    messages_per_minute: int | None
    monthly_token_budget: int | None
    running: RunningReply | None
    taken: bool


async def take_message_token(
    sessionmaker: async_sessionmaker[AsyncSession],
    user_id: uuid.UUID,
    thread_id: uuid.UUID,
    *,
    default_per_minute: int,
) -> SenderCounted:
    """`read_sender_and_running` (plain columns), and a token of the sender's message rate
    taken (their own `messages_per_minute`, else `default_per_minute`), all in ONE statement
    that needs no transaction (`buckets.taking_per_period`), on its own connection."""
    parameters = {
        "user_id": user_id,
        "thread_id": thread_id,
        "bucket_key": message_bucket_key(user_id),
        "default_per_minute": default_per_minute,
    }
    rows = await fetch_outside_transaction(sessionmaker, _SENDER_RUNNING_AND_TOKEN, parameters)
    if not rows:
        return SenderCounted(
            found=False,
            messages_per_minute=None,
            monthly_token_budget=None,
            running=None,
            taken=False,
        )
    row = rows[0]
    running_id = row[2]
    running = None if running_id is None else RunningReply(*row[2 : 2 + len(_RUNNING_FIELDS)])
    return SenderCounted(
        found=True,
        messages_per_minute=row[0],
        monthly_token_budget=row[1],
        running=running,
        taken=row[-1] is not None,
    )


async def read_sender_and_running(
    db: AsyncSession, user_id: uuid.UUID, thread_id: uuid.UUID
) -> tuple[User | None, Message | None]:
    """The sender (their own limits) and the reply running in the thread, if any, in ONE
    statement, whoever may see the thread: the running reply is only looked at to recover it
    when nobody runs it (what the stale-reply sweep does for every thread), never shown."""
    parameters = {"user_id": user_id, "thread_id": thread_id}
    row = (await db.execute(_SENDER_AND_RUNNING, parameters)).one_or_none()
    if row is None:
        return None, None
    sender, running = row
    return sender, running


_THREAD_FOR_REPLY = _thread_for_reply_statement(lock=False)
_THREAD_FOR_REPLY_LOCKED = _thread_for_reply_statement(lock=True)


async def read_thread_for_reply(
    db: AsyncSession,
    viewer: Viewer,
    thread_id: uuid.UUID,
    *,
    lock: bool,
    user_lock: str | None = None,
) -> ThreadForReply:
    """The thread the viewer sees (NOT_FOUND otherwise), whether they may post in it, its
    running reply and its assistant, in ONE statement on the session's connection, in its
    transaction (`db.driver.fetch_in_transaction`: no ORM execution); the thread and the
    assistant become the session's rows as the ORM would load them (`LoadedRow`). `lock`
    takes the thread's row lock (FOR UPDATE OF threads; the session's thread read again),
    then the budget locks the reply is held to, held until the transaction ends: the
    project's when it has a budget, then `user_lock` (the sender's, None: none)."""
    parameters = {
        "thread_id": thread_id,
        "viewer_id": viewer.user_id,
        "viewer_is_admin": viewer.is_admin,
        "user_lock": user_lock,
    }
    statement = _THREAD_FOR_REPLY_LOCKED if lock else _THREAD_FOR_REPLY
    rows = await fetch_in_transaction(db, statement, parameters)
    if not rows:
        raise NotFound("Thread not found.")
    row = tuple(rows[0])
    threads = len(_THREAD_ROW.keys)
    postable, running_id = row[threads : threads + 2]
    assistants = threads + 2 + len(_ASSISTANT_ROW.keys)
    assistant_values = row[threads + 2 : assistants]
    # (The locked read's budget locks follow: nothing to read of them.)
    is_fresh, budget = row[assistants : assistants + 2]
    assistant_id = assistant_values[_ASSISTANT_ROW.keys.index("id")]
    return ThreadForReply(
        thread=_THREAD_ROW.load(db, row[:threads]),
        postable=bool(postable),
        running_id=running_id,
        assistant=None if assistant_id is None else _ASSISTANT_ROW.load(db, assistant_values),
        fresh=bool(is_fresh),
        project_budget=parse_budget(budget),
    )


def _spent_statement(owner: sa.ColumnElement[bool], whose: sa.ColumnElement[bool]) -> sa.Subquery:
    """The tokens used this month (`ApiUsageLog` rows of `owner` from `:start` to `:end`) and
    the replies in flight (`whose`) with the tokens reckoned for them: one row."""
    used = (
        sa.select(
            sa.func.coalesce(sa.func.sum(col(ApiUsageLog.input_tokens)), 0)
            + sa.func.coalesce(sa.func.sum(col(ApiUsageLog.output_tokens)), 0)
        )
        .where(
            owner,
            in_month(
                sa.bindparam("start", type_=sa.DateTime(timezone=True)),
                sa.bindparam("end", type_=sa.DateTime(timezone=True)),
            ),
        )
        .scalar_subquery()
    )
    chars = sa.func.length(col(Message.content))
    reckoned = sa.func.greatest(1, (chars + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN)
    return (
        sa.select(used, sa.func.count(), sa.func.coalesce(sa.func.sum(reckoned), 0))
        .where(
            col(Message.status) == MessageStatus.IN_PROGRESS,
            col(Message.role) == MessageRole.ASSISTANT,
            # The reply being checked, stored already in the same transaction.
            col(Message.id) != sa.bindparam("reply_id", type_=sa.Uuid),
            whose,
        )
        .subquery()
    )


def _project_spent() -> sa.Subquery:
    project_id = sa.bindparam("project_id", type_=sa.Uuid)
    return _spent_statement(
        col(ApiUsageLog.project_id) == project_id,
        col(Message.thread_id).in_(
            sa.select(col(Thread.id)).where(col(Thread.project_id) == project_id)
        ),
    )


def _user_spent() -> sa.Subquery:
    user_id = sa.bindparam("user_id", type_=sa.Uuid)
    return _spent_statement(col(ApiUsageLog.user_id) == user_id, col(Message.user_id) == user_id)


def budgets_spent(
    *, project: bool, user: bool, first: Sequence[sa.FromClause] = ()
) -> sa.Select[Any]:
    """The project's (`:project_id`) and/or the sender's (`:user_id`) usage and replies in
    flight other than `:reply_id` (`:start` to `:end`), three columns each, in that order, in
    ONE row: what `spent` reads, and the exchange's statement with it (ai/exchange_rows.py),
    whose one-row `first` come before them."""
    sources = [
        *first,
        *(read() for wanted, read in ((project, _project_spent), (user, _user_spent)) if wanted),
    ]
    statement = sa.select(*(column for source in sources for column in source.c))
    for source in sources:
        statement = statement.select_from(source)
    return statement


def _budgets_spent_statement(*, project: bool, user: bool) -> DriverStatement:
    """`budgets_spent` as a statement of its own."""
    return DriverStatement.of(budgets_spent(project=project, user=user))


# Built once (bound parameters): see `_thread_for_reply_statement`. Key: (project, user).
_BUDGETS_SPENT = {
    (project, user): _budgets_spent_statement(project=project, user=user)
    for project, user in ((True, True), (True, False), (False, True))
}


@dataclass(frozen=True)
class BudgetsSpent:
    """What `spent` read: (tokens used this month, replies in flight) of the project and of
    the sender, each None when not read."""

    project: tuple[int, InFlight] | None
    user: tuple[int, InFlight] | None


@dataclass(frozen=True)
class SpentOf:
    """Whose budgets `spent` reads (the project's and/or the sender's, None: not that one),
    for the reply `reply_id` stored in the same transaction (not counted as in flight)."""

    reply_id: uuid.UUID
    project_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = None

    @property
    def shape(self) -> tuple[bool, bool]:
        """(project, user): which of `budgets_spent` are read."""
        return self.project_id is not None, self.user_id is not None

    def parameters(self) -> dict[str, Any]:
        """`budgets_spent`'s parameters: this UTC month."""
        now = datetime.now(UTC)
        return {
            "project_id": self.project_id,
            "user_id": self.user_id,
            "reply_id": self.reply_id,
            "start": month_start(now),
            "end": next_month_start(now),
        }

    def read(self, row: Sequence[Any]) -> BudgetsSpent:
        """`budgets_spent`'s columns (`row`, the driver's values) as what they count."""
        counted = [
            (int(row[n]), InFlight(replies=int(row[n + 1]), tokens=int(row[n + 2])))
            for n in range(0, len(row), 3)
        ]
        return BudgetsSpent(
            project=counted.pop(0) if self.project_id is not None else None,
            user=counted.pop(0) if self.user_id is not None else None,
        )


async def spent(db: AsyncSession, of: SpentOf) -> BudgetsSpent:
    """A project's and/or a user's (the replies they asked for) tokens used this UTC month,
    and its replies IN_PROGRESS other than `of.reply_id` with the tokens reckoned for them:
    each counts the estimate of its saved partial text (ceil(chars / 4)), and at least 1
    token, so a budget one token short runs one reply at a time. ONE statement for both, on
    the session's connection in its transaction (`db.driver.fetch_in_transaction`: no ORM
    execution); under READ COMMITTED it sees what committed before it started, so a caller
    runs it after the statement taking the budgets' locks. (The exchange's statement reads
    the same, ai/exchange_rows.py.)"""
    [row] = await fetch_in_transaction(db, _BUDGETS_SPENT[of.shape], of.parameters())
    return of.read(row)
