"""Concurrent sign-in attempts cannot exceed the failure limit, on a real uvicorn (real
concurrency: bcrypt in the thread pool, one database connection per request), with the
PostgreSQL limiter and with the Redis limiter; and no connection is held during bcrypt."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa
from redis.asyncio import Redis

from atlas_gql.auth.account import create_user_account
from atlas_gql.db.url import DatabaseTarget
from tests.auth.conftest import REDIS_URL, live_login, loopback_addresses
from tests.conftest import error_codes
from tests.live import LiveServer, MakeLiveServer

CONCURRENT = 30
PASSWORD = "the-right-password"


def fresh_email(label: str) -> str:
    return f"race-{label}-{uuid.uuid4().hex[:10]}@example.com"


async def live_user(server: LiveServer, email: str, *, rounds: int = 12) -> None:
    """An account in the live database whose password check costs `rounds`."""
    async with server.app.state.atlas["runtime"].sessionmaker() as db:
        await create_user_account(db=db, email=email, password=PASSWORD, bcrypt_rounds=rounds)
        await db.commit()


async def attempt_rows(server: LiveServer, condition: str, value: str) -> Counter[str]:
    """ActivityLog actions of sign-in attempts matching `condition` (by email or address)."""
    async with server.app.state.atlas["runtime"].sessionmaker() as db:
        rows = await db.execute(
            sa.text(
                "SELECT action FROM activity_logs WHERE action LIKE 'auth.login%' AND " + condition
            ),
            {"value": value},
        )
        return Counter(row[0] for row in rows)


async def limiter_server(
    make_live_server: MakeLiveServer, limiter: str, redis_prefix: str, **overrides: Any
) -> LiveServer:
    if limiter == "redis":
        server: LiveServer = await make_live_server(
            redis_url=REDIS_URL, atlas_rate_limit_prefix=redis_prefix, **overrides
        )
    else:
        server = await make_live_server(**overrides)
    assert server.settings.atlas_login_max_failures == 10
    return server


def outcome(body: dict[str, Any]) -> str:
    codes = error_codes(body)
    assert len(codes) == 1, body
    return codes[0]


@pytest.mark.parametrize("limiter", ["database", "redis"])
async def test_concurrent_wrong_passwords_on_one_account_stop_at_the_limit(
    make_live_server: MakeLiveServer, redis_prefix: str, limiter: str
) -> None:
    server = await limiter_server(make_live_server, limiter, redis_prefix)
    email = fresh_email(limiter)
    await live_user(server, email)
    # Every attempt from one address: the lock of (account, address) applies.
    addresses = loopback_addresses()
    attacker = next(addresses)
    bodies = await asyncio.gather(
        *(
            live_login(server, email, f"guess-{index}", address=attacker)
            for index in range(CONCURRENT)
        )
    )
    outcomes = Counter(outcome(body) for body in bodies)
    assert outcomes == {"UNAUTHENTICATED": 10, "RATE_LIMITED": CONCURRENT - 10}
    for body in bodies:
        if outcome(body) == "RATE_LIMITED":
            assert 0 < body["errors"][0]["extensions"]["retryAfter"] <= 900
    # Ten failures recorded, no attempt left pending, refused attempts leave no row.
    assert await attempt_rows(server, "details->>'email' = :value", email) == {
        "auth.login_failed": 10
    }
    # The right password is refused as well from that address while the lock holds ...
    right = await live_login(server, email, PASSWORD, address=attacker)
    assert outcome(right) == "RATE_LIMITED"
    # ... and accepted from any other address: the attacker has not locked the owner out.
    owner = await live_login(server, email, PASSWORD, address=next(addresses))
    assert "errors" not in owner, owner
    if limiter == "redis":
        client = Redis.from_url(REDIS_URL)
        try:
            counts = [
                int(await client.get(key) or 0)
                async for key in client.scan_iter(match=f"{redis_prefix}login:email:*")
            ]
        finally:
            await client.aclose()
        # Refused reservations were given back; the owner's success too. (On a starved
        # machine the burst can outlast the limiter's Redis timeout: then its breaker opened
        # and the database counted alone, which the assertions above already hold to.)
        breaker = server.app.state.atlas["services"].login_limiter.breaker
        if breaker.trips == 0:
            assert sorted(counts) == [0, 10]
        else:
            assert all(count <= 10 for count in counts)


@pytest.mark.parametrize("limiter", ["database", "redis"])
async def test_concurrent_attempts_from_one_address_stop_at_the_limit(
    make_live_server: MakeLiveServer, redis_prefix: str, limiter: str
) -> None:
    server = await limiter_server(
        make_live_server, limiter, redis_prefix, atlas_login_address_max_failures=10
    )
    address = next(loopback_addresses())
    # A different (unknown) account each time: only the per-address limit applies.
    bodies = await asyncio.gather(
        *(
            live_login(server, fresh_email(limiter), "whatever-password", address=address)
            for _ in range(CONCURRENT)
        )
    )
    outcomes = Counter(outcome(body) for body in bodies)
    assert outcomes == {"UNAUTHENTICATED": 10, "RATE_LIMITED": CONCURRENT - 10}
    assert await attempt_rows(server, "ip_address = :value", address) == {"auth.login_failed": 10}


@pytest.mark.parametrize("limiter", ["database", "redis"])
async def test_successful_sign_ins_give_their_reservation_back(
    make_live_server: MakeLiveServer, redis_prefix: str, limiter: str
) -> None:
    overrides: dict[str, Any] = {"atlas_login_max_failures": 3}
    if limiter == "redis":
        overrides |= {"redis_url": REDIS_URL, "atlas_rate_limit_prefix": redis_prefix}
    server = await make_live_server(**overrides)
    email = fresh_email("ok")
    await live_user(server, email)
    address = next(loopback_addresses())
    # As many simultaneous sign-ins as the limit, three times over: each is admitted, and
    # each success gives its reservation back (in flight, an attempt counts like a failure).
    for _ in range(3):
        bodies = await asyncio.gather(
            *(live_login(server, email, PASSWORD, address=address) for _ in range(3))
        )
        assert all("errors" not in body for body in bodies), bodies
    # One `auth.login` row each; nothing pending, nothing counted as a failure.
    assert await attempt_rows(
        server, "user_id = (SELECT id FROM users WHERE email = :value)", email
    ) == {"auth.login": 9}


async def idle_in_transaction_during(
    target: DatabaseTarget, work: Any, *, longer_than: float = 0.4
) -> list[int]:
    """Run `work` while watching the database for connections idle inside a transaction for
    longer than `longer_than` seconds (a connection parked across a bcrypt check)."""
    url = target.url
    connection = await asyncpg.connect(
        host=url.host, port=url.port, user=url.username, database="postgres"
    )
    seen: list[int] = []
    task = asyncio.ensure_future(work)
    try:
        while not task.done():
            count = await connection.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 "
                "AND state = 'idle in transaction' "
                "AND clock_timestamp() - state_change > make_interval(secs => $2)",
                url.database,
                longer_than,
            )
            seen.append(int(count))
            await asyncio.sleep(0.02)
        await task
    finally:
        await connection.close()
    return seen


async def test_no_connection_is_held_during_the_password_check(
    make_live_server: MakeLiveServer, live_database: DatabaseTarget
) -> None:
    server = await make_live_server()
    email = fresh_email("pool")
    # A costly hash (about 0.8 s per check here), so a parked connection cannot be missed.
    await live_user(server, email, rounds=13)
    address = next(loopback_addresses())
    for password in ("wrong-password", PASSWORD):
        seen = await idle_in_transaction_during(
            live_database, live_login(server, email, password, address=address)
        )
        assert len(seen) > 5  # watched throughout the check, not once
        assert max(seen) == 0, seen
