"""Brute-force limits on sign-in: per account and per address, in PostgreSQL or Redis."""

from __future__ import annotations

import uuid
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
    settle_attempt,
)
from atlas_gql.config import Settings
from atlas_gql.errors import RateLimited
from atlas_gql.logs.audit import record_activity
from tests.auth.conftest import REDIS_URL, login, signed_in
from tests.conftest import SEED_PASSWORD, error_codes, make_settings


def fresh_email() -> str:
    return f"target-{uuid.uuid4().hex[:10]}@example.com"


def limits(**values: int) -> LoginLimits:
    """Sign-in limits: the defaults (window 600 s) but for `values`."""
    defaults = {
        "max_failures": 10,
        "window_seconds": 600,
        "address_max_failures": 50,
        "account_backoff_after": 20,
        "account_backoff_max": 60,
    }
    return LoginLimits(**(defaults | values))


def at(ip_address: str | None) -> Actor:
    """An anonymous caller from `ip_address`."""
    return Actor(viewer=None, ip_address=ip_address)


async def test_25_wrong_passwords_from_one_address_lock_that_address_out_only(
    make_gql: Any, db: AsyncSession
) -> None:
    register = await make_gql(atlas_bcrypt_rounds=4)
    email = fresh_email()
    body = await register(
        'mutation($e: String!) { register(input: {email: $e, password: "right-password"}) '
        "{ accessToken } }",
        {"e": email},
    )
    assert "errors" not in body
    attacker = await make_gql(ip="198.51.100.1", atlas_bcrypt_rounds=4)
    codes = [
        error_codes(await login(attacker, email, f"guess-{attempt}"))[0] for attempt in range(25)
    ]
    assert codes[:10] == ["UNAUTHENTICATED"] * 10
    assert codes[10:] == ["RATE_LIMITED"] * 15
    # Even the right password is refused from that address while the lock holds.
    limited = await login(attacker, email.upper(), "right-password")
    error = limited["errors"][0]
    assert error["extensions"]["code"] == "RATE_LIMITED"
    assert 0 < error["extensions"]["retryAfter"] <= 900
    # Attempts refused by the limit are not counted (the window is not extended by them).
    failures = (
        await db.execute(
            sa.text(
                "SELECT count(*) FROM activity_logs WHERE action = 'auth.login_failed' "
                "AND details->>'email' = :e"
            ),
            {"e": email},
        )
    ).scalar_one()
    assert failures == 10
    # The owner, from another address, is not locked out; other accounts are untouched.
    owner = await make_gql(ip="198.51.100.200", atlas_bcrypt_rounds=4)
    assert await signed_in(owner, email, "right-password")
    assert await signed_in(attacker, "user@example.com", SEED_PASSWORD)


async def test_failures_from_one_address_are_limited_across_accounts(make_gql: Any) -> None:
    gql = await make_gql(ip="192.0.2.44", atlas_login_address_max_failures=3)
    for _ in range(3):
        assert error_codes(await login(gql, fresh_email(), "whatever-password")) == [
            "UNAUTHENTICATED"
        ]
    limited = await login(gql, "user@example.com", SEED_PASSWORD)
    assert error_codes(limited) == ["RATE_LIMITED"]
    assert limited["errors"][0]["message"] == "Too many failed sign-in attempts; try again later."
    # Another address still signs in.
    elsewhere = await make_gql(ip="192.0.2.45", atlas_login_address_max_failures=3)
    assert await signed_in(elsewhere, "user@example.com", SEED_PASSWORD)


async def test_database_limiter_counts_attempts_and_failure_rows(
    db: AsyncSession, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    limiter = DatabaseLoginLimiter(limits(max_failures=3, address_max_failures=3))
    email = fresh_email()
    # A failure row of the window counts, and so does each admitted attempt.
    record_activity(
        db=db,
        action="auth.login_failed",
        user_id=None,
        ip_address="192.0.2.9",
        details={"email": email},
    )
    await db.commit()
    attempts = [
        await limiter.reserve(sessionmaker=sessionmaker, email=email, actor=at("192.0.2.9"))
        for _ in range(2)
    ]
    pending = (
        await db.execute(
            sa.text(
                "SELECT count(*) FROM activity_logs WHERE action = 'auth.login_attempt' "
                "AND details->>'email' = :e AND ip_address = '192.0.2.9'"
            ),
            {"e": email},
        )
    ).scalar_one()
    assert pending == 2
    assert {attempt.email for attempt in attempts} == {email}
    with pytest.raises(RateLimited) as limited:
        await limiter.reserve(sessionmaker=sessionmaker, email=email.upper(), actor=at("192.0.2.9"))
    assert 0 < limited.value.retry_after <= 600
    # The lock is per account and address: the account from elsewhere is admitted.
    await limiter.reserve(sessionmaker=sessionmaker, email=email, actor=at("192.0.2.11"))
    # The address has reached its own limit too, across accounts.
    with pytest.raises(RateLimited):
        await limiter.reserve(sessionmaker=sessionmaker, email=fresh_email(), actor=at("192.0.2.9"))
    await limiter.reserve(sessionmaker=sessionmaker, email=fresh_email(), actor=at("192.0.2.10"))
    # A settled success stops counting: the account is admitted again from that address.
    await settle_attempt(db, attempt=attempts[0], action="auth.login", user_id=None)
    await db.commit()
    await limiter.release(attempts[0])
    await limiter.reserve(sessionmaker=sessionmaker, email=email, actor=at("192.0.2.9"))


async def test_redis_limiter_over_real_redis(
    redis_prefix: str, db: AsyncSession, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    settings = Settings(
        _env_file=None,
        redis_url=REDIS_URL,
        atlas_rate_limit_prefix=redis_prefix,
        atlas_login_max_failures=3,
        atlas_login_failure_window=120,
    )
    limiter = build_login_limiter(settings)
    assert isinstance(limiter, RedisLoginLimiter)
    # A second worker: its own client, the same counters.
    other_worker = build_login_limiter(settings)
    client = Redis.from_url(REDIS_URL)
    try:
        email = fresh_email()
        attempts = []
        for index in range(3):
            worker = limiter if index % 2 else other_worker
            attempts.append(
                await worker.reserve(sessionmaker=sessionmaker, email=email, actor=at("192.0.2.1"))
            )
        assert all(len(attempt.redis_keys) == 2 for attempt in attempts)
        # The Redis counter of (account, address) refuses first (the database would too).
        with pytest.raises(RateLimited) as limited:
            await other_worker.reserve(
                sessionmaker=sessionmaker, email=email.upper(), actor=at("192.0.2.1")
            )
        assert 0 < limited.value.retry_after <= 120
        # Elsewhere the account is admitted; so is another account from the address.
        await limiter.reserve(sessionmaker=sessionmaker, email=email, actor=at("192.0.2.99"))
        keys = sorted([key.decode() async for key in client.scan_iter(match=f"{redis_prefix}*")])
        assert len(keys) == 4  # two (account, address) pairs, two addresses
        assert not any(email in key for key in keys)  # account keys are hashed
        ttl = await client.ttl(f"{redis_prefix}login:ip:192.0.2.1")
        assert 0 < ttl <= 120
        pair = attempts[0].redis_keys[0]
        assert int(await client.get(pair) or 0) == 3  # the refused attempt gave it back
        assert int(await client.get(f"{redis_prefix}login:ip:192.0.2.99") or 0) == 1
        # A success gives its reservation back; never below zero, never a key without TTL.
        await settle_attempt(db, attempt=attempts[0], action="auth.login", user_id=None)
        await db.commit()
        await limiter.release(attempts[0])
        assert int(await client.get(pair) or 0) == 2
        await other_worker.reserve(sessionmaker=sessionmaker, email=email, actor=at("192.0.2.1"))
        await client.delete(pair)
        await limiter.release(attempts[1])
        assert await client.exists(pair) == 0
    finally:
        await client.aclose()
        await limiter.aclose()
        await other_worker.aclose()


async def test_redis_limiter_through_the_api(
    make_gql: Any, redis_prefix: str, db: AsyncSession
) -> None:
    overrides = {
        "redis_url": REDIS_URL,
        "atlas_rate_limit_prefix": redis_prefix,
        "atlas_login_max_failures": 3,
    }
    email = fresh_email()
    gql = await make_gql(ip="192.0.2.150", **overrides)
    for _ in range(3):
        assert error_codes(await login(gql, email, "wrong-password")) == ["UNAUTHENTICATED"]
    limited = await login(gql, email, "wrong-password")
    assert error_codes(limited) == ["RATE_LIMITED"]
    assert 0 < limited["errors"][0]["extensions"]["retryAfter"] <= 900
    client = Redis.from_url(REDIS_URL)
    try:
        counts = [
            int(await client.get(key) or 0)
            async for key in client.scan_iter(match=f"{redis_prefix}login:email:*")
        ]
    finally:
        await client.aclose()
    assert counts == [3]
    # Redis losing its counters does not lift the limit: the database has the last word, and
    # the refused attempt gives its Redis reservation back.
    client = Redis.from_url(REDIS_URL)
    try:
        await client.delete(*[key async for key in client.scan_iter(match=f"{redis_prefix}*")])
        limited = await login(gql, email, "wrong-password")
        assert error_codes(limited) == ["RATE_LIMITED"]
        counts = [
            int(await client.get(key) or 0)
            async for key in client.scan_iter(match=f"{redis_prefix}login:email:*")
        ]
    finally:
        await client.aclose()
    assert counts == [0]


async def test_redis_outage_falls_back_to_the_database(
    database_target: Any, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    settings = make_settings(
        database_target,
        redis_url="redis://127.0.0.1:1/0",
        atlas_login_max_failures=1,
    )
    limiter = build_login_limiter(settings)
    try:
        email = fresh_email()
        attempt = await limiter.reserve(sessionmaker=sessionmaker, email=email, actor=at(None))
        assert attempt.redis_keys == ()
        with pytest.raises(RateLimited):
            await limiter.reserve(sessionmaker=sessionmaker, email=email, actor=at(None))
        await limiter.release(attempt)
    finally:
        await limiter.aclose()


@pytest.mark.parametrize("with_redis", [False, True])
async def test_a_right_password_under_the_limit_signs_in_and_is_not_counted(
    make_gql: Any, redis_prefix: str, with_redis: bool
) -> None:
    overrides: dict[str, Any] = {"atlas_login_max_failures": 3, "atlas_bcrypt_rounds": 4}
    if with_redis:
        overrides |= {"redis_url": REDIS_URL, "atlas_rate_limit_prefix": redis_prefix}
    gql = await make_gql(ip="198.51.100.77", **overrides)
    email = fresh_email()
    body = await gql(
        'mutation($e: String!) { register(input: {email: $e, password: "right-password"}) '
        "{ accessToken } }",
        {"e": email},
    )
    assert "errors" not in body
    outcomes = []
    for password in ("wrong-1", "wrong-2", "right-password", "wrong-3", "right-password"):
        outcomes.append(error_codes(await login(gql, email, password)) or ["OK"])
    # Two failures, then a success admitted at the limit's edge (its own reservation does
    # not stop it) and not counted; the third failure reaches the limit.
    assert outcomes == [
        ["UNAUTHENTICATED"],
        ["UNAUTHENTICATED"],
        ["OK"],
        ["UNAUTHENTICATED"],
        ["RATE_LIMITED"],
    ]
