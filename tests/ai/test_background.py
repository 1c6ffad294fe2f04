"""Background replies: started as background responses, resumed after a cut stream, a killed
worker or a restart (by the restarted worker or another one, exactly one), cancelled
upstream; a resume that fails upstream ends the reply as any upstream failure does.

Size: over 400 lines on purpose: one scenario per way a background reply can be
interrupted and resumed, sharing the worker-process kit at the top."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from atlas_gql.ai.models import Message, MessageRole, MessageStatus, Thread
from atlas_gql.auth.account import find_user_by_email
from atlas_gql.auth.sessions import start_session
from atlas_gql.db.engine import create_engine
from atlas_gql.db.url import DatabaseTarget
from atlas_gql.ids import decode_global_id, encode_global_id
from atlas_gql.logs.models import ErrorLog, ErrorSource
from tests.ai.conftest import (
    CREATE_THREAD,
    TEST_REDIS_SUBSCRIBE_TIMEOUT,
    TEST_REDIS_TIMEOUT,
    UPSTREAM_KEY,
    AIServer,
    People,
    StartServer,
    make_people,
)
from tests.ai.fake_openai import Behaviour, FakeOpenAI, Resume
from tests.ai.test_redis_broker import REDIS_URL
from tests.conftest import NO_PERIODIC_SWEEP, error_codes, make_settings
from tests.live import AtlasClient, Subscription, finish_leftover_replies, wait_until

ROOT = Path(__file__).resolve().parents[2]
CANCEL = "mutation($id: ID!) { cancelMessage(id: $id) { status content } }"
# Long enough for a checkpoint of text (every 2 s) in the middle of it.
LONG_REPLY = tuple(f"w{index} " for index in range(150))
LONG_TEXT = "".join(LONG_REPLY)


def uuid_of(global_id: str) -> uuid.UUID:
    return decode_global_id(global_id)[1]


# -- ATLAS in a process of its own, to be killed -----------------------------------------------


class WorkerProcess:
    """`atlas-gql serve` (one worker) in a process of its own, which SIGKILL stops dead."""

    def __init__(self, env: dict[str, str], cwd: Path, log: TextIO) -> None:
        self.env = env
        self.cwd = cwd
        self.log = log
        self.port = 0
        self.process: asyncio.subprocess.Process | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/graphql"

    async def start(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "atlas_gql", "serve", "--port", str(self.port),
            cwd=self.cwd, env=self.env, stdout=self.log, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        process = self.process

        async def answers() -> bool:
            assert process.returncode is None, "the server exited; see its log"
            with contextlib.suppress(httpx.HTTPError):
                async with httpx.AsyncClient() as client:
                    return (await client.get(f"{self.http_url}/healthz")).status_code == 200
            return False

        await wait_until(answers, timeout=90)

    async def kill(self) -> None:
        """SIGKILL: nothing is finished, released or flushed."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 20)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


@pytest.fixture
async def database(
    live_database: DatabaseTarget,
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(live_database, pool_size=2)
    try:
        yield async_sessionmaker(engine, expire_on_commit=False)
    finally:
        await engine.dispose()


@pytest.fixture
async def people(
    live_database: DatabaseTarget, database: async_sessionmaker[AsyncSession]
) -> People:
    settings = make_settings(live_database)

    async def sign_in(email: str) -> str:
        async with database() as db:
            user = await find_user_by_email(db=db, email=email)
            assert user is not None
            tokens = await start_session(db=db, settings=settings, user_id=user.id)
            await db.commit()
        return tokens.access_token

    return await make_people(database, sign_in)


WorkerFactory = Callable[..., Awaitable[WorkerProcess]]


@pytest.fixture
async def start_worker(
    live_database: DatabaseTarget, fake_openai: FakeOpenAI, tmp_path: Path
) -> AsyncIterator[WorkerFactory]:
    """`await start_worker(**environment)`: a new ATLAS process against the fake OpenAI."""
    settings = make_settings(live_database)
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("ATLAS_", "DATABASE_URL", "OPENAI_", "REDIS_URL"))
    }
    assert settings.database_url is not None
    environment.update(
        DATABASE_URL=settings.database_url,
        ATLAS_ENV="development",
        ATLAS_JWT_SECRET=settings.atlas_jwt_secret,
        ATLAS_SEED_PASSWORD=settings.atlas_seed_password,
        OPENAI_API_KEY=UPSTREAM_KEY,
        OPENAI_BASE_URL=fake_openai.base_url,
        ATLAS_OPENAI_TIMEOUT="5",
        # As `start_ai_server`: Redis waits that only guard against a hung Redis.
        ATLAS_REDIS_TIMEOUT=str(TEST_REDIS_TIMEOUT),
        ATLAS_REDIS_SUBSCRIBE_TIMEOUT=str(TEST_REDIS_SUBSCRIBE_TIMEOUT),
        # A killed worker's background replies are resumed after 1 s without a heartbeat
        # (a live one beats every 1/3 s).
        ATLAS_REPLY_RESUME_AFTER="1",
        # As `make_settings`: merging deltas by how long they waited depends on how busy the
        # machine is (a subscriber whose access check took 80 ms got three deltas as one).
        ATLAS_SUBSCRIBER_MERGE_AFTER="0",
    )
    workers: list[WorkerProcess] = []
    with (tmp_path / "atlas.log").open("w") as log:

        async def start(**extra: str) -> WorkerProcess:
            worker = WorkerProcess({**environment, **extra}, tmp_path, log)
            workers.append(worker)
            await worker.start()
            return worker

        try:
            yield start
        finally:
            for worker in workers:
                await worker.stop()
            if workers:
                await finish_leftover_replies(live_database)


async def new_thread(client: AtlasClient, people: People) -> str:
    data = await client.data(
        CREATE_THREAD,
        {"input": {"projectId": people.project_id, "assistantId": people.assistant_id}},
        token=people.member,
    )
    thread_id: str = data["createThread"]["id"]
    return thread_id


async def send(client: AtlasClient, people: People, thread_id: str, content: str) -> str:
    """Post a message; the reply's id."""
    data = await client.data(
        "mutation($input: SendMessageInput!) { sendMessage(input: $input) "
        "{ assistantMessage { id } } }",
        {"input": {"threadId": thread_id, "content": content}},
        token=people.member,
    )
    reply_id: str = data["sendMessage"]["assistantMessage"]["id"]
    return reply_id


async def stored(database: async_sessionmaker[AsyncSession], reply_id: str) -> Message:
    async with database() as db:
        message = await db.get(Message, uuid_of(reply_id))
    assert message is not None
    return message


def deltas_of(events: list[dict[str, Any]]) -> str:
    return "".join(event["delta"] for event in events if event["__typename"] == "MessageDelta")


async def read_past_a_checkpoint(
    subscription: Subscription, database: async_sessionmaker[AsyncSession], reply_id: str
) -> list[dict[str, Any]]:
    """Events of the reply until a checkpoint of text was saved and three more deltas were
    published after it (published but not checkpointed: what a resume must not lose or
    repeat)."""
    events: list[dict[str, Any]] = []
    deltas = 0
    checkpoint_at: int | None = None
    while checkpoint_at is None or deltas < checkpoint_at + 3:
        event = await subscription.event()
        events.append(event)
        if event["__typename"] != "MessageDelta":
            continue
        deltas += 1
        if checkpoint_at is None and deltas % 5 == 0 and (await stored(database, reply_id)).content:
            checkpoint_at = deltas
        assert deltas < len(LONG_REPLY), "no checkpoint with text before the reply's end"
    return events


def strictly_increasing(events: list[dict[str, Any]]) -> bool:
    sequences = [event["sequence"] for event in events]
    return all(a < b for a, b in itertools.pairwise(sequences))


# -- (a) the worker running a reply is killed, then restarted --------------------------------


async def test_a_reply_survives_a_killed_and_restarted_worker(
    start_worker: WorkerFactory,
    fake_openai: FakeOpenAI,
    people: People,
    database: async_sessionmaker[AsyncSession],
) -> None:
    worker = await start_worker()
    client = AtlasClient(worker)
    thread_id = await new_thread(client, people)
    fake_openai.then(Behaviour(deltas=LONG_REPLY, delay=0.03))
    # The response holds its final events until the test has read all the text.
    fake_openai.gates["complete"] = asyncio.Event()
    async with client.subscribe(people.member, thread_id) as subscription:
        reply_id = await send(client, people, thread_id, "Tell me a long story")
        before = await read_past_a_checkpoint(subscription, database, reply_id)
        await worker.kill()
    killed = await stored(database, reply_id)
    assert killed.status is MessageStatus.IN_PROGRESS
    assert killed.upstream_sequence is not None
    # Text was published after the last checkpoint.
    assert LONG_TEXT.startswith(killed.content)
    assert len(deltas_of(before)) > len(killed.content)
    [response_id] = list(fake_openai.responses)
    assert killed.openai_response_id == response_id

    # The restarted worker resumes it (once its heartbeat is 1 s old): hold that resume
    # until a subscriber reconnected with the last number it saw.
    fake_openai.gates["resume"] = asyncio.Event()
    restarted = await start_worker()
    await wait_until(lambda: fake_openai.waiting_at.get("resume") == 1, timeout=30)
    client = AtlasClient(restarted)
    last_seen = before[-1]["sequence"]
    async with client.subscribe(people.member, thread_id, after_sequence=last_seen) as sub:
        fake_openai.gates["resume"].set()
        after: list[dict[str, Any]] = []
        while deltas_of(before) + deltas_of(after) != LONG_TEXT:
            after.append(await sub.event())
            assert len(deltas_of(before) + deltas_of(after)) <= len(LONG_TEXT), "text repeated"
        fake_openai.gates["complete"].set()
        after += await sub.until_final()
    # Every remaining delta exactly once, after what the subscriber had seen, in order.
    assert after[0]["sequence"] > last_seen
    assert strictly_increasing(before + after)
    final = after[-1]
    assert final["__typename"] == "MessageCompleted"
    assert final["message"]["content"] == deltas_of(before) + deltas_of(after) == LONG_TEXT
    finished = await stored(database, reply_id)
    assert (finished.status, finished.content) == (MessageStatus.COMPLETED, LONG_TEXT)
    # Read again from the checkpoint on (the deltas published after it were read twice).
    [resume] = fake_openai.calls(f"/v1/responses/{response_id}")
    assert resume.body == {"stream": "true", "starting_after": str(killed.upstream_sequence)}
    # One response upstream for the whole reply.
    assert len(fake_openai.calls("/v1/responses")) == 1


# -- (b) two workers: the one running the reply dies, the other resumes it ------------------


async def test_another_worker_resumes_the_reply_of_a_dead_one(
    start_worker: WorkerFactory,
    start_ai_server: StartServer,
    fake_openai: FakeOpenAI,
    database: async_sessionmaker[AsyncSession],
) -> None:
    # The survivor resumes a reply whose heartbeat is 3 s old: 9 beats of the doomed worker
    # (every 1/3 s), so a loaded machine does not make a live worker look dead.
    survivor = await start_ai_server(redis_url=REDIS_URL, atlas_reply_resume_after=3.0)
    people = survivor.people
    doomed = await start_worker(REDIS_URL=REDIS_URL)
    doomed_client = AtlasClient(doomed)
    thread_id = await new_thread(doomed_client, people)
    fake_openai.then(Behaviour(deltas=LONG_REPLY, delay=0.02))
    # The response holds its final events until the doomed worker is dead: it cannot finish
    # the reply first, however slowly the test reads.
    fake_openai.gates["complete"] = asyncio.Event()
    # A subscriber on the surviving worker all along (the reply's events reach it through
    # Redis, then from the survivor itself).
    async with survivor.client.subscribe(people.member, thread_id) as subscription:
        reply_id = await send(doomed_client, people, thread_id, "Keep going")
        events = await read_past_a_checkpoint(subscription, database, reply_id)
        await doomed.kill()
        fake_openai.gates["complete"].set()
        events += await subscription.until_final(timeout=60)
    final = events[-1]
    assert final["__typename"] == "MessageCompleted"
    # No gap, no repeat: the deltas read again after the checkpoint came with the numbers
    # they had, and the subscriber dropped them.
    assert deltas_of(events) == final["message"]["content"] == LONG_TEXT
    assert strictly_increasing(events)
    finished = await stored(database, reply_id)
    assert finished.status is MessageStatus.COMPLETED
    assert finished.reply_worker_id == survivor.server.app.state.atlas["services"].ai.worker_id
    [response_id] = list(fake_openai.responses)
    assert len(fake_openai.calls(f"/v1/responses/{response_id}")) == 1


# -- exactly one worker resumes a reply nobody runs -------------------------------------------


async def orphan(
    ai: AIServer,
    *,
    response_id: str,
    upstream_sequence: int,
    content: str = "half ",
    released: bool = True,
) -> tuple[str, Message]:
    """A background reply its worker left (released at shutdown, or gone silent): a thread,
    the user's message, the reply IN_PROGRESS with its checkpoint."""
    thread_id = await ai.new_thread()
    runtime = ai.server.app.state.atlas["runtime"]
    async with runtime.sessionmaker() as db:
        thread = await db.get(Thread, uuid_of(thread_id))
        assert thread is not None
        me = (await ai.client.data("{ me { id } }", token=ai.people.member))["me"]["id"]
        question = Message(
            thread_id=thread.id, user_id=uuid_of(me), role=MessageRole.USER,
            content="Where was I?", status=MessageStatus.COMPLETED,
        )  # fmt: skip
        db.add(question)
        await db.flush()
        thread.last_event_sequence += 100
        reply = Message(
            thread_id=thread.id,
            user_id=uuid_of(me),
            role=MessageRole.ASSISTANT,
            content=content,
            status=MessageStatus.IN_PROGRESS,
            model="gpt-4o-mini",
            openai_response_id=response_id,
            upstream_sequence=upstream_sequence,
            event_sequence_base=thread.last_event_sequence - 50 - upstream_sequence,
            reply_worker_id=None if released else uuid.uuid4(),
            heartbeat_at=datetime.now(UTC),
            created_at=datetime.now(UTC),
        )
        db.add(reply)
        await db.commit()
    return thread_id, reply


def runtime_of(ai: AIServer) -> Any:
    return ai.server.app.state.atlas["services"].ai


async def test_exactly_one_worker_resumes_a_released_reply(
    start_ai_server: StartServer, fake_openai: FakeOpenAI
) -> None:
    # No periodic sweep during the test (every half of the shortest staleness setting): a
    # sweep that came round between `orphan` and the calls below would take the released
    # reply first, on a machine slow enough.
    first = await start_ai_server(**NO_PERIODIC_SWEEP)
    second = await start_ai_server(**NO_PERIODIC_SWEEP)
    response = fake_openai.start_response(Behaviour(deltas=("one ", "two ", "three")))
    # Checkpointed after upstream event 4 (the last before the first delta).
    _, reply = await orphan(first, response_id=response.id, upstream_sequence=4)
    taken = await asyncio.gather(
        runtime_of(first).resume_reply(reply.id), runtime_of(second).resume_reply(reply.id)
    )
    assert sorted(taken) == [False, True]
    winner = first if taken[0] else second
    await wait_until(lambda: not runtime_of(winner).replies)
    assert len(fake_openai.calls(f"/v1/responses/{response.id}")) == 1
    async with runtime_of(first).sessionmaker() as db:
        finished = await db.get(Message, reply.id)
    assert finished is not None
    assert finished.status is MessageStatus.COMPLETED
    assert finished.reply_worker_id == runtime_of(winner).worker_id
    # The stored text, then what came after upstream event 4.
    assert finished.content == "half one two three"


async def test_send_message_resumes_a_reply_whose_worker_went_silent(
    start_ai_server: StartServer, fake_openai: FakeOpenAI
) -> None:
    # 10 s: far more than a loaded machine takes between the orphan's heartbeat and the
    # first send (with 1 s, the sweep resumed it first and the send found nothing running).
    ai = await start_ai_server(atlas_reply_resume_after=10.0)
    fake_openai.gates["complete"] = asyncio.Event()
    response = fake_openai.start_response(Behaviour(deltas=("a ", "b ", "c")))
    thread_id, reply = await orphan(
        ai, response_id=response.id, upstream_sequence=4, released=False
    )
    # Its worker beat a moment ago: it may be alive, so the thread is busy.
    assert error_codes(await ai.send(thread_id)) == ["CONFLICT"]
    async with runtime_of(ai).sessionmaker() as db:
        await db.execute(
            sa.update(Message)
            .where(col(Message.id) == reply.id)
            .values(heartbeat_at=sa.func.now() - sa.text("interval '60 seconds'"))
        )
        await db.commit()
    # Silent for longer than ATLAS_REPLY_RESUME_AFTER: this worker resumes it (and the
    # thread is still busy).
    assert error_codes(await ai.send(thread_id)) == ["CONFLICT"]
    async with ai.client.subscribe(ai.people.member, thread_id, after_sequence=0) as sub:
        events: list[dict[str, Any]] = []
        while deltas_of(events) != "a b c":
            events.append(await sub.event())
        fake_openai.gates["complete"].set()
        events += await sub.until_final()
    assert events[-1]["message"]["content"] == "half a b c"
    assert strictly_increasing(events)
    assert "errors" not in await ai.send(thread_id, "And now?")


# -- a stream cut while the worker lives is read again ---------------------------------------


async def test_a_cut_stream_is_read_again_from_the_last_event(ai: AIServer) -> None:
    deltas = tuple(f"p{index} " for index in range(20))
    ai.fake.then(Behaviour(deltas=deltas, disconnect_after=5))
    thread_id = await ai.new_thread()
    async with ai.client.subscribe(ai.people.member, thread_id) as subscription:
        await ai.send(thread_id)
        events = await subscription.until_final()
    assert events[-1]["__typename"] == "MessageCompleted"
    assert deltas_of(events) == events[-1]["message"]["content"] == "".join(deltas)
    assert strictly_increasing(events)
    [response_id] = list(ai.fake.responses)
    [resume] = ai.fake.calls(f"/v1/responses/{response_id}")
    fifth_delta = [
        number for number, chunk in ai.fake.responses[response_id].events
        if b"output_text.delta" in chunk[:40]
    ][4]  # fmt: skip
    assert resume.body["starting_after"] == str(fifth_delta)


# -- a clean restart hands the reply over at once -----------------------------------------------


async def test_a_clean_shutdown_releases_the_reply_for_the_next_worker(
    start_ai_server: StartServer,
    fake_openai: FakeOpenAI,
    database: async_sessionmaker[AsyncSession],
) -> None:
    ai = await start_ai_server()
    fake_openai.gates["complete"] = asyncio.Event()
    text = "".join(f"r{i} " for i in range(10))
    fake_openai.then(Behaviour(deltas=tuple(f"r{i} " for i in range(10))))
    thread_id = await ai.new_thread()
    async with ai.client.subscribe(ai.people.member, thread_id) as subscription:
        reply_id = (await ai.send(thread_id))["data"]["sendMessage"]["assistantMessage"]["id"]
        events: list[dict[str, Any]] = []
        while deltas_of(events) != text:
            events.append(await subscription.event())
        await ai.server.stop()
    released = await stored(database, reply_id)
    assert released.status is MessageStatus.IN_PROGRESS
    assert released.reply_worker_id is None
    assert released.content == text
    # The next worker takes it at start, without waiting for the heartbeat to age.
    successor = await start_ai_server()
    fake_openai.gates["complete"].set()

    async def completed() -> bool:
        return (await stored(database, reply_id)).status is MessageStatus.COMPLETED

    await wait_until(completed)
    finished = await stored(database, reply_id)
    assert finished.content == text
    assert finished.reply_worker_id == runtime_of(successor).worker_id


# -- (c) cancel stops the response upstream ---------------------------------------------------


async def test_cancelling_a_background_reply_cancels_it_upstream(ai: AIServer) -> None:
    # One delta, then the upstream holds (`delta_permits`): the reply is still running when
    # the test acts, however slow the machine (a 10 s reply was a bet on the clock).
    ai.fake.delta_permits = asyncio.Semaphore(1)
    ai.fake.then(Behaviour(deltas=tuple(f"c{i} " for i in range(200))))
    thread_id = await ai.new_thread()
    async with ai.client.subscribe(ai.people.member, thread_id) as subscription:
        reply_id = (await ai.send(thread_id))["data"]["sendMessage"]["assistantMessage"]["id"]
        while (await subscription.event())["__typename"] != "MessageDelta":
            pass
        body = await ai.client.data(CANCEL, {"id": reply_id}, token=ai.people.member)
        events = await subscription.until_final()
    assert body["cancelMessage"]["status"] == "CANCELLED"
    assert events[-1]["message"]["status"] == "CANCELLED"
    [create] = ai.fake.calls("/v1/responses")
    assert (create.body["background"], create.body["stream"]) == (True, True)
    [response_id] = list(ai.fake.responses)
    await wait_until(lambda: ai.fake.calls(f"/v1/responses/{response_id}/cancel"))
    assert ai.fake.responses[response_id].status == "cancelled"


# -- (d) the resume fails upstream ------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "status", "error", "http_status"),
    [
        ("gone", "FAILED", "The AI provider returned an error (HTTP 404).", 404),
        ("http_500", "FAILED", "The AI provider returned an error (HTTP 500).", 500),
        ("cut", "INCOMPLETE", "The connection to the AI provider was cut.", None),
    ],
)
async def test_a_resume_that_fails_upstream_ends_the_reply(
    start_ai_server: StartServer,
    fake_openai: FakeOpenAI,
    database: async_sessionmaker[AsyncSession],
    fault: str,
    status: str,
    error: str,
    http_status: int | None,
) -> None:
    ai = await start_ai_server()
    if fault == "gone":
        response_id = "resp_expired"  # background responses are kept for a while only
    else:
        response_id = fake_openai.start_response(Behaviour(delay=0.05)).id
        resume = (
            Resume(kind="http_error", status=500) if fault == "http_500"
            else Resume(kind="abort", events=1)
        )  # fmt: skip
        fake_openai.then_resume(*[resume] * 3)
    _, reply = await orphan(ai, response_id=response_id, upstream_sequence=3)
    # A worker starting (or sweeping) takes the released reply and fails to resume it.
    await start_ai_server()
    reply_id = encode_global_id("Message", reply.id)

    async def finished() -> bool:
        return (await stored(database, reply_id)).status is not MessageStatus.IN_PROGRESS

    await wait_until(finished, timeout=30)
    final = await stored(database, reply_id)
    assert (final.status.value, final.error) == (status, error)
    assert final.content == "half "
    async with database() as db:
        [logged] = (
            await db.execute(sa.select(ErrorLog).where(col(ErrorLog.path) == f"reply/{reply_id}"))
        ).scalars()
    assert logged.source is ErrorSource.UPSTREAM
    assert logged.upstream_status == http_status
    attempts = len(fake_openai.calls(f"/v1/responses/{response_id}"))
    assert attempts == (1 if fault == "gone" else 3)


# -- fencing: a worker that lost its reply stops --------------------------------------------


async def test_a_worker_whose_reply_was_taken_over_stops_without_touching_it(
    ai: AIServer, database: async_sessionmaker[AsyncSession]
) -> None:
    runtime = runtime_of(ai)
    runtime.heartbeat_interval = 0.05
    # One delta, then the upstream holds (`delta_permits`): the reply is still running when
    # the test acts, however slow the machine (a 10 s reply was a bet on the clock).
    ai.fake.delta_permits = asyncio.Semaphore(1)
    ai.fake.then(Behaviour(deltas=tuple(f"t{i} " for i in range(400))))
    thread_id = await ai.new_thread()
    async with ai.client.subscribe(ai.people.member, thread_id) as subscription:
        reply_id = (await ai.send(thread_id))["data"]["sendMessage"]["assistantMessage"]["id"]
        while (await subscription.event())["__typename"] != "MessageDelta":
            pass
        # Another worker claimed it (this one looked dead to it).
        other_worker = uuid.uuid4()
        async with database() as db:
            await db.execute(
                sa.update(Message)
                .where(col(Message.id) == uuid_of(reply_id))
                .values(reply_worker_id=other_worker)
            )
            await db.commit()
        await wait_until(lambda: not runtime.replies)
    taken = await stored(database, reply_id)
    # Left as the other worker has it: not finished, not released, not written over.
    assert taken.status is MessageStatus.IN_PROGRESS
    assert taken.reply_worker_id == other_worker
    assert ai.fake.open_streams == 0
    # Nor cancelled upstream: the other worker is reading it.
    assert not [call for call in ai.fake.requests if call.path.endswith("/cancel")]


async def test_a_reply_stored_without_a_worker_is_run_by_the_worker_that_started_it(
    ai: AIServer, database: async_sessionmaker[AsyncSession]
) -> None:
    runtime = runtime_of(ai)
    runtime.heartbeat_interval = 0.05
    ai.fake.gates["complete"] = asyncio.Event()
    thread_id = await ai.new_thread()
    async with ai.client.subscribe(ai.people.member, thread_id) as subscription:
        reply_id = (await ai.send(thread_id))["data"]["sendMessage"]["assistantMessage"]["id"]
        while (await subscription.event())["__typename"] != "MessageDelta":
            pass
        # As code that creates replies without setting `reply_worker_id` would leave it
        # (before its response was checkpointed as resumable).
        async with database() as db:
            await db.execute(
                sa.update(Message)
                .where(col(Message.id) == uuid_of(reply_id))
                .values(reply_worker_id=None, upstream_sequence=None, event_sequence_base=None)
            )
            await db.commit()

        async def beat_again() -> bool:
            return bool((await stored(database, reply_id)).reply_worker_id == runtime.worker_id)

        await wait_until(beat_again)
        ai.fake.gates["complete"].set()
        events = await subscription.until_final()
    assert events[-1]["__typename"] == "MessageCompleted"
