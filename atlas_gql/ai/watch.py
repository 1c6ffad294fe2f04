"""Open `threadEvents` subscriptions keep their right to the thread: batched access re-checks.

A subscription was allowed when it started; its viewer may since have logged out, been
deactivated or removed from the project. Each subscription registers a `Watch` (its user,
session, thread and the broker's `SubscriptionControl`) here, and this worker re-checks all of
them together, in ONE statement per check, never once per subscriber:

- **at each new exchange** (a `MessageCreated` reaching the subscribers of a thread): the first
  subscriber to see it runs the check for every watch of that thread, the others wait for the
  same outcome (keyed by thread and event number), so nobody receives the new exchange after
  losing the right, and 1,000 subscribers cost one statement, not 2,000;
- **every ATLAS_SUBSCRIPTION_RECHECK seconds** (default 1), for every watch of the worker: so a
  subscription stops within about that long of a logout, a deactivation or a removal from the
  project, even in the middle of a reply (no `MessageCreated` comes then).

A watch that fails is stopped through its control: its reader raises UNAUTHENTICATED ("Your
session has ended.") or NOT_FOUND (the thread, as for a thread never seen) instead of its next
event, which the resolver reports as the subscription's last result before `complete`.
Distinct (user, session, thread) triples are checked once however many subscriptions share
them; a database error leaves every subscription running (the next check tries again)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from atlas_gql.ai import rules
from atlas_gql.ai.broker import SubscriptionControl
from atlas_gql.auth.models import PermissionName, Role, RoleName, UserRole
from atlas_gql.auth.rules import ViewerRef, live_session
from atlas_gql.db.tables import table_of
from atlas_gql.errors import AtlasError, NotFound, Unauthenticated

logger = logging.getLogger(__name__)

# Triples per statement (a VALUES list); more are checked in several statements.
CHECK_BATCH = 1_000

Triple = tuple[uuid.UUID, uuid.UUID, uuid.UUID]  # (user, session, thread)


@dataclass(eq=False)
class Watch:
    """One open subscription: whose, on which thread, and how to stop it."""

    user_id: uuid.UUID
    session_id: uuid.UUID
    thread_id: uuid.UUID
    control: SubscriptionControl = field(default_factory=SubscriptionControl)

    @property
    def triple(self) -> Triple:
        return (self.user_id, self.session_id, self.thread_id)


def _session_ended() -> AtlasError:
    return Unauthenticated("Your session has ended.")


def _thread_gone() -> AtlasError:
    return NotFound("Thread not found.")


def _access_statement() -> sa.Select[Any]:
    """(n, live, visible) per triple: whether the session is live with its user active, and
    whether that user still sees the thread (`ai.rules.thread_visible`, the rule every read
    path uses), for all of them in one statement. The triples come as three array parameters
    (unnest ... WITH ORDINALITY), so the statement is built and compiled once."""
    watched = (
        sa.func.unnest(
            sa.bindparam("user_ids", type_=postgresql.ARRAY(sa.Uuid)),
            sa.bindparam("session_ids", type_=postgresql.ARRAY(sa.Uuid)),
            sa.bindparam("thread_ids", type_=postgresql.ARRAY(sa.Uuid)),
        )
        .table_valued(
            sa.column("user_id", sa.Uuid),
            sa.column("session_id", sa.Uuid),
            sa.column("thread_id", sa.Uuid),
            with_ordinality="n",
        )
        .render_derived(name="watched")
    )
    user_roles, roles = table_of(UserRole), table_of(Role)
    is_admin = sa.exists(
        sa.select(sa.literal_column("1"))
        .select_from(user_roles)
        .join(roles, roles.c.id == user_roles.c.role_id)
        .where(user_roles.c.user_id == watched.c.user_id, roles.c.name == RoleName.ADMIN.value)
    )
    # Thread visibility depends on who the user is, their membership and ADMIN, never on
    # their permissions.
    viewer = ViewerRef(
        user_id=watched.c.user_id,
        is_admin=is_admin,
        permissions={permission: sa.false() for permission in PermissionName},
    )
    threads = rules.threads
    live = sa.exists(live_session(user_id=watched.c.user_id, session_id=watched.c.session_id))
    # The thread is joined at the top level (not read in a nested EXISTS), so every subquery
    # of the rules correlates with this row of `watched` (SQLAlchemy correlates a subquery
    # with the SELECT right around it only).
    visible = sa.func.coalesce(
        sa.and_(threads.c.id.is_not(None), rules.thread_visible(viewer, threads)), sa.false()
    )
    return sa.select(watched.c.n, live.label("live"), visible.label("visible")).select_from(
        watched.outerjoin(threads, threads.c.id == watched.c.thread_id)
    )


ACCESS_STATEMENT = _access_statement()


async def failed_access(db: AsyncSession, triples: list[Triple]) -> dict[Triple, AtlasError]:
    """The triples that lost their right, with the error their subscription ends with."""
    failed: dict[Triple, AtlasError] = {}
    for start in range(0, len(triples), CHECK_BATCH):
        batch = triples[start : start + CHECK_BATCH]
        users, sessions, threads = (list(column) for column in zip(*batch, strict=True))
        parameters = {"user_ids": users, "session_ids": sessions, "thread_ids": threads}
        for n, live, visible in (await db.execute(ACCESS_STATEMENT, parameters)).all():
            if not live:
                failed[batch[n - 1]] = _session_ended()
            elif not visible:
                failed[batch[n - 1]] = _thread_gone()
    return failed


class SubscriptionWatches:
    """This worker's open subscriptions and their batched re-checks (see the module)."""

    def __init__(self, *, sessionmaker: async_sessionmaker[AsyncSession], interval: float) -> None:
        self.sessionmaker = sessionmaker
        self.interval = interval
        self._by_thread: dict[uuid.UUID, set[Watch]] = {}
        # The check of a thread's exchange in progress or done, by (thread, event number).
        self._exchange_checks: dict[tuple[uuid.UUID, int], asyncio.Future[None]] = {}
        self._task: asyncio.Task[None] | None = None
        # Statements run (tests and the bench read it).
        self.statements = 0

    def add(self, watch: Watch) -> Watch:
        self._by_thread.setdefault(watch.thread_id, set()).add(watch)
        return watch

    def remove(self, watch: Watch) -> None:
        group = self._by_thread.get(watch.thread_id)
        if group is not None:
            group.discard(watch)
            if not group:
                del self._by_thread[watch.thread_id]

    def __len__(self) -> int:
        return sum(len(group) for group in self._by_thread.values())

    async def check_exchange(self, thread_id: uuid.UUID, sequence: int) -> None:
        """Re-check every watch of the thread once for this new exchange (event `sequence`);
        concurrent callers for the same event share the one statement."""
        key = (thread_id, sequence)
        check = self._exchange_checks.get(key)
        if check is None:
            check = asyncio.ensure_future(self._check(list(self._by_thread.get(thread_id, ()))))
            self._exchange_checks[key] = check
            # Forgotten once settled: a later subscriber replaying this event checks anew.
            check.add_done_callback(lambda _: self._exchange_checks.pop(key, None))
        await asyncio.shield(check)

    async def check_all(self) -> None:
        """Re-check every watch of this worker (the periodic check)."""
        await self._check([watch for group in self._by_thread.values() for watch in group])

    async def _check(self, watches: list[Watch]) -> None:
        live = [watch for watch in watches if watch.control.error is None]
        if not live:
            return
        triples = list(dict.fromkeys(watch.triple for watch in live))
        try:
            async with self.sessionmaker() as db:
                self.statements += (len(triples) + CHECK_BATCH - 1) // CHECK_BATCH
                failed = await failed_access(db, triples)
        except Exception:
            # The subscriptions go on: the database holds the truth, the next check retries.
            logger.warning("subscription access re-check failed", exc_info=True)
            return
        for watch in live:
            error = failed.get(watch.triple)
            if error is not None:
                watch.control.stop(error)

    def start(self) -> None:
        if self.interval > 0 and self._task is None:
            self._task = asyncio.create_task(self._run(), name="ai-subscription-recheck")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if self._by_thread:
                await self.check_all()
