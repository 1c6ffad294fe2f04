"""Faults around a reply: no pooled connection held during slow uploads, a broker that is
down, the order of a failed reply's final event, and upstream error text kept from users."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import col

from atlas_gql.ai.models import Message
from atlas_gql.db.url import DatabaseTarget
from atlas_gql.logs.models import ApiUsageLog, ErrorLog, ErrorSource
from tests.ai.conftest import AIServer, StartServer
from tests.ai.diagnose import explain_hang
from tests.ai.fake_openai import Behaviour
from tests.ai.tcp_proxy import CommitCutProxy
from tests.ai.test_files import upload
from tests.ai.test_redis_broker import REDIS_URL
from tests.ai.test_replies import rows, uuid_of
from tests.conftest import NO_PERIODIC_SWEEP, error_codes
from tests.live import FINAL_TYPES, Subscription, wait_until

MESSAGE_STATE = "query($id: ID!) { node(id: $id) { ... on Message { status content error } } }"
CANCEL = "mutation($id: ID!) { cancelMessage(id: $id) { status content } }"


def ai_runtime(ai: AIServer) -> Any:
    return ai.server.app.state.atlas["services"].ai


async def message_state(ai: AIServer, message_id: str) -> dict[str, Any]:
    data = await ai.client.data(MESSAGE_STATE, {"id": message_id}, token=ai.people.member)
    node: dict[str, Any] = data["node"]
    return node


async def broker_down(*args: Any, **kwargs: Any) -> None:
    raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")


# -- no pooled connection is held while the upstream works ---------------------------------


async def test_slow_uploads_and_deletes_hold_no_database_connection(
    start_ai_server: StartServer,
) -> None:
    # Nothing else of the app takes a connection meanwhile (its reply sweep does not run).
    ai = await start_ai_server(**NO_PERIODIC_SWEEP)
    pool = ai.server.app.state.atlas["runtime"].engine.pool
    gate = ai.fake.gates["upload"] = asyncio.Event()
    uploads = [
        asyncio.create_task(upload(ai, f"slow file {index}".encode(), token=ai.people.member))
        for index in range(3)
    ]
    await wait_until(lambda: ai.fake.waiting == 3)
    # Three uploads wait on the upstream; none of them keeps a connection from the pool.
    assert pool.checkedout() == 0
    # Other requests are served meanwhile.
    assert (await ai.client.data("{ me { email } }", token=ai.people.member))["me"]
    gate.set()
    responses = await asyncio.gather(*uploads)
    files = [response.json()["data"]["uploadFile"] for response in responses]
    assert all(file["openaiFileId"].startswith("file-") for file in files)

    gate = ai.fake.gates["delete_file"] = asyncio.Event()
    deleting = asyncio.create_task(
        ai.client.data(
            "mutation($id: ID!) { deleteFile(id: $id) }", {"id": files[0]["id"]},
            token=ai.people.member,
        )
    )  # fmt: skip
    await wait_until(lambda: ai.fake.waiting == 1)
    assert pool.checkedout() == 0
    gate.set()
    assert (await deleting)["deleteFile"] == files[0]["id"]


# -- a broker that is down does not fail the mutation or stall the thread ------------------


async def test_send_and_cancel_work_while_the_broker_is_down(
    ai: AIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    thread_id = await ai.new_thread()
    monkeypatch.setattr(ai_runtime(ai).broker, "publish", broker_down)

    body = await ai.send(thread_id, "Anyone there?")
    assert "errors" not in body, body
    reply_id = body["data"]["sendMessage"]["assistantMessage"]["id"]
    # The reply runs (nobody hears it live) and is stored complete.
    await wait_until(
        lambda: _status_is(ai, reply_id, "COMPLETED"),
    )
    assert (await message_state(ai, reply_id))["content"] == "Hello, this is ATLAS."

    # The thread is free for the next exchange, which a cancel stops.
    # One delta, then the upstream holds (`delta_permits`): the reply is still running when
    # the test acts, however slow the machine (a 10 s reply was a bet on the clock).
    ai.fake.delta_permits = asyncio.Semaphore(1)
    ai.fake.then(Behaviour(deltas=tuple(f"w{i} " for i in range(200))))
    body = await ai.send(thread_id, "A long one")
    assert "errors" not in body, body
    reply_id = body["data"]["sendMessage"]["assistantMessage"]["id"]
    await wait_until(lambda: ai.fake.open_streams == 1)
    cancelled = await ai.client.data(CANCEL, {"id": reply_id}, token=ai.people.member)
    assert cancelled["cancelMessage"]["status"] == "CANCELLED"
    await wait_until(lambda: ai.fake.open_streams == 0)
    ai.fake.delta_permits = None

    monkeypatch.undo()
    async with ai.client.subscribe(ai.people.member, thread_id, after_sequence=None) as sub:
        assert "errors" not in await ai.send(thread_id, "Back to normal")
        events = await sub.until_final()
    assert events[-1]["__typename"] == "MessageCompleted"


async def _status_is(ai: AIServer, message_id: str, status: str) -> bool:
    return bool((await message_state(ai, message_id))["status"] == status)


async def test_cancel_through_another_worker_when_the_control_channel_is_down(
    start_ai_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await start_ai_server(redis_url=REDIS_URL)
    second = await start_ai_server(redis_url=REDIS_URL)
    # One delta, then the upstream holds (`delta_permits`): the reply is still running when
    # the test acts, however slow the machine (a 10 s reply was a bet on the clock).
    first.fake.delta_permits = asyncio.Semaphore(1)
    first.fake.then(Behaviour(deltas=tuple(f"r{i} " for i in range(200))))
    thread_id = await first.new_thread()
    monkeypatch.setattr(ai_runtime(second).broker, "publish_control", broker_down)
    async with first.client.subscribe(first.people.member, thread_id) as subscription:
        payload = (await first.send(thread_id))["data"]["sendMessage"]
        while (await subscription.event())["__typename"] != "MessageDelta":
            pass
        body = await second.client.gql(
            CANCEL, {"id": payload["assistantMessage"]["id"]}, token=second.people.manager
        )
        events = await subscription.until_final()
    assert "errors" not in body, body
    assert body["data"]["cancelMessage"]["status"] == "CANCELLED"
    assert events[-1]["__typename"] == "MessageCancelled"
    assert events[-1]["message"]["status"] == "CANCELLED"
    # The background response is cancelled upstream by the worker that finished the message,
    # and the worker running it stops (its stream ends, or at its next heartbeat or
    # checkpoint it finds the message no longer IN_PROGRESS).
    [response_id] = list(first.fake.responses)
    await wait_until(lambda: first.fake.calls(f"/v1/responses/{response_id}/cancel"))
    await wait_until(lambda: not ai_runtime(first).replies, timeout=60)
    assert first.fake.open_streams == 0


# -- a failed reply's final event goes out before the next exchange can start --------------


async def test_final_event_of_a_failed_reply_precedes_the_next_exchange(ai: AIServer) -> None:
    ai.fake.then(Behaviour(kind="http_error", status=400))
    thread_id = await ai.new_thread()
    sessionmaker = ai.server.app.state.atlas["runtime"].sessionmaker
    async with ai.client.subscribe(ai.people.member, thread_id) as subscription:
        # Writing the ErrorLog row is slow (its table is locked).
        async with sessionmaker() as locker:
            await locker.execute(sa.text("LOCK TABLE error_logs IN EXCLUSIVE MODE"))

            async def insert_waits() -> bool:
                async with sessionmaker() as db:
                    waiting = await db.scalar(
                        sa.text(
                            "SELECT count(*) FROM pg_locks WHERE NOT granted "
                            "AND relation = 'error_logs'::regclass"
                        )
                    )
                return bool(waiting)

            first = (await ai.send(thread_id, "first"))["data"]["sendMessage"]
            await wait_until(insert_waits)
            # Meanwhile the thread still has its reply running: no new exchange yet.
            second = await ai.send(thread_id, "second")
            await locker.rollback()
        events = await subscription.until_final()
    assert error_codes(second) == ["CONFLICT"]
    final = events[-1]
    assert final["__typename"] == "MessageFailed"
    assert final["messageId"] == first["assistantMessage"]["id"]
    sequences = [event["sequence"] for event in events]
    assert sequences == sorted(set(sequences))
    assert "errors" not in await ai.send(thread_id, "third")


# -- the final event goes out when the final commit's answer is lost -----------------------


async def until_final_explained(
    live: Subscription,
    ai: AIServer,
    *,
    thread_id: str,
    reply_id: str,
    target: DatabaseTarget,
    pg_cut: CommitCutProxy,
    caplog: pytest.LogCaptureFixture,
) -> list[dict[str, Any]]:
    """`live.until_final()`; when it meets the hang guard, a failure that says what came, what
    the database holds, what the server logged and where its tasks wait (tests/ai/diagnose.py)."""
    received = len(live.received)
    try:
        return await live.until_final()
    except TimeoutError:
        runtime = ai_runtime(ai)
        state = {
            "worker": str(runtime.worker_id),
            "cut": pg_cut.cut.is_set(),
            "proxy connections": pg_cut.connections,
            "replies running": [str(message_id) for message_id in runtime.replies],
            "pool": ai.server.app.state.atlas["runtime"].engine.pool.status(),
            "listeners": runtime.broker.listeners.total(uuid_of(thread_id)),
        }
        report = await explain_hang(
            what=f"the final event of reply {reply_id}",
            received=live.received[received:],
            target=target,
            message_id=uuid_of(reply_id),
            caplog=caplog,
            server_state=state,
        )
    pytest.fail(report)


async def test_a_reply_committed_before_its_connection_dropped_still_publishes_its_end(
    start_ai_server: StartServer,
    live_database: DatabaseTarget,
    pg_cut: CommitCutProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    through_proxy = live_database.url.set(host="127.0.0.1", port=pg_cut.port)
    ai = await start_ai_server(database_url=through_proxy.render_as_string(hide_password=False))
    thread_id = await ai.new_thread()
    # The reply's final transaction (the one writing its usage row) commits in the database,
    # and its connection drops before the worker reads the answer.
    # Its INSERT only: a budget read of sendMessage (a budget set on the project or on the
    # sender) names the table too, and its COMMIT would be cut instead.
    pg_cut.arm(b"INSERT INTO api_usage_logs")
    async with ai.client.subscribe(ai.people.member, thread_id, after_sequence=None) as live:
        body = await ai.send(thread_id, "first")
        assert "errors" not in body, (body, [record.getMessage() for record in caplog.records])
        first = body["data"]["sendMessage"]
        reply_id = first["assistantMessage"]["id"]
        events = await until_final_explained(
            live, ai, thread_id=thread_id, reply_id=reply_id, target=live_database,
            pg_cut=pg_cut, caplog=caplog,
        )  # fmt: skip
        assert pg_cut.cut.is_set()
        assert (events[-1]["__typename"], events[-1]["messageId"]) == (
            "MessageCompleted", reply_id
        )  # fmt: skip
        assert events[-1]["message"]["content"] == "Hello, this is ATLAS."
        assert (await message_state(ai, reply_id))["status"] == "COMPLETED"
        # Once: the next exchange's events follow, without a second final event before them.
        second = (await ai.send(thread_id, "second"))["data"]["sendMessage"]
        after = await live.until_final()
    assert [event["messageId"] for event in after if event["__typename"] in FINAL_TYPES] == [
        second["assistantMessage"]["id"]
    ]
    # A subscriber resuming after the first exchange started sees its end once too.
    async with ai.client.subscribe(
        ai.people.member, thread_id, after_sequence=first["afterSequence"]
    ) as resumed:
        replayed = await resumed.until_final()
        replayed += await resumed.until_final()
    finals = [event["messageId"] for event in replayed if event["__typename"] in FINAL_TYPES]
    assert finals == [reply_id, second["assistantMessage"]["id"]]
    # One usage row: the retry did not store the reply twice.
    usage = await rows(
        ai, sa.select(ApiUsageLog).where(col(ApiUsageLog.message_id) == uuid_of(reply_id))
    )
    assert len(usage) == 1


# -- upstream error text never reaches users -------------------------------------------------

LEAKED_KEY = "sk-test-Zx81abcDEF0123456789"
MASKED_KEY = "sk-proj-************Q7xZ"


async def test_upstream_401_text_with_a_key_stays_out_of_messages_and_events(
    ai: AIServer,
) -> None:
    ai.fake.then(
        Behaviour(
            kind="http_error",
            status=401,
            request_id="req_401",
            error_message=(
                f"Incorrect API key provided: {LEAKED_KEY} (also known as {MASKED_KEY}). "
                "You can find your API key at https://platform.openai.com/account/api-keys."
            ),
        )
    )
    thread_id = await ai.new_thread()
    async with ai.client.subscribe(ai.people.member, thread_id) as subscription:
        payload = (await ai.send(thread_id, "Hello?"))["data"]["sendMessage"]
        events = await subscription.until_final()
    reply_id = payload["assistantMessage"]["id"]
    expected = "The AI provider returned an error (HTTP 401)."
    final = events[-1]
    assert final["__typename"] == "MessageFailed"
    assert final["error"] == expected
    assert final["message"]["error"] == expected
    assert (await message_state(ai, reply_id))["error"] == expected
    [stored] = await rows(ai, sa.select(Message).where(col(Message.id) == uuid_of(reply_id)))
    assert stored.error == expected
    # Not retried: a 401 will not get better.
    assert len(ai.fake.calls("/v1/responses")) == 1

    [logged] = await rows(ai, sa.select(ErrorLog).where(col(ErrorLog.path).contains(reply_id)))
    assert logged.source is ErrorSource.UPSTREAM
    assert (logged.upstream_status, logged.upstream_request_id) == (401, "req_401")
    assert "Incorrect API key provided" in logged.message
    row_text = json.dumps(
        [logged.message, logged.details, logged.stack, logged.error_type], default=str
    )
    event_text = json.dumps(events)
    for secret in (LEAKED_KEY, "Zx81abcDEF", "Q7xZ"):
        assert secret not in row_text
        assert secret not in event_text
        assert secret not in (stored.error or "")


@pytest.mark.parametrize(
    ("behaviour", "timeout", "status", "error"),
    [
        # The failures the upstream reports come long before the generous timeout (on a
        # loaded machine, 0.5 s turned a slow first event into "timed out").
        (Behaviour(kind="abort", deltas_before_failure=2), 30.0, "INCOMPLETE",
         "The connection to the AI provider was cut."),
        (Behaviour(kind="failed", deltas_before_failure=2), 30.0, "FAILED",
         "The AI provider could not complete the reply."),
        (Behaviour(kind="error_event", deltas_before_failure=1), 30.0, "FAILED",
         "The AI provider reported an error."),
        # Silent for 20 times the timeout: only the timeout can end it.
        (Behaviour(delay=10.0, deltas=("late",)), 0.5, "FAILED", "The reply timed out."),
    ],
    ids=["abort", "failed", "error_event", "timeout"],
)  # fmt: skip
@pytest.mark.parametrize("client", ["aiohttp", "httpx"])
async def test_users_read_a_generic_message_per_failure_kind(
    start_ai_server: StartServer,
    behaviour: Behaviour,
    timeout: float,
    status: str,
    error: str,
    client: str,
) -> None:
    # A foreground response (a background one is read again after a cut or a timeout:
    # tests/ai/test_background.py), over either transport (each reads the body its own way).
    ai = await start_ai_server(
        atlas_openai_timeout=timeout,
        atlas_openai_background=False,
        atlas_openai_http_client=client,
    )
    ai.fake.then(*[behaviour] * 3)
    thread_id = await ai.new_thread()
    async with ai.client.subscribe(ai.people.member, thread_id) as subscription:
        payload = (await ai.send(thread_id))["data"]["sendMessage"]
        final = (await subscription.until_final(timeout=30))[-1]
    assert (final["message"]["status"], final["error"]) == (status, error)
    reply_id = payload["assistantMessage"]["id"]
    [logged] = await rows(ai, sa.select(ErrorLog).where(col(ErrorLog.path).contains(reply_id)))
    # The upstream's own account is in the ErrorLog row.
    assert logged.message
    assert logged.message != error
