"""docs/deploy.md, tested: two separate `atlas-gql serve` processes on different ports, one
database, one Redis. A subscriber on one sees a reply started through the other, a cancel sent
to either stops it, login rate limits are shared, and each process logs JSON access lines
without query strings."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from atlas_gql.ai.models import MessageStatus
from tests.ai.conftest import AtlasClient, People, wait_until
from tests.ai.fake_openai import Behaviour, FakeOpenAI
from tests.ai.test_background import (  # noqa: F401 (fixtures)
    CANCEL,
    WorkerFactory,
    database,
    new_thread,
    people,
    send,
    start_worker,
    stored,
)
from tests.ai.test_redis_broker import REDIS_URL
from tests.conftest import error_codes

SLOW_REPLY = tuple(f"d{index} " for index in range(400))
LOGIN = (
    "mutation($e: String!, $p: String!) "
    "{ login(input: {email: $e, password: $p}) { accessToken } }"
)


async def test_two_processes_share_replies_cancels_and_rate_limits(
    start_worker: WorkerFactory,  # noqa: F811
    fake_openai: FakeOpenAI,
    people: People,  # noqa: F811
    database: async_sessionmaker[AsyncSession],  # noqa: F811
    tmp_path: Path,
) -> None:
    shared = {
        "REDIS_URL": REDIS_URL,
        "ATLAS_RATE_LIMIT_PREFIX": f"atlas-test:{uuid.uuid4().hex}:",
        "ATLAS_LOGIN_MAX_FAILURES": "3",
        "ATLAS_BCRYPT_ROUNDS": "4",
        "ATLAS_LOG_FORMAT": "json",
    }
    first, second = await start_worker(**shared), await start_worker(**shared)
    assert first.port != second.port
    one, two = AtlasClient(first), AtlasClient(second)
    thread_id = await new_thread(one, people)

    # A reply started through the first process streams to a subscriber of the second, and
    # a cancel sent to the second stops it.
    for started_on, cancelled_on in ((one, one), (one, two)):
        fake_openai.then(Behaviour(deltas=SLOW_REPLY, delay=0.02))
        async with two.subscribe(people.member, thread_id, after_sequence=None) as subscription:
            reply_id = await send(started_on, people, thread_id, "Hello from afar")
            seen = []
            while len([e for e in seen if e["__typename"] == "MessageDelta"]) < 3:
                seen.append(await subscription.event())
            assert {e["__typename"] for e in seen} >= {"MessageCreated", "MessageDelta"}
            await cancelled_on.data(CANCEL, {"id": reply_id}, token=people.member)
            final = (await subscription.until_final())[-1]
        assert final["message"]["status"] == "CANCELLED"

        async def settled(reply: str = reply_id) -> bool:
            return (await stored(database, reply)).status is MessageStatus.CANCELLED

        await wait_until(settled)

    # Failed logins counted by one process are refused by the other.
    email = f"deploy-{uuid.uuid4().hex[:8]}@example.com"
    for client in (one, two, one):
        failed = await client.gql(LOGIN, {"e": email, "p": "wrong-password"})
        assert error_codes(failed) == ["UNAUTHENTICATED"]
    assert error_codes(await two.gql(LOGIN, {"e": email, "p": "wrong-password"})) == [
        "RATE_LIMITED"
    ]

    # A query string (which may carry a password) never reaches the log; the request id does.
    secret = "Secret-In-A-Query-String-42"
    async with httpx.AsyncClient(base_url=second.http_url) as http:
        response = await http.get(
            "/graphql",
            params={"query": f'{{ __typename }} # "{secret}"'},
            headers={"X-Request-ID": "deploy-test-request-0001"},
        )
    assert response.headers["x-request-id"] == "deploy-test-request-0001"

    log = tmp_path / "atlas.log"

    def logged() -> bool:
        return "deploy-test-request-0001" in log.read_text()

    await wait_until(logged)
    text = log.read_text()
    assert secret not in text
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    [access] = [line for line in lines if line.get("request_id") == "deploy-test-request-0001"]
    assert access["path"] == "/graphql"
    assert access["status"] == 200
    assert access["outcome"] == "OK"
