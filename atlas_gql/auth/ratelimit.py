"""Failed-login limits per account (email) and per client address.

An attempt is admitted *before* its password is checked: `reserve` counts it at once (an
`auth.login_attempt` ActivityLog row committed in a short transaction of its own, plus Redis
counters with Redis), so attempts in flight count like failures and concurrent attempts cannot
overshoot the limit. The service then turns the row into `auth.login_failed` or the success row
(`settle_attempt`) and, once the success is committed, gives the reservation back
(`release`).

- `DatabaseLoginLimiter` counts the `auth.login_attempt` and `auth.login_failed` rows of the
  last window, and admits one attempt at a time per account and per address (transaction-level
  advisory locks around the count and the new row), in every worker;
- `RedisLoginLimiter` (when REDIS_URL is set) increments fixed-window counters first and
  compares the results (one Lua script, atomic), refusing a flood without the database; what
  it admits goes through the database limiter too, which has the last word (and is all there
  is while Redis does not answer).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import sqlalchemy as sa
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from atlas_gql.auth.actor import Actor
from atlas_gql.config import Settings
from atlas_gql.db.utils import execute_transaction
from atlas_gql.errors import RateLimited
from atlas_gql.logs.audit import scrub
from atlas_gql.logs.models import ActivityLog

logger = logging.getLogger(__name__)

LOGIN_ATTEMPT_ACTION = "auth.login_attempt"
LOGIN_FAILED_ACTION = "auth.login_failed"
# What the limit counts: failures and attempts whose outcome is not known yet.
COUNTED_ACTIONS = (LOGIN_ATTEMPT_ACTION, LOGIN_FAILED_ACTION)
RATE_LIMITED_MESSAGE = "Too many failed sign-in attempts; try again later."
REDIS_MAX_CONNECTIONS = 50


def account_key(email: str) -> str:
    """How an attempted sign-in name is counted: trimmed and lower-cased."""
    return email.strip().lower()


@dataclass(frozen=True)
class LoginAttempt:
    """An admitted attempt: its committed `auth.login_attempt` row and the Redis counters it
    holds (none when the database limiter admitted it)."""

    activity_id: uuid.UUID
    email: str
    ip_address: str | None
    redis_keys: tuple[str, ...] = ()


class LoginLimiter(Protocol):
    async def reserve(
        self,
        *,
        sessionmaker: async_sessionmaker[AsyncSession],
        email: str,
        actor: Actor,
        user_id: uuid.UUID | None = None,
    ) -> LoginAttempt:
        """Admit one attempt of `actor` (counted per account and per the actor's address), or
        raise RATE_LIMITED (with `retryAfter` seconds) when the account or the address has
        reached the limit of failures and pending attempts in the window. The admitted attempt
        counts as a failure until it is settled otherwise; its `auth.login_attempt` row is
        committed (in a short transaction of its own) on return."""

    async def release(self, attempt: LoginAttempt) -> None:
        """Give back the reservation of an attempt that succeeded (after its row was settled
        and committed)."""

    async def aclose(self) -> None:
        """Release connections."""


def record_attempt(
    *, db: AsyncSession, email: str, actor: Actor, user_id: uuid.UUID | None
) -> ActivityLog:
    """The pending `auth.login_attempt` row of an admitted attempt (caller commits)."""
    return actor.record(
        db,
        LOGIN_ATTEMPT_ACTION,
        ("User", user_id) if user_id is not None else None,
        user_id=user_id,
        details={"email": account_key(email)},
    )


async def settle_attempt(
    db: AsyncSession,
    *,
    attempt: LoginAttempt,
    action: str,
    user_id: uuid.UUID | None,
    entity_type: str | None = None,
    entity_id: uuid.UUID | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Turn the attempt's row into its outcome (`auth.login_failed`, `auth.login`, ...),
    stamped now, in the caller's transaction."""
    await db.execute(
        sa.update(ActivityLog)
        .where(col(ActivityLog.id) == attempt.activity_id)
        .values(
            action=action,
            user_id=user_id,
            entity_type=entity_type,
            entity_id=str(entity_id) if entity_id is not None else None,
            details=scrub(details) if details else None,
            created_at=datetime.now(UTC),
        )
        .execution_options(synchronize_session=False)
    )


def _lock(key: str) -> Any:
    # A 64-bit hash of a namespaced key: other advisory locks of the application (the seed's
    # single number) never meet these; a collision only serialises two keys needlessly.
    return sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtextextended(key, 0)))


class DatabaseLoginLimiter:
    """Sliding window over the committed attempt and failure rows, admitting one attempt at
    a time per account and per address."""

    def __init__(self, *, max_failures: int, window_seconds: int) -> None:
        self.max_failures = max_failures
        self.window_seconds = window_seconds

    async def _retry_after(self, db: AsyncSession, condition: Any) -> int | None:
        # The max_failures-th newest counted row in the window: the limit holds until it ages
        # out. None: fewer rows than the limit.
        window_end = col(ActivityLog.created_at) + sa.func.make_interval(
            0, 0, 0, 0, 0, 0, self.window_seconds
        )
        statement = (
            sa.select(sa.extract("epoch", window_end - sa.func.clock_timestamp()))
            .where(
                col(ActivityLog.action).in_(COUNTED_ACTIONS),
                condition,
                col(ActivityLog.created_at)
                > sa.func.clock_timestamp()
                - sa.func.make_interval(0, 0, 0, 0, 0, 0, self.window_seconds),
            )
            .order_by(col(ActivityLog.created_at).desc())
            .offset(self.max_failures - 1)
            .limit(1)
        )
        seconds = (await db.execute(statement)).scalar_one_or_none()
        if seconds is None:
            return None
        return min(self.window_seconds, max(1, math.ceil(float(seconds))))

    async def limited_for(
        self, *, db: AsyncSession, email: str, ip_address: str | None
    ) -> int | None:
        """Seconds until the account and the address are both under the limit; None when
        they are now."""
        waits = [
            await self._retry_after(
                db, col(ActivityLog.details)["email"].astext == account_key(email)
            )
        ]
        if ip_address:
            waits.append(await self._retry_after(db, col(ActivityLog.ip_address) == ip_address))
        return max((wait for wait in waits if wait is not None), default=None)

    async def reserve(
        self,
        *,
        sessionmaker: async_sessionmaker[AsyncSession],
        email: str,
        actor: Actor,
        user_id: uuid.UUID | None = None,
    ) -> LoginAttempt:
        # The row must be committed before the password is checked: a transaction of its own.
        return await execute_transaction(
            sessionmaker,
            functools.partial(self.reserve_in, email=email, actor=actor, user_id=user_id),
        )

    async def reserve_in(
        self, db: AsyncSession, *, email: str, actor: Actor, user_id: uuid.UUID | None = None
    ) -> LoginAttempt:
        """`reserve`'s work in the caller's transaction, which holds the advisory locks until
        it ends (the caller commits it at once)."""
        ip_address = actor.ip_address
        # Once the limit is reached, a flood is refused without queueing on the locks.
        wait = await self.limited_for(db=db, email=email, ip_address=ip_address)
        if wait is None:
            # Count and insert under both locks, so every worker admits one attempt at a time
            # per account and per address; the next waiter's count (a new snapshot, taken
            # after it got the lock) sees this row. Always account first, then address: no
            # two attempts wait for each other in a cycle.
            await db.execute(_lock(f"atlas.login.email:{account_key(email)}"))
            if ip_address:
                await db.execute(_lock(f"atlas.login.ip:{ip_address}"))
            wait = await self.limited_for(db=db, email=email, ip_address=ip_address)
        if wait is not None:
            raise RateLimited(RATE_LIMITED_MESSAGE, retry_after=wait)
        row = record_attempt(db=db, email=email, actor=actor, user_id=user_id)
        return LoginAttempt(activity_id=row.id, email=account_key(email), ip_address=ip_address)

    async def release(self, attempt: LoginAttempt) -> None:
        # The settled row is no longer an attempt or a failure: it has stopped counting.
        return None

    async def aclose(self) -> None:
        return None


# Increment every counter; a new key (or one left without expiry) gets the window. When a
# counter went over the limit, undo all increments (a refused attempt is not counted) and
# answer the longest remaining TTL; else 0.
_RESERVE_SCRIPT = """
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local wait = 0
for _, key in ipairs(KEYS) do
  local count = redis.call('INCR', key)
  local ttl = redis.call('TTL', key)
  if ttl < 0 then
    redis.call('EXPIRE', key, window)
    ttl = window
  end
  if count > limit then
    wait = math.max(wait, ttl, 1)
  end
end
if wait > 0 then
  for _, key in ipairs(KEYS) do
    redis.call('DECR', key)
  end
end
return wait
"""

# Give a reservation back, never below zero and never creating a key (one whose window has
# ended is gone; DECR would make it again, without expiry).
_RELEASE_SCRIPT = """
for _, key in ipairs(KEYS) do
  if (tonumber(redis.call('GET', key)) or 0) > 0 then
    redis.call('DECR', key)
  end
end
return 0
"""


class RedisLoginLimiter:
    """Fixed-window counters in Redis, one per account and one per address, incremented
    before the password check; they refuse a flood without touching the database. What they
    admit, the database limiter admits as well (it has the last word): so attempts admitted
    while some workers cannot reach Redis, or after Redis lost its counters, still add up to
    no more than the limit."""

    def __init__(
        self, *, redis: Redis, prefix: str, max_failures: int, window_seconds: int
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.max_failures = max_failures
        self.window_seconds = window_seconds
        self.database = DatabaseLoginLimiter(
            max_failures=max_failures, window_seconds=window_seconds
        )
        self._reserve = redis.register_script(_RESERVE_SCRIPT)
        self._release = redis.register_script(_RELEASE_SCRIPT)

    def keys(self, *, email: str, ip_address: str | None) -> list[str]:
        # Hashed, so the counters do not hold email addresses in clear.
        digest = hashlib.sha256(account_key(email).encode()).hexdigest()[:32]
        keys = [f"{self.prefix}login:email:{digest}"]
        if ip_address:
            keys.append(f"{self.prefix}login:ip:{ip_address}")
        return keys

    async def reserve(
        self,
        *,
        sessionmaker: async_sessionmaker[AsyncSession],
        email: str,
        actor: Actor,
        user_id: uuid.UUID | None = None,
    ) -> LoginAttempt:
        keys = self.keys(email=email, ip_address=actor.ip_address)
        try:
            wait = int(
                await self._reserve(keys=keys, args=[self.max_failures, self.window_seconds])
            )
        except (RedisError, OSError) as exc:
            logger.warning(
                "Redis unavailable (%s: %s); counting sign-in attempts in the database",
                type(exc).__name__,
                exc,
            )
            keys, wait = [], 0
        if wait > 0:
            raise RateLimited(RATE_LIMITED_MESSAGE, retry_after=wait)
        try:
            attempt = await self.database.reserve(
                sessionmaker=sessionmaker, email=email, actor=actor, user_id=user_id
            )
        except BaseException:
            # Refused (or failed) in the database: this attempt is not counted in Redis either.
            await self._give_back(keys)
            raise
        return replace(attempt, redis_keys=tuple(keys))

    async def _give_back(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        try:
            await self._release(keys=list(keys))
        except (RedisError, OSError):
            # The attempt stays counted until the window ends: errs on the safe side.
            logger.warning("Redis unavailable; a sign-in attempt stays counted there")

    async def release(self, attempt: LoginAttempt) -> None:
        await self._give_back(attempt.redis_keys)

    async def aclose(self) -> None:
        await self.redis.aclose()


def build_login_limiter(settings: Settings) -> LoginLimiter:
    """Redis counters (before the database's) when REDIS_URL is set, else the database's."""
    if settings.redis_url:
        # A burst waits for a pooled connection instead of failing with "Too many
        # connections" (and being counted by the database alone).
        pool = BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=REDIS_MAX_CONNECTIONS,
            timeout=10,
            socket_timeout=2,
            socket_connect_timeout=2,
        )
        return RedisLoginLimiter(
            redis=Redis.from_pool(pool),
            prefix=settings.atlas_rate_limit_prefix,
            max_failures=settings.atlas_login_max_failures,
            window_seconds=settings.atlas_login_failure_window,
        )
    return DatabaseLoginLimiter(
        max_failures=settings.atlas_login_max_failures,
        window_seconds=settings.atlas_login_failure_window,
    )
