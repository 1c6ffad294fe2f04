"""An exchange's rows in one statement (issue 14 part 3, branch `start3`).

sendMessage, editMessage and regenerateMessage end by storing their new messages (the
question, the reply), their activity row and the thread's new leaf and event mark. The ORM's
unit of work wrote them as three statements (the messages' INSERT, the activity row's INSERT,
the thread's UPDATE) at ~2.5 ms of Python per send. `flush_exchange` writes the same rows
with the same values in ONE statement (`WITH` the two INSERTs, then the UPDATE of the thread,
built once per shape), then makes the objects the session's persistent rows as a flush would
(their history reset; the thread's `updated_at` as the database set it). When the session holds
anything else to write (a file attached to the question, another changed row), the ORM flushes
it all, as before.

The same statement reads the budgets the reply is held to (`reply_reads.budgets_spent`): the
thread's locked read took their locks, so this later statement's snapshot holds what the
transactions it waited for committed (docs/ai.md, "Cheaper reply starts, sixth pass")."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from atlas_gql.ai.models import Message, Thread
from atlas_gql.ai.reply_reads import BudgetsSpent, SpentOf, budgets_spent
from atlas_gql.db.driver import DriverStatement, fetch_in_transaction
from atlas_gql.db.tables import table_of
from atlas_gql.logs.models import ActivityLog


# (table column, mapped attribute) of each table written here.
def _mapped_columns(model: type[Any]) -> list[tuple[sa.Column[Any], str]]:
    """(table column, attribute) of what the ORM writes of `model` (not a column the database
    computes, nor one the model does not map)."""
    table = table_of(model)
    return [
        (column, prop.key)
        for prop in sa.inspect(model).column_attrs
        for column in prop.columns[:1]
        if isinstance(column, sa.Column) and column.table is table and column.computed is None
    ]


_MESSAGE_COLUMNS = _mapped_columns(Message)
_ACTIVITY_COLUMNS = _mapped_columns(ActivityLog)
_THREAD_KEYS = {key: column.name for column, key in _mapped_columns(Thread)}

# One statement per shape: (number of new messages, the thread's changed attributes, the
# budgets read: `SpentOf.shape`, None for none).
_STATEMENTS: dict[tuple[int, tuple[str, ...], tuple[bool, bool] | None], DriverStatement] = {}


def _statement(
    messages: int, changed: tuple[str, ...], budgets: tuple[bool, bool] | None
) -> DriverStatement:
    shape = (messages, changed, budgets)
    statement = _STATEMENTS.get(shape)
    if statement is not None:
        return statement
    message_table, activity_table, threads = (
        table_of(Message),
        table_of(ActivityLog),
        table_of(Thread),
    )
    # One INSERT per message: a multi-row VALUES is not cached by SQLAlchemy (it would be
    # compiled again at every send).
    inserted = [
        sa.insert(message_table)
        .values(
            {
                column.name: sa.bindparam(f"m{n}_{column.name}", type_=column.type)
                for column, _ in _MESSAGE_COLUMNS
            }
        )
        .cte(f"exchange_message_{n}")
        for n in range(messages)
    ]
    activity_values = {
        column.name: sa.bindparam(f"a_{column.name}", type_=column.type)
        for column, _ in _ACTIVITY_COLUMNS
    }
    recorded = sa.insert(activity_table).values(activity_values).cte("exchange_activity")
    values: dict[str, Any] = {
        name: sa.bindparam(f"t_{name}", type_=threads.c[name].type)
        for name in (_THREAD_KEYS[key] for key in changed)
    }
    # What the ORM's UPDATE of a thread sets too (its `onupdate`).
    values["updated_at"] = sa.func.now()
    updated = (
        sa.update(threads)
        .where(threads.c.id == sa.bindparam("t_id", type_=threads.c.id.type))
        .values(values)
        .returning(threads.c.updated_at)
    )
    if budgets is None:
        statement = DriverStatement.of(updated.add_cte(*inserted, recorded))
    else:
        # The budgets' reads after the thread's new `updated_at`: one row each (aggregates).
        # The statement's snapshot does not hold its own new rows, nor needs to (`spent`
        # counts the reply it stores out).
        thread_row = updated.cte("exchange_thread")
        read = budgets_spent(project=budgets[0], user=budgets[1], first=[thread_row])
        statement = DriverStatement.of(read.add_cte(*inserted, recorded))
    _STATEMENTS[shape] = statement
    return statement


def _thread_changes(thread: Thread) -> dict[str, Any] | None:
    """The thread's changed attributes (key: new value); None if a change is not a plain
    column value (the ORM's flush then writes it)."""
    state = sa.inspect(thread)
    changes: dict[str, Any] = {}
    for key, name in _THREAD_KEYS.items():
        history = state.attrs[key].history
        if not history.added:
            continue
        [value] = history.added
        if isinstance(value, sa.ClauseElement) or name == "updated_at":
            return None
        changes[key] = value
    return changes


def _complete(row: Any, columns: list[tuple[sa.Column[Any], str]]) -> bool:
    """Every column's attribute set, and none None where the column has a default (the ORM
    leaves such a column out of its INSERT, so the default applies: its flush handles that)."""
    values = row.__dict__
    return all(
        key in values
        and (values[key] is not None or (column.server_default is None and column.default is None))
        for column, key in columns
    )


async def flush_exchange(
    db: AsyncSession, *, thread: Thread, activity: ActivityLog, spent: SpentOf | None = None
) -> BudgetsSpent | None:
    """Write what the exchange added to `db` (its new messages, `activity`, the changes of
    `thread`) in one statement, which also reads the budgets of `spent` (their locks held
    already: the thread's locked read took them); anything else pending: the ORM's flush, for
    all of it. The budgets read (None: none asked, or the ORM flushed: the caller reads them)."""
    messages = [row for row in db.new if isinstance(row, Message)]
    changes = _thread_changes(thread) if thread in db.dirty else None
    if (
        not messages
        or activity not in db.new
        or len(db.new) != len(messages) + 1
        or db.deleted
        or changes is None
        or any(row is not thread and db.is_modified(row) for row in db.dirty)
        or not _complete(activity, _ACTIVITY_COLUMNS)
        or not all(_complete(message, _MESSAGE_COLUMNS) for message in messages)
    ):
        await db.flush()
        return None
    parameters: dict[str, Any] = {"t_id": thread.id}
    if spent is not None:
        parameters.update(spent.parameters())
    for n, message in enumerate(messages):
        values = message.__dict__
        for column, key in _MESSAGE_COLUMNS:
            parameters[f"m{n}_{column.name}"] = values.get(key)
    values = activity.__dict__
    for column, key in _ACTIVITY_COLUMNS:
        parameters[f"a_{column.name}"] = values.get(key)
    for key, value in changes.items():
        parameters[f"t_{_THREAD_KEYS[key]}"] = value
    statement = _statement(
        len(messages), tuple(sorted(changes)), None if spent is None else spent.shape
    )
    # On the session's connection, in its transaction, with no ORM execution around it.
    [row] = await fetch_in_transaction(db, statement, parameters)
    updated_at = row[0]
    # Now stored: persistent rows of the session, as a flush leaves them (the session's own
    # step of a flush for its new rows: their identity, committed state, the transaction's
    # record of them so a rollback expunges them; expunge, `make_transient_to_detached` and
    # add cost twice as much).
    db.sync_session._register_persistent({sa.inspect(stored) for stored in (*messages, activity)})
    for key, value in changes.items():
        set_committed_value(thread, key, value)
    set_committed_value(thread, "updated_at", updated_at)
    return None if spent is None else spent.read(tuple(row)[1:])
