"""Migrations build every table from empty, `alembic check` is clean, downgrade removes all."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from alembic.util.exc import CommandError

from atlas_gql.db.engine import _asyncpg_dsn
from atlas_gql.db.migrate import check_models_match, downgrade_to_base, upgrade_to_head
from atlas_gql.db.url import DatabaseTarget

TABLES = {
    "users",
    "sessions",
    "refresh_tokens",
    "roles",
    "permissions",
    "user_roles",
    "role_permissions",
    "projects",
    "project_members",
    "project_settings",
    "assistants",
    "threads",
    "messages",
    "files",
    "file_associations",
    "activity_logs",
    "api_keys",
    "api_usage_logs",
    "error_logs",
    "rate_limit_buckets",
    "message_ratings",
}
UNIQUE_KEYS = {
    ("users", "lower((email)::text)"),
    ("sessions", "token_hash"),
    ("refresh_tokens", "token_hash"),
    ("roles", "name"),
    ("permissions", "name"),
    ("user_roles", "user_id, role_id"),
    ("role_permissions", "role_id, permission_id"),
    ("project_members", "project_id, user_id"),
    ("project_settings", "project_id, setting_key"),
    ("threads", "openai_thread_id"),
    ("messages", "openai_message_id"),
    ("files", "openai_file_id"),
    ("file_associations", "file_id, associable_type, associable_id"),
    ("message_ratings", "message_id, user_id"),
}


async def _fetch(target: DatabaseTarget, query: str) -> list[Any]:
    conn = await asyncpg.connect(**_asyncpg_dsn(target, target.database))
    try:
        return list(await conn.fetch(query))
    finally:
        await conn.close()


def _tables(target: DatabaseTarget, schema: str = "public") -> set[str]:
    rows = asyncio.run(
        _fetch(target, f"SELECT tablename FROM pg_tables WHERE schemaname = '{schema}'")
    )
    return {row["tablename"] for row in rows} - {"alembic_version"}


def _unique_keys(target: DatabaseTarget) -> set[tuple[str, str]]:
    rows = asyncio.run(
        _fetch(
            target,
            """
            SELECT t.relname AS table_name,
                   pg_get_indexdef(i.indexrelid) AS definition
            FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid
            JOIN pg_namespace n ON n.oid = t.relnamespace
            WHERE i.indisunique AND NOT i.indisprimary AND n.nspname = 'public'
            """,
        )
    )
    keys = set()
    for row in rows:
        columns = row["definition"].split(" USING btree (", 1)[1].removesuffix(")")
        keys.add((row["table_name"], columns))
    return keys


def _foreign_keys_without_index(target: DatabaseTarget) -> list[str]:
    rows = asyncio.run(
        _fetch(
            target,
            """
            SELECT c.conrelid::regclass::text AS table_name, a.attname AS column_name
            FROM pg_constraint c
            JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
            WHERE c.contype = 'f' AND NOT EXISTS (
                SELECT 1 FROM pg_index i
                WHERE i.indrelid = c.conrelid AND i.indkey[0] = c.conkey[1]
            )
            """,
        )
    )
    return [f"{row['table_name']}.{row['column_name']}" for row in rows]


def upgraded_from(make_database: Any, revision: str, change: str) -> DatabaseTarget:
    """A seeded database taken back to `revision`, changed there by the SQL `change` (rows as
    they were before the next migrations), then upgraded to head again."""
    from alembic import command

    from atlas_gql.db.migrate import alembic_config
    from tests.conftest import migrated_and_seeded

    target = migrated_and_seeded(make_database, "atlas_backfill")
    command.downgrade(alembic_config(target), revision)
    asyncio.run(_fetch(target, change))
    upgrade_to_head(target)
    return target


def test_upgrade_from_empty_builds_all_tables_and_indexes(make_database: Any) -> None:
    target = make_database("atlas_migrate")
    assert _tables(target) == set()
    upgrade_to_head(target)
    assert _tables(target) == TABLES
    assert _unique_keys(target) >= UNIQUE_KEYS
    assert _foreign_keys_without_index(target) == []
    check_models_match(target)  # `alembic check`: raises when models and migrations differ
    downgrade_to_base(target)
    assert _tables(target) == set()


def test_alembic_check_detects_drift(make_database: Any) -> None:
    target = make_database("atlas_drift")
    upgrade_to_head(target)
    asyncio.run(_fetch(target, "ALTER TABLE users ADD COLUMN nickname text"))
    with pytest.raises(CommandError):
        check_models_match(target)


def test_schema_parameter_becomes_search_path(make_database: Any) -> None:
    base = make_database("atlas_schema")
    target = DatabaseTarget(
        url=base.url,
        schema="tenant_a",
        connect_args={"server_settings": {"search_path": '"tenant_a",public'}},
    )
    upgrade_to_head(target)  # creates the schema when missing, as prisma migrate would
    assert _tables(base, "tenant_a") == TABLES
    assert _tables(base, "public") == set()


def test_message_authors_migration_backfills_replies_and_running_cursors(
    make_database: Any,
) -> None:
    """0004: earlier replies get their thread's assistant; a running background reply gets the
    event number where its saved text ends."""
    target = upgraded_from(
        make_database,
        "0003_resumable_replies",
        "UPDATE messages SET status = 'IN_PROGRESS', event_sequence_base = 40, "
        "upstream_sequence = 2 WHERE id = (SELECT id FROM messages WHERE role = 'ASSISTANT' "
        "ORDER BY created_at DESC LIMIT 1)",
    )
    rows = asyncio.run(
        _fetch(
            target,
            "SELECT m.role, m.status, m.assistant_id, t.assistant_id AS thread_assistant, "
            "m.content_sequence FROM messages m JOIN threads t ON t.id = m.thread_id",
        )
    )
    replies = [row for row in rows if row["role"] == "ASSISTANT"]
    assert replies
    assert all(row["assistant_id"] == row["thread_assistant"] for row in replies)
    assert all(row["assistant_id"] is None for row in rows if row["role"] != "ASSISTANT")
    assert [row["content_sequence"] for row in rows if row["status"] == "IN_PROGRESS"] == [42]
    assert all(row["content_sequence"] is None for row in rows if row["status"] != "IN_PROGRESS")


def test_message_search_migration_indexes_existing_messages_but_running_replies(
    make_database: Any,
) -> None:
    """0008 (search): the seeded messages get their vector when the column is added; a reply
    IN_PROGRESS gets none until it ends, and the vector follows the text."""
    target = upgraded_from(
        make_database,
        "0007_tools",
        "UPDATE messages SET status = 'IN_PROGRESS', content = 'half a reply' WHERE id = "
        "(SELECT id FROM messages WHERE role = 'ASSISTANT' ORDER BY created_at DESC LIMIT 1)",
    )
    vectors = "SELECT status, search_vector::text AS vector FROM messages"
    rows = asyncio.run(_fetch(target, vectors))
    assert [row["vector"] for row in rows if row["status"] == "IN_PROGRESS"] == [None]
    assert all(row["vector"] for row in rows if row["status"] != "IN_PROGRESS")
    asyncio.run(
        _fetch(
            target,
            "UPDATE messages SET status = 'COMPLETED', content = 'Whales were singing' "
            "WHERE status = 'IN_PROGRESS'",
        )
    )
    rows = asyncio.run(_fetch(target, vectors))
    assert "'sing':3 'whale':1" in [row["vector"] for row in rows]


def test_message_tree_migration_chains_linear_threads(make_database: Any) -> None:
    """0006_w1 (issue 15): each message of an existing thread follows the one stored before it;
    the last one is the active leaf, and the conversation's end where the thread has one."""
    from alembic import command
    from alembic.script import ScriptDirectory

    from atlas_gql.db.migrate import alembic_config
    from tests.conftest import migrated_and_seeded

    target = migrated_and_seeded(make_database, "atlas_tree")
    config = alembic_config(target)
    before = ScriptDirectory.from_config(config).get_revision("0006_w1").down_revision
    assert isinstance(before, str)
    command.downgrade(config, before)
    asyncio.run(_fetch(target, "UPDATE threads SET openai_thread_id = 'conv_tree_migration'"))
    upgrade_to_head(target)
    rows = asyncio.run(
        _fetch(
            target,
            "SELECT m.id, m.parent_id, t.active_leaf_id, t.conversation_leaf_id FROM messages m "
            "JOIN threads t ON t.id = m.thread_id ORDER BY m.created_at, m.id",
        )
    )
    assert len(rows) >= 2
    assert rows[0]["parent_id"] is None
    assert [row["parent_id"] for row in rows[1:]] == [row["id"] for row in rows[:-1]]
    assert {row["active_leaf_id"] for row in rows} == {rows[-1]["id"]}
    assert {row["conversation_leaf_id"] for row in rows} == {rows[-1]["id"]}
