"""docs/deploy.md, tested: two separate `atlas-gql serve` processes on different ports, one
database, one Redis. A subscriber on one sees a reply started through the other, a cancel sent
to either stops it, login rate limits are shared, and each process logs JSON access lines
without query strings."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from atlas_gql.ai.models import MessageStatus
from atlas_gql.db.url import DatabaseTarget
from tests.ai.conftest import People
from tests.ai.fake_openai import Behaviour, FakeOpenAI
from tests.ai.test_background import (  # noqa: F401 (fixtures)
    CANCEL,
    WorkerFactory,
    database,
    deltas_of,
    new_thread,
    people,
    send,
    start_worker,
    stored,
)
from tests.ai.test_redis_broker import REDIS_URL
from tests.conftest import error_codes, make_settings
from tests.live import AtlasClient, wait_until

SLOW_REPLY = tuple(f"d{index} " for index in range(400))
FIRST_THREE = "".join(SLOW_REPLY[:3])
LOGIN = (
    "mutation($e: String!, $p: String!) { login(input: {email: $e, password: $p}) { accessToken } }"
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
    # Started side by side: each start is mostly Python importing the app.
    first, second = await asyncio.gather(start_worker(**shared), start_worker(**shared))
    assert first.port != second.port
    one, two = AtlasClient(first), AtlasClient(second)
    thread_id = await new_thread(one, people)

    # A reply started through the first process streams to a subscriber of the second, and
    # a cancel sent to the second stops it. The subscriber asks for the events after the
    # last one it saw (none: 0): a worker process gives no signal that its subscription is in
    # place, so one that joins after the send's first events reads them from the kept list.
    after = 0
    for started_on, cancelled_on in ((one, one), (one, two)):
        # The upstream holds after 3 deltas until the cancel has landed: no race with the
        # reply's end, however slow the machine.
        fake_openai.delta_permits = asyncio.Semaphore(3)
        fake_openai.then(Behaviour(deltas=SLOW_REPLY))
        async with two.subscribe(people.member, thread_id, after_sequence=after) as subscription:
            reply_id = await send(started_on, people, thread_id, "Hello from afar")
            seen: list[dict[str, Any]] = []
            # Counted by text, not by events: a subscriber that fell behind may get the
            # three as one merged delta (docs/ai.md, coalescing).
            while len(deltas_of(seen)) < len(FIRST_THREE):
                seen.append(await subscription.event())
            assert deltas_of(seen) == FIRST_THREE
            assert {e["__typename"] for e in seen} >= {"MessageCreated", "MessageDelta"}
            await cancelled_on.data(CANCEL, {"id": reply_id}, token=people.member)
            final = (await subscription.until_final())[-1]
        assert final["message"]["status"] == "CANCELLED"
        after = final["sequence"]

        async def settled(reply: str = reply_id) -> bool:
            return (await stored(database, reply)).status is MessageStatus.CANCELLED

        await wait_until(settled)
        fake_openai.delta_permits = None

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


async def test_workers_share_one_metrics_view(
    live_database: DatabaseTarget, tmp_path: Path
) -> None:
    """`serve --workers 2`: /metrics answers for both workers whichever one is asked."""
    settings = make_settings(live_database)
    assert settings.database_url is not None
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("ATLAS_", "DATABASE_URL", "OPENAI_", "REDIS_URL", "PROMETHEUS_"))
    }
    environment.update(
        DATABASE_URL=settings.database_url,
        ATLAS_JWT_SECRET=settings.atlas_jwt_secret,
        ATLAS_SEED_PASSWORD=settings.atlas_seed_password,
        REDIS_URL=REDIS_URL,
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with (tmp_path / "workers.log").open("w") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "atlas_gql", "serve", "--port", str(port), "--workers", "2",
            cwd=tmp_path, env=environment, stdout=log, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        try:

            async def answers() -> bool:
                assert process.returncode is None, (tmp_path / "workers.log").read_text()
                with contextlib.suppress(httpx.HTTPError):
                    async with httpx.AsyncClient() as client:
                        return (await client.get(f"{url}/healthz")).status_code == 200
                return False

            await wait_until(answers, timeout=90)
            # New connections each time: the kernel spreads them over both workers.
            for _ in range(20):
                async with httpx.AsyncClient(base_url=url) as client:
                    response = await client.post(
                        "/graphql", json={"query": "query Ping { __typename }"}
                    )
                    assert response.status_code == 200
            for _ in range(5):
                async with httpx.AsyncClient(base_url=url) as client:
                    text = (await client.get("/metrics")).text
                samples = {
                    (sample.name, tuple(sorted(sample.labels.items()))): sample.value
                    for family in text_string_to_metric_families(text)
                    for sample in family.samples
                }
                key = (
                    "atlas_graphql_request_duration_seconds_count",
                    (("operation_name", "Ping"), ("operation_type", "query")),
                )
                assert samples[key] == 20
        finally:
            process.terminate()
            await asyncio.wait_for(process.wait(), 30)
