"""The three database helpers named by the seed document."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from atlas_gql.errors import AtlasError, BadInput, Conflict, DbUnavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")

# SQLSTATEs: serialization_failure, deadlock_detected.
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})
UNIQUE_VIOLATION = "23505"
FOREIGN_KEY_VIOLATION = "23503"
CHECK_VIOLATION = "23514"
NOT_NULL_VIOLATION = "23502"
STRING_TOO_LONG = "22001"
INVALID_TEXT = "22P02"
# A NUL or a character the database encoding lacks (a value that passed the input checks
# some other way): the value is the client's.
CHARACTER_NOT_IN_REPERTOIRE = "22021"
UNTRANSLATABLE_CHARACTER = "22P05"
BAD_VALUE_SQLSTATES = frozenset(
    {
        CHECK_VIOLATION,
        NOT_NULL_VIOLATION,
        STRING_TOO_LONG,
        INVALID_TEXT,
        CHARACTER_NOT_IN_REPERTOIRE,
        UNTRANSLATABLE_CHARACTER,
    }
)
# asyncpg refuses to encode a query argument (out of range, not text) before sending it: no
# SQLSTATE, this message.
_ARGUMENT_REFUSED = "invalid input for query argument"


def sqlstate_of(error: BaseException) -> str | None:
    """The PostgreSQL SQLSTATE behind a SQLAlchemy/asyncpg error, if any."""
    pending: list[BaseException | None] = [error]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        code = getattr(current, "sqlstate", None) or getattr(current, "pgcode", None)
        if isinstance(code, str) and code:
            return code
        pending.extend([getattr(current, "orig", None), current.__cause__])
    return None


def is_connection_error(error: BaseException) -> bool:
    # PoolTimeoutError: every pooled connection is busy; to a client, the database is.
    if isinstance(error, (OSError, TimeoutError, InterfaceError, PoolTimeoutError)):
        return True
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, OperationalError):
        code = sqlstate_of(error)
        return code is None or code.startswith("08") or code.startswith("57P")
    return False


def map_db_error(error: Exception) -> AtlasError | None:
    """The API error a driver error means to a client, or None when it is a bug (masked)."""
    if is_connection_error(error):
        return DbUnavailable()
    code = sqlstate_of(error)
    if code == UNIQUE_VIOLATION or (isinstance(error, IntegrityError) and code is None):
        return Conflict("A record with these values already exists.")
    if code == FOREIGN_KEY_VIOLATION:
        return Conflict("A referenced record does not exist or is still in use.")
    if code in BAD_VALUE_SQLSTATES or (code is None and _ARGUMENT_REFUSED in str(error)):
        return BadInput("A value is out of the allowed range or format.")
    return None


async def execute_db_operation(
    operation: Callable[[], Awaitable[T]],
    *,
    description: str = "database operation",
    attempts: int = 1,
    base_delay: float = 0.05,
) -> T:
    """Run one operation; driver errors become the API's errors (CONFLICT, DB_UNAVAILABLE, ...).
    Serialization failures and deadlocks are retried up to `attempts` times, with the jittered
    backoff of `execute_transaction` (for an operation that is one statement of its own)."""
    for attempt in range(1, attempts + 1):
        try:
            return await operation()
        except AtlasError:
            raise
        except (DBAPIError, OSError, TimeoutError, PoolTimeoutError) as exc:
            if await _retried(exc, attempt, attempts, base_delay):
                continue
            mapped = map_db_error(exc)
            if mapped is None:
                raise
            logger.info("%s failed: %s", description, type(exc).__name__)
            raise mapped from exc
    raise AssertionError("unreachable")  # pragma: no cover


async def _retried(error: Exception, attempt: int, attempts: int, base_delay: float) -> bool:
    """After a jittered, exponential pause, True when `error` is a serialization failure or
    a deadlock and attempts are left."""
    if sqlstate_of(error) not in RETRYABLE_SQLSTATES or attempt >= attempts:
        return False
    delay = base_delay * 2 ** (attempt - 1) * (1 + random.random())  # noqa: S311
    logger.info("transaction retry %d after %s", attempt, sqlstate_of(error))
    await asyncio.sleep(delay)
    return True


# What `execute_transaction(isolation_level=AUTOCOMMIT)` and `without_transaction` set.
AUTOCOMMIT = "AUTOCOMMIT"


async def without_transaction(db: AsyncSession) -> None:
    """Before `db`'s first statement: each of its statements commits on its own (AUTOCOMMIT),
    so the session sends no BEGIN, and no COMMIT or ROLLBACK when it ends (two round trips
    and their Python, ~0.3 ms each). For a short session of one statement, or of statements
    that need not be atomic together. A session bound to a connection (not to an engine:
    tests running in one outer transaction) stays in that connection's transaction."""
    if isinstance(db.bind, AsyncEngine):
        await db.connection(execution_options={"isolation_level": AUTOCOMMIT})


async def execute_transaction(
    sessionmaker: async_sessionmaker[AsyncSession],
    work: Callable[[AsyncSession], Awaitable[T]],
    *,
    attempts: int = 4,
    base_delay: float = 0.05,
    isolation_level: str | None = None,
) -> T:
    """Run `work` in one transaction on a fresh session; retry serialization failures and
    deadlocks up to `attempts` times with jittered exponential backoff. With
    `isolation_level=AUTOCOMMIT`, each statement of `work` is a transaction of its own (no
    BEGIN or COMMIT round trip: `without_transaction`), for work that needs no atomicity."""
    for attempt in range(1, attempts + 1):
        async with sessionmaker() as session:
            try:
                async with session.begin():
                    if isolation_level == AUTOCOMMIT:
                        await without_transaction(session)
                    elif isolation_level is not None:
                        # Before the first statement, so the whole transaction runs at it.
                        await session.connection(
                            execution_options={"isolation_level": isolation_level}
                        )
                    return await work(session)
            except DBAPIError as exc:
                if await _retried(exc, attempt, attempts, base_delay):
                    continue
                mapped = map_db_error(exc)
                if mapped is None:
                    raise
                raise mapped from exc
            except (OSError, TimeoutError) as exc:
                raise DbUnavailable() from exc
    raise AssertionError("unreachable")  # pragma: no cover


async def check_db_connection(engine: AsyncEngine, *, timeout: float = 2.0) -> bool:
    """True when the database answers `SELECT 1` within `timeout` seconds."""

    async def probe() -> None:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    try:
        await asyncio.wait_for(probe(), timeout)
    except Exception:  # any failure means "not ready"; the reason is logged, not raised
        logger.warning("database check failed", exc_info=True)
        return False
    return True
