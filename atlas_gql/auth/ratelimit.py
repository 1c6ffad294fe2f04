"""Failed-login limits: a lock per (account, address), a limit per address, and a slower
backoff per account.

Nobody can lock somebody else out: the hard lock is per account *and* address
(ATLAS_LOGIN_MAX_FAILURES failures of one account from one address per window), so an attacker
only locks themself out of the account they guess at. An address is also limited across
accounts (ATLAS_LOGIN_ADDRESS_MAX_FAILURES: password spraying). Guessing from many addresses
meets the per-account backoff: once an account has ATLAS_LOGIN_ACCOUNT_BACKOFF_AFTER failures
in the window (more than one address's lock allows), each further attempt on it, from anywhere,
waits 1 s, 2 s, 4 s, ... (at most ATLAS_LOGIN_ACCOUNT_BACKOFF_MAX) after the previous one:
guessing slows to one attempt per that pause, while the owner is delayed by at most that
pause, never locked out. `atlas-gql unlock-user --email` clears all of it for an account.

An attempt is admitted *before* its password is checked: `reserve` counts it at once (an
`auth.login_attempt` ActivityLog row committed in a short transaction of its own, plus Redis
counters with Redis), so attempts in flight count like failures and concurrent attempts cannot
overshoot the limit. The service then turns the row into `auth.login_failed` or the success row
(`settle_attempt`) and, once the success is committed, gives the reservation back
(`release`).

- `DatabaseLoginLimiter` counts the `auth.login_attempt` and `auth.login_failed` rows of the
  last window, and admits one attempt at a time per account and per address (transaction-level
  advisory locks around the count and the new row), in every worker;
- `RedisLoginLimiter` (when REDIS_URL is set) increments fixed-window counters per (account,
  address) and per address first and compares the results (one Lua script, atomic), refusing a
  flood without the database; what it admits goes through the database limiter too, which has
  the last word (the per-account backoff is the database's alone) and is all there is while
  Redis does not answer. Redis is behind a circuit breaker (`atlas_gql/circuit.py`): a Redis
  that hangs is skipped at once after its first timeout, not waited for on every sign-in.
Size: over 400 lines on purpose: one limiter interface and its database and Redis
implementations, which must count and answer alike, read side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol, TypeAlias
from uuid import UUID

import sqlalchemy as sa
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from atlas_gql.auth.actor import Actor
from atlas_gql.circuit import CircuitBreaker, CircuitOpenError
from atlas_gql.config import Settings, settings_group
from atlas_gql.db.utils import execute_transaction
from atlas_gql.errors import RateLimited
from atlas_gql.logs.audit import scrub
from atlas_gql.logs.models import ActivityLog

# What the limiters open their short transactions with.
Sessionmaker: TypeAlias = async_sessionmaker[AsyncSession]

logger = logging.getLogger(__name__)

LOGIN_ATTEMPT_ACTION = "auth.login_attempt"
LOGIN_FAILED_ACTION = "auth.login_failed"
# What the limit counts: failures and attempts whose outcome is not known yet.
COUNTED_ACTIONS = (LOGIN_ATTEMPT_ACTION, LOGIN_FAILED_ACTION)
# What `unlock_account` turns counted rows into: kept for the audit trail, no longer counted.
LOGIN_FAILURES_CLEARED_ACTION = "auth.login_failed_cleared"
RATE_LIMITED_MESSAGE = "Too many failed sign-in attempts; try again later."
REDIS_MAX_CONNECTIONS = 50
# The longest a sign-in waits for Redis before the breaker skips it (ATLAS_REDIS_TIMEOUT when
# longer): a burst of sign-ins opens new pooled connections, which a broker's publish on a
# warm connection does not; one such wait per incident, then Redis is skipped.
REDIS_MIN_TIMEOUT = 2.0


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
        self, *, sessionmaker: Sessionmaker, email: str, actor: Actor, user_id: UUID | None = None
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


@dataclass(frozen=True)
class LoginLimits:
    """The numbers of the sign-in limits (docs/security.md, "Sign-in")."""

    # Failures (and attempts in flight) of one account from one address per window: the lock.
    max_failures: int
    window_seconds: int
    # Failures from one address, whatever the accounts, per window.
    address_max_failures: int
    # Failures of one account, whatever the addresses, before each attempt waits ...
    account_backoff_after: int
    # ... 1 s, doubling with each further failure, up to this many seconds.
    account_backoff_max: int

    @classmethod
    def from_settings(cls, settings: Settings) -> LoginLimits:
        return settings_group(
            cls, settings, prefix="atlas_login_", window_seconds="atlas_login_failure_window"
        )

    def backoff(self, failures: int) -> float:
        """Seconds an attempt on an account with `failures` in the window waits after the
        previous attempt (0 below the threshold)."""
        if failures < self.account_backoff_after:
            return 0.0
        exponent = min(failures - self.account_backoff_after, 32)
        return float(min(self.account_backoff_max, 2**exponent))


def _seconds(interval: Any) -> Any:
    return sa.func.make_interval(0, 0, 0, 0, 0, 0, interval)


class DatabaseLoginLimiter:
    """Sliding window over the committed attempt and failure rows, admitting one attempt at
    a time per account and per address."""

    def __init__(self, limits: LoginLimits) -> None:
        self.limits = limits

    @property
    def window_seconds(self) -> int:
        return self.limits.window_seconds

    def _in_window(self) -> Any:
        return sa.and_(
            col(ActivityLog.action).in_(COUNTED_ACTIONS),
            col(ActivityLog.created_at)
            > sa.func.clock_timestamp() - _seconds(self.limits.window_seconds),
        )

    async def _retry_after(self, db: AsyncSession, condition: Any, limit: int) -> int | None:
        # The limit-th newest counted row in the window: the limit holds until it ages out.
        # None: fewer rows than the limit.
        window_end = col(ActivityLog.created_at) + _seconds(self.limits.window_seconds)
        statement = (
            sa.select(sa.extract("epoch", window_end - sa.func.clock_timestamp()))
            .where(self._in_window(), condition)
            .order_by(col(ActivityLog.created_at).desc())
            .offset(limit - 1)
            .limit(1)
        )
        seconds = (await db.execute(statement)).scalar_one_or_none()
        if seconds is None:
            return None
        return min(self.limits.window_seconds, max(1, math.ceil(float(seconds))))

    async def _backoff(self, db: AsyncSession, account: Any) -> int | None:
        # The account's failures in the window and the age of the newest: once past the
        # threshold, the next attempt waits `backoff(failures)` after the newest.
        failures, age = (
            await db.execute(
                sa.select(
                    sa.func.count(),
                    sa.extract(
                        "epoch",
                        sa.func.clock_timestamp() - sa.func.max(col(ActivityLog.created_at)),
                    ),
                ).where(self._in_window(), account)
            )
        ).one()
        pause = self.limits.backoff(int(failures))
        if pause <= 0 or age is None or float(age) >= pause:
            return None
        return max(1, math.ceil(pause - float(age)))

    async def limited_for(
        self, *, db: AsyncSession, email: str, ip_address: str | None
    ) -> int | None:
        """Seconds until this account may be tried from this address; None when it may now."""
        account = col(ActivityLog.details)["email"].astext == account_key(email)
        address = (
            col(ActivityLog.ip_address) == ip_address
            if ip_address
            else col(ActivityLog.ip_address).is_(None)
        )
        waits = [
            await self._retry_after(db, sa.and_(account, address), self.limits.max_failures),
            await self._backoff(db, account),
        ]
        if ip_address:
            waits.append(await self._retry_after(db, address, self.limits.address_max_failures))
        return max((wait for wait in waits if wait is not None), default=None)

    async def reserve(
        self, *, sessionmaker: Sessionmaker, email: str, actor: Actor, user_id: UUID | None = None
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
        # Once a limit is reached, a flood is refused without queueing on the locks.
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


async def unlock_account(*, db: AsyncSession, email: str, actor: Actor) -> int:
    """Forget the account's counted sign-in failures and attempts (every address), so none of
    its locks or backoff holds; the rows stay, as `auth.login_failed_cleared`. Returns how
    many. The caller commits (Redis counters expire with their window; the database has the
    last word, so clearing it is enough for every lock but an address's own limit)."""
    result = await db.execute(
        sa.update(ActivityLog)
        .where(
            col(ActivityLog.action).in_(COUNTED_ACTIONS),
            col(ActivityLog.details)["email"].astext == account_key(email),
        )
        .values(action=LOGIN_FAILURES_CLEARED_ACTION)
        .execution_options(synchronize_session=False)
    )
    cleared = int(getattr(result, "rowcount", 0) or 0)
    actor.record(db, "auth.unlock", None, details={"email": account_key(email), "cleared": cleared})
    return cleared


# Increment every counter (KEYS[i] against the limit ARGV[i + 1]); a new key (or one left
# without expiry) gets the window ARGV[1]. When a counter went over its limit, undo all
# increments (a refused attempt is not counted) and answer the longest remaining TTL; else 0.
_RESERVE_SCRIPT = """
local window = tonumber(ARGV[1])
local wait = 0
for index, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[index + 1])
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
    """Fixed-window counters in Redis, one per (account, address) and one per address,
    incremented before the password check; they refuse a flood without touching the
    database. What they admit, the database limiter admits as well (it has the last word, and
    alone keeps the per-account backoff): so attempts admitted while some workers cannot reach
    Redis, or after Redis lost its counters, still add up to no more than the limits. Redis
    commands go through a circuit breaker: after a failure or a timeout, Redis is skipped
    (the database counts alone) until a probe finds it answering."""

    def __init__(
        self,
        *,
        redis: Redis,
        prefix: str,
        limits: LoginLimits,
        timeout: float = 0.25,
        retry_max: float = 30.0,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.limits = limits
        self.database = DatabaseLoginLimiter(limits)
        self._reserve = redis.register_script(_RESERVE_SCRIPT)
        self._release = redis.register_script(_RELEASE_SCRIPT)
        self.breaker = CircuitBreaker(
            name="Redis (sign-in limits)",
            timeout=timeout,
            failures=(RedisError,),
            max_pause=retry_max,
        )
        self._probes: asyncio.Task[None] | None = None

    def keys(self, *, email: str, ip_address: str | None) -> list[str]:
        digest = account_digest(email)
        if not ip_address:
            return [f"{self.prefix}login:email:{digest}:ip:-"]
        return [
            f"{self.prefix}login:email:{digest}:ip:{ip_address}",
            f"{self.prefix}login:ip:{ip_address}",
        ]

    def _limits_of(self, keys: Sequence[str]) -> list[int]:
        pair, address = self.limits.max_failures, self.limits.address_max_failures
        return [pair, address][: len(keys)]

    def _start_probes(self) -> None:
        if self._probes is None or self._probes.done():
            self._probes = asyncio.create_task(
                self.breaker.run_probes(self.redis.ping), name="atlas-login-limiter-redis-probe"
            )

    async def _script(self, script: Any, keys: Sequence[str], args: Sequence[Any]) -> int | None:
        """Run a script through the breaker; None when Redis is skipped or failed."""
        self._start_probes()
        try:
            return int(await self.breaker.call(lambda: script(keys=list(keys), args=list(args))))
        except CircuitOpenError:
            return None

    async def reserve(
        self, *, sessionmaker: Sessionmaker, email: str, actor: Actor, user_id: UUID | None = None
    ) -> LoginAttempt:
        keys = self.keys(email=email, ip_address=actor.ip_address)
        wait = await self._script(
            self._reserve, keys, [self.limits.window_seconds, *self._limits_of(keys)]
        )
        if wait is None:
            # Redis is skipped (logged once when the circuit opened): the database counts.
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
        # Redis skipped or failing: the attempt stays counted until the window ends, which
        # errs on the safe side.
        if keys:
            await self._script(self._release, keys, [])

    async def release(self, attempt: LoginAttempt) -> None:
        await self._give_back(attempt.redis_keys)

    async def aclose(self) -> None:
        if self._probes is not None:
            self._probes.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probes
        await self.redis.aclose()


def account_digest(email: str) -> str:
    """How an account is named in Redis keys: hashed, so they hold no address in clear."""
    return hashlib.sha256(account_key(email).encode()).hexdigest()[:32]


async def clear_redis_counters(*, settings: Settings, email: str) -> int:
    """Delete the account's sign-in counters in Redis (every address); how many. Nothing to
    do without REDIS_URL."""
    if not settings.redis_url:
        return 0
    client = Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        pattern = f"{settings.atlas_rate_limit_prefix}login:email:{account_digest(email)}:*"
        keys = [key async for key in client.scan_iter(match=pattern)]
        return int(await client.delete(*keys)) if keys else 0
    finally:
        await client.aclose()


def build_login_limiter(settings: Settings) -> LoginLimiter:
    """Redis counters (before the database's) when REDIS_URL is set, else the database's."""
    limits = LoginLimits.from_settings(settings)
    if settings.redis_url:
        # A burst waits for a pooled connection instead of failing with "Too many
        # connections" (and being counted by the database alone); the breaker's timeout
        # bounds the whole wait.
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
            limits=limits,
            timeout=max(REDIS_MIN_TIMEOUT, settings.atlas_redis_timeout),
            retry_max=settings.atlas_redis_retry_max,
        )
    return DatabaseLoginLimiter(limits)
