"""Failed-login limits per account (email) and per client address.

Two implementations behind one small interface, both shared by every worker:
- `DatabaseLoginLimiter` counts the `auth.login_failed` ActivityLog rows of the last window
  (the rows the login service writes anyway, committed even though the login fails);
- `RedisLoginLimiter` (when REDIS_URL is set) keeps fixed-window counters (INCR + EXPIRE) and
  falls back to the database count when Redis does not answer.
"""

from __future__ import annotations

import hashlib
import logging
import math
from typing import Any, Protocol

import sqlalchemy as sa
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from atlas_gql.config import Settings
from atlas_gql.errors import RateLimited
from atlas_gql.graph.runtime import Runtime
from atlas_gql.logs.models import ActivityLog

logger = logging.getLogger(__name__)

LOGIN_FAILED_ACTION = "auth.login_failed"
RATE_LIMITED_MESSAGE = "Too many failed sign-in attempts; try again later."
_RUNTIME_KEY = "auth.login_limiter"


def account_key(email: str) -> str:
    """How an attempted sign-in name is counted: trimmed and lower-cased."""
    return email.strip().lower()


class LoginLimiter(Protocol):
    async def check(self, *, db: AsyncSession, email: str, ip_address: str | None) -> None:
        """RATE_LIMITED (with `retryAfter` seconds) when the account or the address has
        reached the limit of failures in the window."""

    async def record_failure(self, *, db: AsyncSession, email: str, ip_address: str | None) -> None:
        """Count one failure (after its ActivityLog row is committed)."""

    async def aclose(self) -> None:
        """Release connections."""


class DatabaseLoginLimiter:
    """Sliding window over the committed `auth.login_failed` rows."""

    def __init__(self, *, max_failures: int, window_seconds: int) -> None:
        self.max_failures = max_failures
        self.window_seconds = window_seconds

    async def _retry_after(self, db: AsyncSession, condition: Any) -> int | None:
        # The max_failures-th newest failure in the window: the limit holds until it ages out.
        window_end = col(ActivityLog.created_at) + sa.func.make_interval(
            0, 0, 0, 0, 0, 0, self.window_seconds
        )
        statement = (
            sa.select(sa.extract("epoch", window_end - sa.func.now()))
            .where(
                col(ActivityLog.action) == LOGIN_FAILED_ACTION,
                condition,
                col(ActivityLog.created_at)
                > sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, self.window_seconds),
            )
            .order_by(col(ActivityLog.created_at).desc())
            .offset(self.max_failures - 1)
            .limit(1)
        )
        seconds = (await db.execute(statement)).scalar_one_or_none()
        if seconds is None:
            return None
        return min(self.window_seconds, max(1, math.ceil(float(seconds))))

    async def check(self, *, db: AsyncSession, email: str, ip_address: str | None) -> None:
        waits = [
            await self._retry_after(
                db, col(ActivityLog.details)["email"].astext == account_key(email)
            )
        ]
        if ip_address:
            waits.append(await self._retry_after(db, col(ActivityLog.ip_address) == ip_address))
        longest = max((wait for wait in waits if wait is not None), default=None)
        if longest is not None:
            raise RateLimited(RATE_LIMITED_MESSAGE, retry_after=longest)

    async def record_failure(self, *, db: AsyncSession, email: str, ip_address: str | None) -> None:
        # The ActivityLog row the login service committed is the count.
        return None

    async def aclose(self) -> None:
        return None


class RedisLoginLimiter:
    """Fixed-window counters in Redis, one per account and one per address."""

    def __init__(
        self, *, redis: Redis, prefix: str, max_failures: int, window_seconds: int
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.max_failures = max_failures
        self.window_seconds = window_seconds
        self.fallback = DatabaseLoginLimiter(
            max_failures=max_failures, window_seconds=window_seconds
        )

    def keys(self, *, email: str, ip_address: str | None) -> list[str]:
        # Hashed, so the counters do not hold email addresses in clear.
        digest = hashlib.sha256(account_key(email).encode()).hexdigest()[:32]
        keys = [f"{self.prefix}login:email:{digest}"]
        if ip_address:
            keys.append(f"{self.prefix}login:ip:{ip_address}")
        return keys

    async def check(self, *, db: AsyncSession, email: str, ip_address: str | None) -> None:
        keys = self.keys(email=email, ip_address=ip_address)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.get(key)
                    pipe.ttl(key)
                replies = await pipe.execute()
        except (RedisError, OSError):
            logger.warning("Redis unavailable; counting failed logins in the database")
            await self.fallback.check(db=db, email=email, ip_address=ip_address)
            return
        waits = []
        for count, ttl in zip(replies[::2], replies[1::2], strict=True):
            if count is not None and int(count) >= self.max_failures:
                waits.append(int(ttl) if int(ttl) > 0 else self.window_seconds)
        if waits:
            raise RateLimited(RATE_LIMITED_MESSAGE, retry_after=max(waits))

    async def record_failure(self, *, db: AsyncSession, email: str, ip_address: str | None) -> None:
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                for key in self.keys(email=email, ip_address=ip_address):
                    pipe.incr(key)
                    # NX: the window starts with the first failure and is not extended.
                    pipe.expire(key, self.window_seconds, nx=True)
                await pipe.execute()
        except (RedisError, OSError):
            logger.warning("Redis unavailable; failed login counted in the database only")

    async def aclose(self) -> None:
        await self.redis.aclose()


def build_login_limiter(settings: Settings) -> LoginLimiter:
    """Redis counters when REDIS_URL is set, else the database count."""
    if settings.redis_url:
        return RedisLoginLimiter(
            redis=Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2),
            prefix=settings.atlas_rate_limit_prefix,
            max_failures=settings.atlas_login_max_failures,
            window_seconds=settings.atlas_login_failure_window,
        )
    return DatabaseLoginLimiter(
        max_failures=settings.atlas_login_max_failures,
        window_seconds=settings.atlas_login_failure_window,
    )


def login_limiter(runtime: Runtime) -> LoginLimiter:
    """The app's limiter, made on first use and closed when the app stops."""
    limiter: LoginLimiter | None = runtime.extras.get(_RUNTIME_KEY)
    if limiter is None:
        limiter = runtime.extras[_RUNTIME_KEY] = build_login_limiter(runtime.settings)
        runtime.on_close(limiter.aclose)
    return limiter
