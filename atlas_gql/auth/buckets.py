"""Request rate limits as token buckets in PostgreSQL, shared by every worker and replica.

A bucket holds up to `capacity` tokens and gains `per_second` tokens a second; each admitted
request takes one. Its row (`rate_limit_buckets`) stores the tokens left when it was last
touched; a missing row is a full bucket. Taking is one atomic statement per bucket
(`INSERT ... ON CONFLICT DO UPDATE ... WHERE enough`), so concurrent requests in any number
of workers cannot overdraw it. Several buckets are taken together or not at all: `take` runs
in a short transaction of its own, rolled back when one of them is empty, so a refused
request costs no bucket anything (and a request refused later, for another reason, stays
counted: that is what a rate limit is for).

Used by sendMessage (per user, ATLAS_USER_MESSAGES_PER_MINUTE) and register (per address and
for all addresses together, ATLAS_REGISTRATIONS_PER_HOUR[_GLOBAL]). Rows of full buckets are
pruned by `atlas-gql prune-logs` (`prune_full_buckets`); a new row is only ever kept for an
admitted request, so their number is bounded by what the limits admit."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

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


def _refilled(bucket: Bucket, table: type[RateLimitBucket]) -> sa.ColumnElement[float]:
    elapsed = sa.func.greatest(
        0.0, sa.extract("epoch", sa.func.statement_timestamp() - col(table.updated_at))
    )
    return sa.func.least(bucket.capacity, col(table.tokens) + elapsed * bucket.per_second)


async def _take_one(db: AsyncSession, bucket: Bucket) -> int | None:
    """Take a token; None when taken, else the seconds until one is there."""
    refilled = _refilled(bucket, RateLimitBucket)
    statement = (
        insert(RateLimitBucket)
        .values(
            key=bucket.key, tokens=bucket.capacity - 1, updated_at=sa.func.statement_timestamp()
        )
        .on_conflict_do_update(
            index_elements=[col(RateLimitBucket.key)],
            set_={"tokens": refilled - 1, "updated_at": sa.func.statement_timestamp()},
            where=refilled >= 1,
        )
        .returning(col(RateLimitBucket.tokens))
    )
    if (await db.execute(statement)).scalar_one_or_none() is not None:
        return None
    available = (
        await db.execute(sa.select(refilled).where(col(RateLimitBucket.key) == bucket.key))
    ).scalar_one_or_none()
    missing = 1 - float(available if available is not None else bucket.capacity)
    return max(1, math.ceil(missing / bucket.per_second))


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


async def take(
    *,
    sessionmaker: async_sessionmaker[AsyncSession],
    buckets: Sequence[Bucket],
    message: str,
    **extensions: object,
) -> None:
    """Take one token from every bucket, in a short transaction of its own; RATE_LIMITED
    (with `retryAfter` seconds and `extensions`) when one of them is empty, and then none is
    taken."""
    if not buckets:
        return
    try:
        await execute_transaction(
            sessionmaker, functools.partial(_take_all, buckets=buckets), attempts=2
        )
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
