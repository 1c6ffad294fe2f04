"""An orphan's end (a reply nobody runs, finished by recovery.py) whose commit the database
made while the connection dropped before its answer: its final event is published once, by
the finish that recognizes the end as its own, never by another one."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import sqlalchemy as sa
from sqlmodel import col

from atlas_gql.ai.models import Message, MessageStatus
from atlas_gql.ai.recovery import STALE_ERROR
from atlas_gql.db.url import DatabaseTarget
from atlas_gql.ids import encode_global_id
from atlas_gql.logs.models import ApiUsageLog
from tests.ai.conftest import AIServer, StartServer
from tests.ai.tcp_proxy import CommitCutProxy
from tests.ai.test_lifecycle import orphan_reply
from tests.ai.test_replies import rows, uuid_of
from tests.ai.test_resilience import ai_runtime
from tests.conftest import NO_PERIODIC_SWEEP
from tests.live import FINAL_TYPES


async def orphan_behind_a_cut(
    start_ai_server: StartServer, live_database: DatabaseTarget, pg_cut: CommitCutProxy
) -> tuple[AIServer, str, Message]:
    """A server whose connections go through `pg_cut` (no periodic sweep), a thread, and an
    IN_PROGRESS reply of it that nobody runs (stale: its heartbeat an hour old), with the cut
    armed for the transaction that finishes it INCOMPLETE (the only one to carry its error
    text, a bound parameter)."""
    through_proxy = live_database.url.set(host="127.0.0.1", port=pg_cut.port)
    ai = await start_ai_server(
        database_url=through_proxy.render_as_string(hide_password=False), **NO_PERIODIC_SWEEP
    )
    thread_id = await ai.new_thread()
    orphan = await orphan_reply(ai, thread_id, age=timedelta(hours=2))
    pg_cut.arm(STALE_ERROR.encode())
    return ai, thread_id, orphan


async def test_an_orphan_finished_before_its_connection_dropped_still_publishes_its_end(
    start_ai_server: StartServer, live_database: DatabaseTarget, pg_cut: CommitCutProxy
) -> None:
    ai, thread_id, orphan = await orphan_behind_a_cut(start_ai_server, live_database, pg_cut)
    recovery = ai_runtime(ai).recovery
    orphan_id = encode_global_id("Message", orphan.id)
    async with ai.client.subscribe(ai.people.member, thread_id, after_sequence=None) as live:
        # The finish commits in the database; its connection drops before the answer.
        assert await recovery.sweep_stale_replies() == 1
        assert pg_cut.cut.is_set()
        [final] = await live.until_final()
        assert (final["__typename"], final["messageId"]) == ("MessageFailed", orphan_id)
        assert final["message"] == {
            "id": orphan_id, "status": "INCOMPLETE", "content": "half an ans",
            "error": STALE_ERROR,
        }  # fmt: skip
        # A later sweep finds the message final: nothing to do, nothing published.
        assert await recovery.sweep_stale_replies() == 0
        second = (await ai.send(thread_id, "second"))["data"]["sendMessage"]
        after = await live.until_final()
    # Once: the next exchange's events follow, without a second final event of the orphan.
    assert [event["messageId"] for event in after if event["__typename"] in FINAL_TYPES] == [
        second["assistantMessage"]["id"]
    ]
    assert final["sequence"] < after[0]["sequence"]
    # Its text counted once (estimated), by the finish that the retry recognized as its own.
    usage = await rows(ai, sa.select(ApiUsageLog).where(col(ApiUsageLog.message_id) == orphan.id))
    assert [row.status for row in usage] == ["incomplete_estimated"]


async def test_two_finishes_of_one_orphan_publish_one_end_when_a_commit_answer_is_lost(
    start_ai_server: StartServer, live_database: DatabaseTarget, pg_cut: CommitCutProxy
) -> None:
    ai, thread_id, orphan = await orphan_behind_a_cut(start_ai_server, live_database, pg_cut)
    recovery = ai_runtime(ai).recovery
    thread_uuid = uuid_of(thread_id)
    async with ai.client.subscribe(ai.people.member, thread_id, after_sequence=None) as live:
        # Two finishes at once (in one worker: told apart by their own marks, not by the
        # worker's id). One wins the row; its commit's answer is lost (the first commit that
        # carries the error text is cut); the other finds the message final.
        await asyncio.gather(
            *[
                recovery.finish_orphan(
                    message_id=orphan.id, thread_id=thread_uuid, status=MessageStatus.INCOMPLETE
                )
                for _ in range(2)
            ]
        )
        assert pg_cut.cut.is_set()
        [final] = await live.until_final()
        assert final["message"]["status"] == "INCOMPLETE"
        second = (await ai.send(thread_id, "second"))["data"]["sendMessage"]
        after = await live.until_final()
    assert [event["messageId"] for event in after if event["__typename"] in FINAL_TYPES] == [
        second["assistantMessage"]["id"]
    ]
    usage = await rows(ai, sa.select(ApiUsageLog).where(col(ApiUsageLog.message_id) == orphan.id))
    assert len(usage) == 1
