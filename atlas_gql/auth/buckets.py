"""Request rate limits as token buckets in PostgreSQL, shared by every worker and replica.

A bucket holds up to `capacity` tokens and gains `per_second` tokens a second; each admitted
request takes one. Its row (`rate_limit_buckets`) stores the tokens left when it was last
touched; a missing row is a full bucket. Taking is one atomic statement per bucket
(`INSERT ... ON CONFLICT DO UPDATE ... WHERE enough`), so concurrent requests in any number
of workers cannot overdraw it. Several buckets are taken together or not at all: `take` runs
in a short transaction of its own, rolled back when one of them is empty, so a refused
request costs no bucket anything (and a request refused later, for another reason, stays
counted: that is what a rate limit is for). One bucket needs no transaction at all: its take
is one atomic statement, which may also read what decides the bucket (`taking_per_period`:
sendMessage reads the sender's own rate in it, AUTOCOMMIT).

Used by sendMessage (per user, ATLAS_USER_MESSAGES_PER_MINUTE) and register (per address and
for all addresses together, ATLAS_REGISTRATIONS_PER_HOUR[_GLOBAL]). Rows of full buckets are
pruned by `atlas-gql prune-logs` (`prune_full_buckets`); a new row is only ever kept for an
admitted request, so their number is bounded by what the limits admit."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from atlas_gql.auth.models import RateLimitBucket
from atlas_gql.db.utils import execute_transaction
from atlas_gql.errors import RateLimited

# Every bucket refills within this; a row untouched for longer is a full bucket.
LONGEST_REFILL_SECONDS = 24 * 3600


@dataclass(frozen=True)
class Bucket:
    """`key` names what is limited (e.g. `messages:user:<uuid>`); `capacity` tokens at most
    (the burst), refilled at `per_second`."""

    key: str
    capacity: float
    per_second: float

    @classmethod
    def per_period(cls, key: str, count: int, seconds: float) -> Bucket:
        """`count` requests per `seconds`, all of them allowed in one burst."""
        return cls(key=key, capacity=float(count), per_second=count / seconds)


def _refilled(
    capacity: sa.ColumnElement[Any] | None = None,
    per_second: sa.ColumnElement[Any] | None = None,
) -> sa.ColumnElement[float]:
    """The tokens of the row now, as SQL (`capacity` at most, `per_second` refilled; by
    default the bound parameters `:capacity` and `:per_second`)."""
    elapsed = sa.func.greatest(
        0.0,
        sa.extract("epoch", sa.func.statement_timestamp() - col(RateLimitBucket.updated_at)),
    )
    if capacity is None:
        capacity = sa.bindparam("capacity", type_=sa.Float)
    if per_second is None:
        per_second = sa.bindparam("per_second", type_=sa.Float)
    return sa.func.least(capacity, col(RateLimitBucket.tokens) + elapsed * per_second)


def _take_statement() -> sa.Executable:
    refilled = _refilled()
    return (
        insert(RateLimitBucket)
        .values(
            key=sa.bindparam("bucket_key", type_=sa.String),
            tokens=sa.bindparam("capacity", type_=sa.Float) - 1,
            updated_at=sa.func.statement_timestamp(),
        )
        .on_conflict_do_update(
            index_elements=[col(RateLimitBucket.key)],
            set_={"tokens": refilled - 1, "updated_at": sa.func.statement_timestamp()},
            where=refilled >= 1,
        )
        .returning(col(RateLimitBucket.tokens))
    )


# Built once, with bound parameters (every sendMessage takes a token: building the statement
# and its cache key cost more than running it).
_TAKE = _take_statement()
_AVAILABLE = sa.select(_refilled()).where(
    col(RateLimitBucket.key) == sa.bindparam("bucket_key", type_=sa.String)
)


def taking_per_period(
    count: sa.ColumnElement[Any], *, seconds: float, where: sa.ColumnElement[bool]
) -> sa.CTE:
    """`take`'s statement for one bucket, `:bucket_key`, of `count` requests per `seconds`
    (`Bucket.per_period`), as a CTE of a statement that reads `count` itself (a column of the
    row `where` selects; no row: nothing is taken). Its `tokens` column: the tokens left, no
    row when the bucket was empty (and nothing was taken). One atomic statement: it needs no
    transaction around it. `refused` tells how long to wait."""
    proposed = sa.select(
        sa.bindparam("bucket_key", type_=sa.String),
        sa.cast(count, sa.Float) - 1,
        sa.func.statement_timestamp(),
    ).where(where)
    statement = insert(RateLimitBucket).from_select(
        [col(RateLimitBucket.key), col(RateLimitBucket.tokens), col(RateLimitBucket.updated_at)],
        proposed,
    )
    # The row proposed holds `count - 1` tokens: the capacity is that plus one.
    capacity = statement.excluded.tokens + 1
    refilled = _refilled(capacity, capacity / float(seconds))
    return (
        statement.on_conflict_do_update(
            index_elements=[col(RateLimitBucket.key)],
            set_={"tokens": refilled - 1, "updated_at": sa.func.statement_timestamp()},
            where=refilled >= 1,
        )
        .returning(col(RateLimitBucket.tokens))
        .cte("taken")
    )


async def refused(db: AsyncSession, bucket: Bucket) -> int:
    """The seconds until the (empty) bucket has a token again."""
    parameters = {
        "bucket_key": bucket.key,
        "capacity": bucket.capacity,
        "per_second": bucket.per_second,
    }
    available = (await db.execute(_AVAILABLE, parameters)).scalar_one_or_none()
    missing = 1 - float(available if available is not None else bucket.capacity)
    return max(1, math.ceil(missing / bucket.per_second))


async def _take_one(db: AsyncSession, bucket: Bucket) -> int | None:
    """Take a token; None when taken, else the seconds until one is there."""
    parameters = {
        "bucket_key": bucket.key,
        "capacity": bucket.capacity,
        "per_second": bucket.per_second,
    }
    if (await db.execute(_TAKE, parameters)).scalar_one_or_none() is not None:
        return None
    return await refused(db, bucket)


class _Refused(Exception):
    def __init__(self, retry_after: int) -> None:
        self.retry_after = retry_after


async def _take_all(db: AsyncSession, buckets: Sequence[Bucket]) -> None:
    # Always in key order, so two requests sharing buckets never wait for each other in a
    # cycle.
    for bucket in sorted(buckets, key=lambda bucket: bucket.key):
        wait = await _take_one(db, bucket)
        if wait is not None:
            raise _Refused(wait)


# Buckets worked out inside the short transaction (e.g. from the user's own rate, read there).
BucketsOf = Callable[[AsyncSession], Awaitable[Sequence[Bucket]]]


async def take(
    *,
    sessionmaker: async_sessionmaker[AsyncSession],
    buckets: Sequence[Bucket] | BucketsOf,
    message: str,
    **extensions: object,
) -> None:
    """Take one token from every bucket, in a short transaction of its own; RATE_LIMITED
    (with `retryAfter` seconds and `extensions`) when one of them is empty, and then none is
    taken. `buckets` may be a function of that transaction's session, so what decides them
    is read in the same transaction (one connection, one commit)."""

    async def take_all(db: AsyncSession) -> None:
        await _take_all(db, buckets if isinstance(buckets, Sequence) else await buckets(db))

    if isinstance(buckets, Sequence) and not buckets:
        return
    try:
        await execute_transaction(sessionmaker, take_all, attempts=2)
    except _Refused as refused:
        raise RateLimited(message, retry_after=refused.retry_after, **extensions) from None


async def prune_full_buckets(*, db: AsyncSession) -> int:
    """Delete the rows of buckets that are full again (untouched for a day); the caller
    commits."""
    result = await db.execute(
        sa.delete(RateLimitBucket).where(
            col(RateLimitBucket.updated_at)
            < sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, LONGEST_REFILL_SECONDS)
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)
