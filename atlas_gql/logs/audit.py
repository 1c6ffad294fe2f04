"""The log *writers*: activity rows (in the caller's transaction), error rows (in their own),
and the scrubbing that keeps secrets out of both.

Kernel: every domain and the graph layer write logs, so this imports only the kernel and
`logs/models.py`. Reading the logs back is `logs/service.py`."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from atlas_gql.config import Settings, settings_group
from atlas_gql.db.inputs import unstorable_character
from atlas_gql.db.tables import new_row
from atlas_gql.db.utils import sqlstate_of
from atlas_gql.logs.models import ActivityLog, ErrorLog, ErrorSource

logger = logging.getLogger(__name__)

# Keys whose values never land in a log row.
SECRET_KEYS = frozenset(
    {
        "password",
        "currentpassword",
        "newpassword",
        "token",
        "refreshtoken",
        "accesstoken",
        "authorization",
        "secret",
        "apikey",
        "api_key",
        "password_hash",
    }
)


def _argument_refused(match: re.Match[str]) -> str:
    """asyncpg's `invalid input for query argument $1: <value> (<reason>)`: the value
    redacted, and whatever the reason quotes (`invalid UUID '<value>'`)."""
    reason = _QUOTED.sub("'[redacted]'", match.group(3) or "")
    return f"{match.group(1)}[redacted]{reason}"


_QUOTED = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"")

# Secret-looking text inside free text (exception messages, stacks): JWTs, bearer credentials,
# OpenAI-style API keys, `password=...`-style assignments; and every value PostgreSQL, asyncpg
# or Python quotes in an error about it (`Key (...)=(...)`, a bad query argument: user text,
# not a secret, but not the log's to keep).
_SECRET_TEXT_PATTERNS: tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...] = (
    (re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), "[redacted-jwt]"),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 [redacted]"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), "[redacted-key]"),
    (
        re.compile(
            r"(?i)([\"']?\b(?:password|passwd|pwd|secret|token|api[_-]?key|authorization|"
            r"refresh_?token|access_?token|password_?hash|token_?hash)[\"']?\s*[:=]\s*)"
            r"(\"[^\"]*\"|'[^']*'|[^\s,;)}\]]+)"
        ),
        r"\1[redacted]",
    ),
    (
        re.compile(r"(?i)(\((?:[a-z_]*(?:password|token|secret)[a-z_]*)\)=\()[^)]*(\))"),
        r"\1[redacted]\2",
    ),  # asyncpg quotes the value of a bad query argument: a password or token on its way in.
    (
        re.compile(r"(query argument \$\d+: )(.*?)( \(.*\))?$", re.MULTILINE),
        _argument_refused,
    ),
    # PostgreSQL quotes the value it refused: `invalid input syntax for type uuid: "..."`,
    # `Key (email)=(...) already exists`, a JSON document up to a bad escape (`JSON data,
    # line 1: ...`), the bytes of an encoding error, a parameter's value in a context line.
    (
        re.compile(r"(?i)(invalid input (?:syntax|value) for [^:\n]{1,80}: ).*"),
        r"\1[redacted]",
    ),
    (
        re.compile(
            r"(Key \((?:[^()\n]|\([^()\n]*\)){0,200}\)=\().*?"
            r"(\) (?:already exists|is not present|is still referenced|conflicts with)|\)\.?$)",
            re.MULTILINE,
        ),
        r"\1[redacted]\2",
    ),
    (re.compile(r"(JSON data, line \d+: ).*"), r"\1[redacted]"),
    (
        re.compile(
            r"(?i)((?:invalid byte sequence for encoding \"[^\"\n]*\": |character with "
            r"byte sequence ))(?:0x[0-9a-f]{2}\s?)+"
        ),
        r"\1[redacted] ",
    ),
    (re.compile(r"(portal parameter \$\d+ = ).*"), r"\1[redacted]"),
    # Python's own conversions quote the value too (in a chained exception of the stack).
    (
        re.compile(
            r"((?:invalid UUID|invalid literal for \w+\(\) with base \d+:|could not convert "
            r"string to \w+:|Invalid isoformat string:) )(?:'[^'\n]*'|\"[^\"\n]*\")"
        ),
        r"\1'[redacted]'",
    ),
    (
        re.compile(r"(codec can't (?:en|de)code (?:character|bytes?) )('[^'\n]*'|\S+)"),
        r"\1[redacted]",
    ),
)


# (A Python string holds a surrogate only alone: JSON's escaped pairs decode to one character.)
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable_text(text: str) -> str:
    """`text` with what PostgreSQL cannot store (NUL, lone surrogates) replaced by U+FFFD."""
    if unstorable_character(text) is None:
        return text
    return _UNSTORABLE.sub("\ufffd", text)


def scrub_text(text: str) -> str:
    """`text` with secret-looking substrings (tokens, keys, password assignments) and the
    values PostgreSQL quotes in its errors redacted, storable (see `storable_text`)."""
    text = storable_text(text)
    for pattern, replacement in _SECRET_TEXT_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def scrub(details: Any) -> Any:
    """A copy of `details` with secret-looking keys replaced by "[redacted]" and
    secret-looking substrings of string values redacted (see `scrub_text`)."""
    if isinstance(details, dict):
        return {
            storable_text(key) if isinstance(key, str) else key: "[redacted]"
            if str(key).replace("_", "").replace("-", "").lower() in SECRET_KEYS
            else scrub(value)
            for key, value in details.items()
        }
    if isinstance(details, (list, tuple)):
        return [scrub(item) for item in details]
    if isinstance(details, str):
        return scrub_text(details)
    return details


def record_activity(
    *,
    db: AsyncSession,
    action: str,
    user_id: uuid.UUID | None,
    entity_type: str | None = None,
    entity_id: uuid.UUID | str | None = None,
    project_id: uuid.UUID | None = None,
    ip_address: str | None = None,
    user_agent: str | None = None,
    details: dict[str, Any] | None = None,
) -> ActivityLog:
    """Add an ActivityLog row to the caller's transaction (committed with the change)."""
    row = new_row(
        ActivityLog,
        action=action,
        user_id=user_id,
        entity_type=entity_type,
        entity_id=str(entity_id) if entity_id is not None else None,
        project_id=project_id,
        ip_address=ip_address,
        user_agent=user_agent,
        details=scrub(details) if details else None,
        # Set here, not by the database: now() is the transaction's start, so rows written in
        # one transaction (or a test's outer transaction) would tie and lose their order.
        created_at=datetime.now(UTC),
    )
    db.add(row)
    return row


def describe_exception(error: BaseException) -> tuple[str, str, str]:
    """(type, message, stack) of an exception, for an ErrorLog row, secrets redacted."""
    error_type = f"{type(error).__module__}.{type(error).__qualname__}"
    stack = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return error_type[:200], scrub_text(str(error))[:4000], scrub_text(stack)[-20000:]


@dataclass(frozen=True, slots=True)
class ErrorLogPolicy:
    """How ErrorLog rows are folded: one row per fingerprint per window, and at most
    `rows_per_window` new rows per window for anonymous requests together and for each user
    (their further errors are counted on one overflow row)."""

    window_seconds: int = 300
    rows_per_window: int = 20

    @classmethod
    def from_settings(cls, settings: Settings) -> ErrorLogPolicy:
        return settings_group(cls, settings, prefix="atlas_error_log_")

    def window_start(self, moment: datetime) -> datetime:
        """The start of the window `moment` falls in (windows are aligned on the epoch)."""
        seconds = int(moment.timestamp()) // self.window_seconds * self.window_seconds
        return datetime.fromtimestamp(seconds, UTC)


# A path's list indexes (`projects.edges.3.node`) do not make a new kind of error. (A reply's
# path names its message, `reply/<id>`: each failed reply keeps its row, which the per-user
# bound below limits, and sendMessage's rate before it.)
_PATH_INDEX = re.compile(r"(?<=\.)\d+(?=\.|$)")


def error_fingerprint(
    *, source: ErrorSource, code: str | None, path: str | None, error_type: str
) -> str:
    """What makes two errors the same kind: (source, code, path, exception type)."""
    shape = _PATH_INDEX.sub("*", path or "")
    key = json.dumps([source.value, code or "", shape, error_type], separators=(",", ":"))
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _overflow_fingerprint(user_id: uuid.UUID | None) -> str:
    return hashlib.sha256(f"overflow:{user_id or 'anonymous'}".encode()).hexdigest()


def _code_of(error: BaseException | None, upstream_status: int | None) -> str | None:
    if upstream_status is not None:
        return str(upstream_status)
    return sqlstate_of(error) if error is not None else None


async def record_error(
    *,
    sessionmaker: async_sessionmaker[AsyncSession],
    request_id: str,
    source: ErrorSource,
    error: BaseException | None = None,
    error_type: str | None = None,
    message: str | None = None,
    operation_name: str | None = None,
    path: str | None = None,
    user_id: uuid.UUID | None = None,
    upstream_status: int | None = None,
    upstream_request_id: str | None = None,
    details: dict[str, Any] | None = None,
    code: str | None = None,
    policy: ErrorLogPolicy,
) -> None:
    """Record an error in its own transaction; never raises (logging must not fail).

    A repeat of an error of the same fingerprint (`error_fingerprint`) in the same window
    adds 1 to its row's `count` and moves its `last_seen_at`; the row keeps the first
    occurrence's request id and details. A new kind of error from a source (anonymous
    requests together, or one user) that already has `policy.rows_per_window` rows in the
    window is counted on the source's overflow row instead. Concurrency: the upsert is one
    `INSERT ... ON CONFLICT (window_start, fingerprint) DO UPDATE`, and a source's new rows are
    admitted under a transaction-scoped advisory lock of that source. `policy` is required
    (`ErrorLogPolicy.from_settings`): every caller folds by the operator's settings."""
    stack = None
    if error is not None:
        error_type, message, stack = describe_exception(error)
    error_type = storable_text((error_type or "error")[:200])
    now = datetime.now(UTC)
    row: dict[str, Any] = {
        "request_id": storable_text(request_id[:64]),
        "source": source,
        "error_type": error_type,
        "message": storable_text(scrub_text(message or "")[:4000]),
        "stack": stack,
        "operation_name": storable_text(operation_name[:200]) if operation_name else None,
        "path": storable_text(path[:500]) if path else None,
        "user_id": user_id,
        "upstream_status": upstream_status,
        "upstream_request_id": storable_text(upstream_request_id[:200])
        if upstream_request_id
        else None,
        "details": scrub(details) if details else None,
        "created_at": now,
        "last_seen_at": now,
        "window_start": policy.window_start(now),
        "count": 1,
        "fingerprint": error_fingerprint(
            source=source,
            code=code or _code_of(error, upstream_status),
            path=path,
            error_type=error_type,
        ),
    }
    try:
        async with sessionmaker() as session, session.begin():
            await _fold(session, row, policy)
    except Exception:
        logger.exception("could not write ErrorLog row %s", request_id)


_error_logs = ErrorLog.__table__  # type: ignore[attr-defined]


async def _fold(session: AsyncSession, row: dict[str, Any], policy: ErrorLogPolicy) -> None:
    """Count `row` on its fingerprint's row of the window, or insert it (see record_error)."""
    table = _error_logs
    if await _count_on(session, row):
        return
    user_id = row["user_id"]
    await session.execute(
        sa.select(
            sa.func.pg_advisory_xact_lock(
                sa.func.hashtextextended(f"atlas:error_logs:{user_id or 'anonymous'}", 0)
            )
        )
    )
    same_source = table.c.user_id.is_(None) if user_id is None else table.c.user_id == user_id
    rows_of_source = (
        await session.execute(
            sa.select(sa.func.count())
            .select_from(table)
            .where(table.c.window_start == row["window_start"], same_source)
        )
    ).scalar_one()
    if rows_of_source >= policy.rows_per_window:
        row = {
            **row,
            "fingerprint": _overflow_fingerprint(user_id),
            "error_type": "atlas.ErrorLogOverflow",
            "message": (
                f"More kinds of error from this source in this window than "
                f"ATLAS_ERROR_LOG_ROWS_PER_WINDOW ({policy.rows_per_window}): they are "
                f"counted here. The first: {row['error_type']}: {row['message']}"
            )[:4000],
        }
        if await _count_on(session, row):
            return
    insert = pg_insert(table).values(id=uuid.uuid4(), **row)
    await session.execute(
        insert.on_conflict_do_update(
            index_elements=[table.c.window_start, table.c.fingerprint],
            set_={"count": table.c.count + 1, "last_seen_at": insert.excluded.last_seen_at},
        )
    )


async def _count_on(session: AsyncSession, row: dict[str, Any]) -> bool:
    """Add one to the window's row of `row`'s fingerprint; False when there is none yet."""
    table = _error_logs
    counted = await session.execute(
        sa.update(table)
        .where(
            table.c.window_start == row["window_start"],
            table.c.fingerprint == row["fingerprint"],
        )
        .values(count=table.c.count + 1, last_seen_at=row["last_seen_at"])
        .returning(table.c.id)
    )
    return counted.first() is not None
