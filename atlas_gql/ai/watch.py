"""Open `threadEvents` subscriptions keep their right to the thread: batched access re-checks.

A subscription was allowed when it started; its viewer may since have logged out, had their
API key revoked or expired, been deactivated or removed from the project. Each subscription
registers a `Watch` (its user, its credential: the server-side session or the personal API
key it was made with, its thread and the broker's `SubscriptionControl`) here, and this worker
re-checks all of them together, sessions and keys alike, in ONE statement per check, never
once per subscriber:

- **at each new exchange** (a `MessageCreated` reaching the subscribers of a thread): the first
  subscriber to see it runs the check for every watch of that thread, the others wait for the
  same outcome (keyed by thread and event number), so nobody receives the new exchange after
  losing the right, and 1,000 subscribers cost one statement, not 2,000;
- **but not for the sender's own credential at their own exchange**: the operation that stored
  the exchange (sendMessage, editMessage, regenerateMessage) checked, moments before, the
  sender's session or key (the operation's session check) and their right to post in the thread
  (the locked thread read), in the transaction that stored it; it vouches for that key
  (`vouch`), and the exchange's check leaves it out for VOUCH_SECONDS after the commit. A
  sender watching their own thread (the usual case: one person chatting) then costs no
  statement at all; anyone else watching is checked as above;
- **every ATLAS_SUBSCRIPTION_RECHECK seconds** (default 1), for every watch of the worker: so a
  subscription stops within about that long of a logout, a key's revocation or expiry, a
  deactivation or a removal from the project, even in the middle of a reply (no
  `MessageCreated` comes then).

The credential is checked by the rules every request uses (`auth.rules.live_session`,
`auth.rules.live_api_key`: not revoked, not expired, the user active), the thread by
`ai.rules.thread_visible` with the viewer the credential gives: a key without the ADMIN scope
does not see as an administrator, as `Viewer.for_api_key` says.

A watch that fails is stopped through its control: its reader raises UNAUTHENTICATED ("Your
session has ended."; for a key, the refusal of a bad key with reason API_KEY_INVALID) or
NOT_FOUND (the thread, as for a thread never seen) instead of its next event, which the
resolver reports as the subscription's last result before `complete`. Distinct (user,
credential, thread) keys are checked once however many subscriptions share them; a database
error leaves every subscription running (the next check tries again)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from atlas_gql.ai import rules
from atlas_gql.ai.broker import SubscriptionControl
from atlas_gql.auth.apikeys import REFUSED_MESSAGE
from atlas_gql.auth.models import ApiKey, ApiKeyScope, PermissionName, Role, RoleName, UserRole
from atlas_gql.auth.rules import ViewerRef, live_api_key, live_session
from atlas_gql.auth.viewer import Viewer
from atlas_gql.db.tables import table_of
from atlas_gql.db.utils import without_transaction
from atlas_gql.errors import AtlasError, NotFound, Unauthenticated

logger = logging.getLogger(__name__)

# Watch keys per statement (array parameters); more are checked in several statements.
CHECK_BATCH = 1_000

# How long after its commit an exchange's own check may leave out its sender's key (`vouch`),
# and how many vouched exchanges are kept at most (a thread nobody watches on this worker never
# asks: the oldest are forgotten first).
VOUCH_SECONDS = 1.0
VOUCH_LIMIT = 4_096

# (user, session, API key, thread): exactly one of session and key is set.
WatchKey = tuple[uuid.UUID, uuid.UUID | None, uuid.UUID | None, uuid.UUID]


def watch_key(viewer: Viewer, thread_id: uuid.UUID) -> WatchKey:
    """The key of the viewer's credential and the thread (what one check decides)."""
    return (viewer.user_id, viewer.session_id, viewer.api_key_id, thread_id)


@dataclass(eq=False)
class Watch:
    """One open subscription: whose, by which credential (a session or an API key), on which
    thread, and how to stop it."""

    user_id: uuid.UUID
    session_id: uuid.UUID | None
    thread_id: uuid.UUID
    api_key_id: uuid.UUID | None = None
    control: SubscriptionControl = field(default_factory=SubscriptionControl)

    @classmethod
    def of(cls, viewer: Viewer, thread_id: uuid.UUID, control: SubscriptionControl) -> Watch:
        return cls(
            user_id=viewer.user_id,
            session_id=viewer.session_id,
            api_key_id=viewer.api_key_id,
            thread_id=thread_id,
            control=control,
        )

    @property
    def key(self) -> WatchKey:
        return (self.user_id, self.session_id, self.api_key_id, self.thread_id)


def _session_ended() -> AtlasError:
    return Unauthenticated("Your session has ended.")


def _key_refused() -> AtlasError:
    # What a request with this key is answered now (auth/apikeys.py).
    return Unauthenticated(REFUSED_MESSAGE, reason="API_KEY_INVALID")


def _thread_gone() -> AtlasError:
    return NotFound("Thread not found.")


def _access_statement() -> sa.Select[Any]:
    """(n, live, visible) per watch key: whether its credential is live (the session, or the
    API key, not revoked nor expired, with its user active), and whether the viewer it gives
    still sees the thread (`ai.rules.thread_visible`, the rule every read path uses), for all
    of them in one statement. The keys come as four array parameters (unnest ... WITH
    ORDINALITY; a NULL session or key where the credential is the other), so the statement is
    built and compiled once."""
    watched = (
        sa.func.unnest(
            sa.bindparam("user_ids", type_=postgresql.ARRAY(sa.Uuid)),
            sa.bindparam("session_ids", type_=postgresql.ARRAY(sa.Uuid)),
            sa.bindparam("api_key_ids", type_=postgresql.ARRAY(sa.Uuid)),
            sa.bindparam("thread_ids", type_=postgresql.ARRAY(sa.Uuid)),
        )
        .table_valued(
            sa.column("user_id", sa.Uuid),
            sa.column("session_id", sa.Uuid),
            sa.column("api_key_id", sa.Uuid),
            sa.column("thread_id", sa.Uuid),
            with_ordinality="n",
        )
        .render_derived(name="watched")
    )
    user_roles, roles, keys = table_of(UserRole), table_of(Role), table_of(ApiKey)
    # A key keeps its user's ADMIN role only with the ADMIN scope (`Viewer.for_api_key`).
    admin_scope = sa.literal_column(f"'{ApiKeyScope.ADMIN.value}'", sa.String) == sa.any_(
        keys.c.scopes
    )
    is_admin = sa.and_(
        sa.exists(
            sa.select(sa.literal_column("1"))
            .select_from(user_roles)
            .join(roles, roles.c.id == user_roles.c.role_id)
            .where(user_roles.c.user_id == watched.c.user_id, roles.c.name == RoleName.ADMIN.value)
        ),
        sa.or_(
            watched.c.api_key_id.is_(None),
            sa.exists(
                sa.select(sa.literal_column("1"))
                .select_from(keys)
                .where(keys.c.id == watched.c.api_key_id, admin_scope)
            ),
        ),
    )
    # Thread visibility depends on who the user is, their membership and ADMIN, never on
    # their permissions.
    viewer = ViewerRef(
        user_id=watched.c.user_id,
        is_admin=is_admin,
        permissions={permission: sa.false() for permission in PermissionName},
    )
    threads = rules.threads
    # Each EXISTS finds nothing for a NULL id, so exactly one of them can hold.
    live = sa.or_(
        sa.exists(live_session(user_id=watched.c.user_id, session_id=watched.c.session_id)),
        sa.exists(
            live_api_key(
                sa.and_(keys.c.id == watched.c.api_key_id, keys.c.user_id == watched.c.user_id)
            )
        ),
    )
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


async def failed_access(db: AsyncSession, keys: list[WatchKey]) -> dict[WatchKey, AtlasError]:
    """The watch keys that lost their right, with the error their subscription ends with."""
    failed: dict[WatchKey, AtlasError] = {}
    for start in range(0, len(keys), CHECK_BATCH):
        batch = keys[start : start + CHECK_BATCH]
        users, sessions, api_keys, threads = (list(column) for column in zip(*batch, strict=True))
        parameters = {
            "user_ids": users,
            "session_ids": sessions,
            "api_key_ids": api_keys,
            "thread_ids": threads,
        }
        for n, live, visible in (await db.execute(ACCESS_STATEMENT, parameters)).all():
            key = batch[n - 1]
            if not live:
                failed[key] = _session_ended() if key[2] is None else _key_refused()
            elif not visible:
                failed[key] = _thread_gone()
    return failed


class SubscriptionWatches:
    """This worker's open subscriptions and their batched re-checks (see the module)."""

    def __init__(self, *, sessionmaker: async_sessionmaker[AsyncSession], interval: float) -> None:
        self.sessionmaker = sessionmaker
        self.interval = interval
        self._by_thread: dict[uuid.UUID, set[Watch]] = {}
        # The check of a thread's exchange in progress or done, by (thread, event number).
        self._exchange_checks: dict[tuple[uuid.UUID, int], asyncio.Future[None]] = {}
        # The key its sender's operation vouched for, and when, by (thread, event number).
        self._vouched: dict[tuple[uuid.UUID, int], tuple[WatchKey, float]] = {}
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

    def vouch(self, key: WatchKey, sequences: Iterable[int]) -> None:
        """The operation that committed an exchange (its MessageCreated events numbered
        `sequences`) checked `key` (its sender's credential, their right to the thread) in the
        transaction that stored it: that exchange's check leaves the key out, if it comes
        within VOUCH_SECONDS."""
        now = time.monotonic()
        vouched = self._vouched
        # Oldest first: the expired ones, and any beyond the limit, are forgotten.
        while vouched and (
            len(vouched) >= VOUCH_LIMIT or now - next(iter(vouched.values()))[1] > VOUCH_SECONDS
        ):
            del vouched[next(iter(vouched))]
        for sequence in sequences:
            vouched[(key[3], sequence)] = (key, now)

    async def check_exchange(self, thread_id: uuid.UUID, sequence: int) -> None:
        """Re-check every watch of the thread once for this new exchange (event `sequence`),
        but the key its sender vouched for (`vouch`); concurrent callers for the same event
        share the one statement."""
        key = (thread_id, sequence)
        check = self._exchange_checks.get(key)
        if check is None:
            watches = list(self._by_thread.get(thread_id, ()))
            vouched = self._vouched.get(key)
            if vouched is not None and time.monotonic() - vouched[1] <= VOUCH_SECONDS:
                watches = [watch for watch in watches if watch.key != vouched[0]]
            if not any(watch.control.error is None for watch in watches):
                # Nothing to read (the sender watching their own exchange, at a reply's
                # start): no task, no round of the event loop before the event goes out.
                return
            check = asyncio.ensure_future(self._check(watches))
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
        keys = list(dict.fromkeys(watch.key for watch in live))
        try:
            async with self.sessionmaker() as db:
                # One read: no BEGIN and no ROLLBACK around it.
                await without_transaction(db)
                self.statements += (len(keys) + CHECK_BATCH - 1) // CHECK_BATCH
                failed = await failed_access(db, keys)
        except Exception:
            # The subscriptions go on: the database holds the truth, the next check retries.
            logger.warning("subscription access re-check failed", exc_info=True)
            return
        for watch in live:
            error = failed.get(watch.key)
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
