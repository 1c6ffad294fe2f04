"""Nobody can lock somebody else out (issue 10 part 5): the lock is per (account, address),
guessing from many addresses meets a bounded per-account backoff, `atlas-gql unlock-user`
lifts it all, and a hung Redis does not slow sign-in (the limiter's circuit breaker)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from atlas_gql.auth.actor import Actor
from atlas_gql.auth.ratelimit import (
    DatabaseLoginLimiter,
    LoginLimits,
    RedisLoginLimiter,
    build_login_limiter,
    unlock_account,
)
from atlas_gql.errors import RateLimited
from atlas_gql.logs.audit import record_activity
from tests.ai.tcp_proxy import TcpProxy
from tests.auth.conftest import REDIS_URL, live_login, login, loopback_addresses, signed_in
from tests.conftest import SEED_PASSWORD, error_codes, make_settings
from tests.live import wait_until
from tests.test_cli import run_cli, url_of


def fresh_email() -> str:
    return f"lockout-{uuid.uuid4().hex[:10]}@example.com"


def at(ip_address: str | None) -> Actor:
    return Actor(viewer=None, ip_address=ip_address)


LIMITS = LoginLimits(
    max_failures=10,
    window_seconds=900,
    address_max_failures=50,
    account_backoff_after=20,
    account_backoff_max=60,
)


async def failures(
    db: AsyncSession, email: str, addresses: list[str], *, seconds_ago: float = 0
) -> None:
    """Committed failure rows of `email`, one per address, `seconds_ago` old."""
    for address in addresses:
        row = record_activity(
            db=db,
            action="auth.login_failed",
            user_id=None,
            ip_address=address,
            details={"email": email},
        )
        await db.flush()
        await db.execute(
            sa.text(
                "UPDATE activity_logs SET created_at = clock_timestamp() "
                "- make_interval(secs => :age) WHERE id = :id"
            ),
            {"age": seconds_ago, "id": row.id},
        )
    await db.commit()


class TestBackoff:
    def test_pauses_double_from_the_threshold_up_to_the_cap(self) -> None:
        assert [LIMITS.backoff(count) for count in (0, 19, 20, 21, 22, 25, 26, 100)] == [
            0,
            0,
            1,
            2,
            4,
            32,
            60,
            60,
        ]

    async def test_guesses_from_many_addresses_slow_down_without_locking_out(
        self, db: AsyncSession, sessionmaker: async_sessionmaker[AsyncSession]
    ) -> None:
        limiter = DatabaseLoginLimiter(LIMITS)
        email = fresh_email()
        # 24 failures from 24 addresses (none near its own lock), the newest just now.
        await failures(db, email, [f"203.0.113.{index}" for index in range(24)])
        with pytest.raises(RateLimited) as limited:
            await limiter.reserve(sessionmaker=sessionmaker, email=email, actor=at("192.0.2.77"))
        # 24 failures: a pause of 2**4 = 16 s after the newest, not the 15-minute window.
        assert 1 <= limited.value.retry_after <= 16
        # Other accounts from that address are not slowed.
        await limiter.reserve(
            sessionmaker=sessionmaker, email=fresh_email(), actor=at("192.0.2.77")
        )

    async def test_once_the_pause_has_passed_anyone_may_try_again(
        self, db: AsyncSession, sessionmaker: async_sessionmaker[AsyncSession]
    ) -> None:
        limiter = DatabaseLoginLimiter(LIMITS)
        email = fresh_email()
        # 22 failures (pause 4 s), the newest 5 s old.
        await failures(db, email, [f"198.51.100.{index}" for index in range(22)], seconds_ago=5)
        attempt = await limiter.reserve(
            sessionmaker=sessionmaker, email=email, actor=at("192.0.2.78")
        )
        # That attempt (in flight) is the newest now: the next one waits again, longer.
        with pytest.raises(RateLimited) as limited:
            await limiter.reserve(sessionmaker=sessionmaker, email=email, actor=at("192.0.2.79"))
        assert 1 <= limited.value.retry_after <= 8
        assert attempt.email == email

    async def test_the_cap_bounds_the_wait_whatever_the_failures(
        self, db: AsyncSession, sessionmaker: async_sessionmaker[AsyncSession]
    ) -> None:
        limiter = DatabaseLoginLimiter(LIMITS)
        email = fresh_email()
        addresses = [f"10.0.{index}.1" for index in range(60)]
        await failures(db, email, addresses)
        with pytest.raises(RateLimited) as limited:
            await limiter.reserve(sessionmaker=sessionmaker, email=email, actor=at("192.0.2.80"))
        assert limited.value.retry_after <= LIMITS.account_backoff_max


async def test_an_attacker_cannot_lock_the_admin_out(make_gql: Any) -> None:
    attacker = await make_gql(ip="198.51.100.66")
    codes = [
        error_codes(await login(attacker, "admin@example.com", f"guess-{index}"))[0]
        for index in range(12)
    ]
    assert codes == ["UNAUTHENTICATED"] * 10 + ["RATE_LIMITED"] * 2
    admin = await make_gql(ip="192.0.2.200")
    assert await signed_in(admin, "ADMIN@example.com", SEED_PASSWORD)
    # A proxy between them would not help the attacker either: the address is the peer's.
    spoofing = await make_gql(ip="198.51.100.66")
    response = await spoofing.post(
        'mutation { login(input: {email: "admin@example.com", password: "x-guess-x"}) '
        "{ accessToken } }",
        headers={"X-Forwarded-For": "192.0.2.200"},
    )
    assert error_codes(response.json()) == ["RATE_LIMITED"]


async def test_a_botnet_slows_the_admin_down_but_never_for_long(
    make_live_server: Any,
) -> None:
    server = await make_live_server(
        atlas_login_account_backoff_after=6, atlas_login_account_backoff_max=2
    )
    email = fresh_email()
    async with server.app.state.atlas["runtime"].sessionmaker() as db:
        from atlas_gql.auth.account import create_user_account

        await create_user_account(db=db, email=email, password=SEED_PASSWORD, bcrypt_rounds=4)
        await db.commit()
    addresses = loopback_addresses()
    # Two attacker addresses, each up to its own lock.
    bots = [next(addresses), next(addresses)]
    bodies = await asyncio.gather(
        *(live_login(server, email, f"guess-{i}", address=bot) for bot in bots for i in range(12))
    )
    codes = [error_codes(body)[0] for body in bodies]
    # Never more than one lock's worth per address, and never a pause over the cap.
    assert codes.count("UNAUTHENTICATED") <= 20
    for body in bodies:
        if error_codes(body) == ["RATE_LIMITED"]:
            assert body["errors"][0]["extensions"]["retryAfter"] <= 900
    owner = next(addresses)
    answer = await live_login(server, email, SEED_PASSWORD, address=owner)
    if error_codes(answer) == ["RATE_LIMITED"]:
        # The account's backoff: a pause of at most ATLAS_LOGIN_ACCOUNT_BACKOFF_MAX, then in.
        assert answer["errors"][0]["extensions"]["retryAfter"] <= 2
        for _ in range(50):
            await asyncio.sleep(answer["errors"][0]["extensions"]["retryAfter"])
            answer = await live_login(server, email, SEED_PASSWORD, address=owner)
            if error_codes(answer) != ["RATE_LIMITED"]:
                break
    assert "errors" not in answer, answer


async def test_unlock_user_clears_every_lock_of_the_account(
    live_database: Any, tmp_path: Path, redis_prefix: str
) -> None:
    from atlas_gql.db.engine import create_engine, create_sessionmaker

    limiter = DatabaseLoginLimiter(
        LoginLimits(
            max_failures=2,
            window_seconds=900,
            address_max_failures=50,
            account_backoff_after=3,
            account_backoff_max=600,
        )
    )
    engine = create_engine(live_database, pool_size=2)
    sessionmaker = create_sessionmaker(engine)
    email = fresh_email()
    other = fresh_email()
    redis = Redis.from_url(REDIS_URL)
    try:
        # Two failures from .1 (its lock), six from elsewhere (the account's backoff: 32 s).
        async with sessionmaker() as db:
            await failures(db, email, ["192.0.2.1"] * 2 + [f"192.0.2.{n}" for n in range(4, 10)])
            await failures(db, other, ["192.0.2.1"])
        for address in ("192.0.2.1", "192.0.2.3"):
            with pytest.raises(RateLimited):
                await limiter.reserve(sessionmaker=sessionmaker, email=email, actor=at(address))
        # Redis counters of the account (as the Redis limiter names them), and of another.
        redis_limiter = build_login_limiter(
            make_settings(live_database, redis_url=REDIS_URL, atlas_rate_limit_prefix=redis_prefix)
        )
        assert isinstance(redis_limiter, RedisLoginLimiter)
        mine = redis_limiter.keys(email=email, ip_address="192.0.2.1")[0]
        theirs = redis_limiter.keys(email=other, ip_address="192.0.2.1")[0]
        await redis_limiter.aclose()
        await redis.set(mine, 99, ex=600)
        await redis.set(theirs, 99, ex=600)

        usage = run_cli("unlock-user", cwd=tmp_path, DATABASE_URL=url_of(live_database))
        assert usage.returncode == 2
        assert "--email" in usage.stderr
        result = run_cli(
            "unlock-user",
            "--email",
            email.upper(),
            cwd=tmp_path,
            DATABASE_URL=url_of(live_database),
            REDIS_URL=REDIS_URL,
            ATLAS_RATE_LIMIT_PREFIX=redis_prefix,
        )
        assert result.returncode == 0, result.stderr
        assert f"unlocked {email}: 8 counted sign-in attempts cleared" in result.stdout
        assert "1 Redis counters deleted" in result.stdout
        assert await redis.exists(mine) == 0
        assert await redis.exists(theirs) == 1
        # The lock and the backoff are gone; the other account's failure still counts.
        await limiter.reserve(sessionmaker=sessionmaker, email=email, actor=at("192.0.2.1"))
        await limiter.reserve(sessionmaker=sessionmaker, email=email, actor=at("192.0.2.3"))
        async with sessionmaker() as db:
            rows: dict[str, int] = dict(
                (
                    await db.execute(
                        sa.text(
                            "SELECT action, count(*) FROM activity_logs "
                            "WHERE details->>'email' IN (:e, :o) GROUP BY action"
                        ),
                        {"e": email, "o": other},
                    )
                ).all()
            )
            unlocked = (
                await db.execute(
                    sa.text(
                        "SELECT details FROM activity_logs WHERE action = 'auth.unlock' "
                        "AND details->>'email' = :e"
                    ),
                    {"e": email},
                )
            ).scalar_one()
        assert rows == {
            "auth.login_failed_cleared": 8,
            "auth.login_attempt": 2,
            "auth.login_failed": 1,
            "auth.unlock": 1,
        }
        assert unlocked == {"email": email, "cleared": 8}
        # The service itself, for an account with nothing to clear.
        async with sessionmaker() as db:
            assert await unlock_account(db=db, email=fresh_email(), actor=Actor.system()) == 0
            await db.rollback()
    finally:
        await redis.aclose()
        await engine.dispose()


@pytest.fixture
async def redis_proxy() -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy("127.0.0.1", 6379)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


async def test_a_hung_redis_is_skipped_by_the_sign_in_limiter(
    make_gql: Any, redis_proxy: TcpProxy, redis_prefix: str
) -> None:
    overrides = {
        "redis_url": redis_proxy.url,
        "atlas_rate_limit_prefix": redis_prefix,
        "atlas_redis_timeout": 0.2,
        "atlas_redis_retry_max": 0.5,
        "atlas_login_max_failures": 3,
    }
    gql = await make_gql(ip="198.51.100.91", **overrides)
    email = fresh_email()
    assert error_codes(await login(gql, email, "wrong-password")) == ["UNAUTHENTICATED"]
    redis_proxy.black_hole("stall")
    # Every attempt is answered (the database counts alone) and the limit still holds.
    codes = [error_codes(await login(gql, email, "wrong-password"))[0] for _ in range(4)]
    assert codes == ["UNAUTHENTICATED", "UNAUTHENTICATED", "RATE_LIMITED", "RATE_LIMITED"]
    assert redis_proxy.blocked_chunks >= 1
    redis_proxy.heal()


async def test_the_breaker_opens_once_and_closes_when_redis_answers(
    database_target: Any,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis_proxy: TcpProxy,
    redis_prefix: str,
) -> None:
    limiter = build_login_limiter(
        make_settings(
            database_target,
            redis_url=redis_proxy.url,
            atlas_rate_limit_prefix=redis_prefix,
            atlas_redis_timeout=0.2,
            atlas_redis_retry_max=0.5,
        )
    )
    assert isinstance(limiter, RedisLoginLimiter)
    try:
        first = await limiter.reserve(
            sessionmaker=sessionmaker, email=fresh_email(), actor=at("192.0.2.5")
        )
        assert len(first.redis_keys) == 2
        redis_proxy.black_hole("stall")
        skipped = [
            await limiter.reserve(
                sessionmaker=sessionmaker, email=fresh_email(), actor=at("192.0.2.5")
            )
            for _ in range(5)
        ]
        # One timeout (ATLAS_REDIS_TIMEOUT, at least 2 s here) opened the circuit; the other
        # attempts skipped Redis without waiting.
        assert all(attempt.redis_keys == () for attempt in skipped)
        assert limiter.breaker.trips == 1
        assert limiter.breaker.skipped >= 4
        redis_proxy.heal()
        await wait_until(lambda: not limiter.breaker.is_open)
        again = await limiter.reserve(
            sessionmaker=sessionmaker, email=fresh_email(), actor=at("192.0.2.5")
        )
        assert len(again.redis_keys) == 2
    finally:
        await limiter.aclose()
