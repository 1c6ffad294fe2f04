"""What a test reports when a live reply's events stop coming (a hang it cannot explain by
itself): the events its subscriber received, the reply's row as the database holds it (read
on a connection of its own, not through the server's pool or a test proxy), the server's
warnings, its pool, and where its tasks wait. Only read on a failure."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from typing import Any

import pytest
import sqlalchemy as sa

from atlas_gql.db.engine import create_engine
from atlas_gql.db.url import DatabaseTarget

# Frames worth showing: the app's and the test kit's, and the drivers' where they wait.
SHOWN_FRAMES = ("atlas_gql/", "tests/", "sqlalchemy/pool", "asyncpg/")


def _awaiting(task: asyncio.Task[Any]) -> list[str]:
    """The frames of a task's chain of awaits, outermost first (`Task.get_stack` gives only
    the outermost of a suspended coroutine)."""
    frames = []
    current: Any = task.get_coro()
    while current is not None:
        frame = next(
            (getattr(current, name) for name in ("cr_frame", "gi_frame", "ag_frame")
             if getattr(current, name, None) is not None),
            None,
        )  # fmt: skip
        if frame is not None:
            path = frame.f_code.co_filename.rsplit("site-packages/", 1)[-1]
            for root in ("/atlas_gql/", "/tests/"):
                path = path[path.find(root) + 1 :] if root in path else path
            frames.append(f"{path}:{frame.f_lineno} {frame.f_code.co_name}")
        current = next(
            (getattr(current, name) for name in ("cr_await", "gi_yieldfrom", "ag_await")
             if getattr(current, name, None) is not None),
            None,
        )  # fmt: skip
    return frames


def task_stacks() -> list[str]:
    """Each task of the loop with a frame of the app or the test kit: its name and those
    frames (the innermost few, innermost last)."""
    lines = []
    for task in asyncio.all_tasks():
        shown = [frame for frame in _awaiting(task) if any(part in frame for part in SHOWN_FRAMES)]
        if shown:
            lines.append(f"  {task.get_name()}: " + " -> ".join(shown[-5:]))
    return sorted(lines)


# The reply's row and its thread's mark (what the report shows of the database).
REPLY_ROW = sa.text(
    "SELECT m.status, m.content, m.error, m.content_sequence, m.reply_worker_id,"
    " m.heartbeat_at, m.completed_at, t.last_event_sequence"
    " FROM messages m JOIN threads t ON t.id = m.thread_id WHERE m.id = :id"
)


async def reply_row(target: DatabaseTarget, message_id: uuid.UUID) -> dict[str, Any] | None:
    engine = create_engine(target, pool_size=1)
    try:
        async with engine.connect() as connection:
            found = await connection.execute(REPLY_ROW, {"id": message_id})
            row = found.one_or_none()
    finally:
        await engine.dispose()
    return dict(row._mapping) if row is not None else None


async def explain_hang(
    *,
    what: str,
    received: Iterable[dict[str, Any]],
    target: DatabaseTarget,
    message_id: uuid.UUID,
    caplog: pytest.LogCaptureFixture,
    server_state: dict[str, Any],
) -> str:
    """The failure message of a wait for `what` that met the hang guard."""
    events = [(event["__typename"], event["sequence"]) for event in received]
    try:
        row: Any = await reply_row(target, message_id)
    except Exception as error:  # the report goes on without it
        row = f"unreadable: {error!r}"
    warnings = [
        f"  {record.levelname} {record.name}: {record.getMessage()}"
        + (f" [{record.exc_info[1]!r}]" if record.exc_info else "")
        for record in caplog.records
        if record.levelno >= 30
    ]
    return "\n".join(
        [
            f"{what}: nothing came within the hang guard.",
            f"events received: {events}",
            f"reply row {message_id}: {row}",
            f"server: {server_state}",
            "server warnings:",
            *(warnings or ["  (none)"]),
            "tasks:",
            *task_stacks(),
        ]
    )
