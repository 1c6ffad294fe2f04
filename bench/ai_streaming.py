"""Benchmark: streaming overhead of AI replies.

    .venv/bin/python bench/ai_streaming.py [--deltas 100 --interval 0.01
        --subscribers 1,10,100 --replies 10,50,100,200 --reply-deltas 50]

1. Delta latency: the fake OpenAI stamps each delta with the wall clock when it writes it
   ("<t:ns>"); every `threadEvents` subscriber notes when it reads the delta off its
   WebSocket. Printed: p50/p99 of (received - emitted) with 1, 10 and 100 subscribers on one
   thread.
2. Concurrent replies: K threads each get a reply at the same moment (one subscriber each);
   printed per K: replies completed, wall time, delta latency p50/p99. A worker "sustains" K
   when every reply completes and p99 stays under --sustain-p99-ms.

ATLAS runs on uvicorn in a subprocess (one worker, in-memory broker) against a throw-away
database on 127.0.0.1:5432 (migrated, seeded, dropped afterwards); the fake OpenAI and the
subscribers run in this process, so the figures include the client side's own scheduling.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import websockets
from sqlalchemy.ext.asyncio import AsyncSession

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atlas_gql.config import Settings  # noqa: E402
from atlas_gql.db.engine import create_engine, drop_database, ensure_database  # noqa: E402
from atlas_gql.db.migrate import upgrade_to_head  # noqa: E402
from atlas_gql.db.url import DatabaseTarget, parse_database_url  # noqa: E402
from atlas_gql.seed import seed  # noqa: E402
from tests.ai.fake_openai import Behaviour, FakeOpenAI  # noqa: E402

LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
SEED_PASSWORD = "bench-seed-password-1"
FINAL_TYPES = frozenset({"MessageCompleted", "MessageFailed", "MessageCancelled"})
JWT_SECRET = "bench-secret-" + "x" * 40
STAMP = re.compile(r"<t:(\d+)>")

SUBSCRIPTION = """
subscription($threadId: ID!) {
  threadEvents(threadId: $threadId) {
    __typename
    ... on MessageDelta { sequence delta }
    ... on MessageCompleted { sequence message { status } }
    ... on MessageFailed { sequence error }
  }
}"""


def settings_for(target: DatabaseTarget) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=target.url.render_as_string(hide_password=False),
        atlas_seed_password=SEED_PASSWORD,
        atlas_jwt_secret=JWT_SECRET,
    )


async def prepare_database() -> DatabaseTarget:
    target = parse_database_url(LOCAL_SERVER).with_database(
        f"atlas_bench_ai_{uuid.uuid4().hex[:8]}"
    )
    await ensure_database(target)
    await asyncio.to_thread(upgrade_to_head, target)
    engine = create_engine(target, pool_size=1)
    try:
        async with AsyncSession(engine) as db, db.begin():
            await seed(db, settings=settings_for(target))
    finally:
        await engine.dispose()
    return target


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_server(target: DatabaseTarget, port: int, fake: FakeOpenAI) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": target.url.render_as_string(hide_password=False),
        "ATLAS_SEED_PASSWORD": SEED_PASSWORD,
        "ATLAS_JWT_SECRET": JWT_SECRET,
        "OPENAI_BASE_URL": fake.base_url,
        "OPENAI_API_KEY": "sk-bench",
        "ATLAS_OPENAI_TIMEOUT": "30",
        "REDIS_URL": "",
    }
    command = [
        sys.executable, "-m", "uvicorn", "--factory", "atlas_gql.app:app_factory",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    # The app logs every upstream call at INFO: keep that out of the figures.
    log = tempfile.NamedTemporaryFile(prefix="atlas-bench-ai-", suffix=".log", delete=False)  # noqa: SIM115
    print(f"(server log: {log.name})")
    return subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=log)


async def wait_until_up(base_url: str, process: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient(base_url=base_url) as client:
        for _ in range(300):
            if process.poll() is not None:
                raise RuntimeError("the server exited")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get("/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError("the server did not start")


class Atlas:
    def __init__(self, port: int) -> None:
        # Idle connections expire before uvicorn's 5 s keep-alive closes them under us.
        self.http = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            timeout=60,
            limits=httpx.Limits(max_connections=400, keepalive_expiry=2),
        )
        self.ws_url = f"ws://127.0.0.1:{port}/graphql"
        self.token = ""
        self.project_id = ""
        self.assistant_id = ""

    async def gql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        response = await self.http.post(
            "/graphql",
            json={"query": query, "variables": variables or {}},
            headers={"Authorization": f"Bearer {self.token}"} if self.token else {},
        )
        body: dict[str, Any] = response.json()
        if body.get("errors"):
            raise RuntimeError(body["errors"])
        data: dict[str, Any] = body["data"]
        return data

    async def setup(self) -> None:
        login = await self.gql(
            "mutation($e: String!, $p: String!) { login(input: {email: $e, password: $p}) "
            "{ accessToken } }",
            {"e": "user@example.com", "p": SEED_PASSWORD},
        )
        self.token = login["login"]["accessToken"]
        found = await self.gql("{ assistants(first: 10) { edges { node { id project { id } } } } }")
        node = found["assistants"]["edges"][0]["node"]
        self.assistant_id, self.project_id = node["id"], node["project"]["id"]

    async def new_thread(self) -> str:
        data = await self.gql(
            "mutation($i: CreateThreadInput!) { createThread(input: $i) { id } }",
            {"i": {"projectId": self.project_id, "assistantId": self.assistant_id}},
        )
        thread_id: str = data["createThread"]["id"]
        return thread_id

    async def send(self, thread_id: str) -> None:
        await self.gql(
            "mutation($i: SendMessageInput!) { sendMessage(input: $i) "
            "{ assistantMessage { id } } }",
            {"i": {"threadId": thread_id, "content": "bench"}},
        )


class Subscriber:
    """One WebSocket subscribed to a thread; records delta latencies until the reply ends."""

    def __init__(self, atlas: Atlas, thread_id: str) -> None:
        self.atlas = atlas
        self.thread_id = thread_id
        self.latencies_ms: list[float] = []
        self.events = 0  # delta events received (fewer than deltas when merged)
        self.final: str | None = None
        self.ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.run())

    async def run(self) -> None:
        async with websockets.connect(
            self.atlas.ws_url,
            subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
            max_queue=None,
        ) as ws:
            payload = {"Authorization": f"Bearer {self.atlas.token}"}
            await ws.send(json.dumps({"type": "connection_init", "payload": payload}))
            assert json.loads(await ws.recv())["type"] == "connection_ack"
            subscribe = {"query": SUBSCRIPTION, "variables": {"threadId": self.thread_id}}
            await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": subscribe}))
            self.ready.set()
            async for raw in ws:
                received = time.time_ns()
                message = json.loads(raw)
                if message["type"] == "ping":
                    await ws.send(json.dumps({"type": "pong"}))
                    continue
                if message["type"] != "next":
                    continue
                if not message["payload"].get("data"):
                    raise RuntimeError(f"subscription error: {message['payload']}")
                event = message["payload"]["data"]["threadEvents"]
                if event["__typename"] == "MessageDelta":
                    # A subscriber that fell behind gets merged deltas: each stamp counts.
                    for stamp in STAMP.findall(event["delta"]):
                        self.latencies_ms.append((received - int(stamp)) / 1e6)
                    self.events += 1
                elif event["__typename"] in FINAL_TYPES:
                    self.final = event["__typename"]
                    return


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def subscribe_all(subscribers: list[Subscriber]) -> None:
    for subscriber in subscribers:
        subscriber.start()
    await asyncio.gather(*(subscriber.ready.wait() for subscriber in subscribers))
    # The subscribe message is processed asynchronously on the server: give it a moment.
    await asyncio.sleep(0.5 + len(subscribers) * 0.01)


async def fan_out(
    atlas: Atlas, fake: FakeOpenAI, count: int, deltas: int, interval: float, pid: int
) -> str:
    thread_id = await atlas.new_thread()
    subscribers = [Subscriber(atlas, thread_id) for _ in range(count)]
    await subscribe_all(subscribers)
    fake.then(Behaviour(deltas=("x",) * deltas, delay=interval, timestamp_deltas=True))
    cpu_before, started = cpu_seconds(pid), time.monotonic()
    own_before = cpu_seconds(os.getpid())
    await atlas.send(thread_id)
    await asyncio.wait_for(asyncio.gather(*(s.task for s in subscribers if s.task)), 120)
    cpu = cpu_seconds(pid) - cpu_before
    own = cpu_seconds(os.getpid()) - own_before
    elapsed = time.monotonic() - started
    latencies = [value for s in subscribers for value in s.latencies_ms]
    events = sum(s.events for s in subscribers)
    complete = sum(1 for s in subscribers if s.final == "MessageCompleted")
    return (
        f"{count:>4} subscribers: {len(latencies):>6} deltas received in {events:>6} events, "
        f"p50 {percentile(latencies, 0.5):7.2f} ms, p99 {percentile(latencies, 0.99):7.2f} ms, "
        f"max {max(latencies):7.2f} ms ({complete}/{count} saw MessageCompleted); "
        f"CPU: server {cpu / elapsed:.0%} ({cpu / max(events, 1) * 1e6:.0f} us per event "
        f"delivered), bench {own / elapsed:.0%} of a core"
    )


async def concurrent(
    atlas: Atlas, fake: FakeOpenAI, replies: int, deltas: int, interval: float, pid: int
) -> tuple[str, bool, float]:
    threads = [await atlas.new_thread() for _ in range(replies)]
    subscribers = [Subscriber(atlas, thread_id) for thread_id in threads]
    await subscribe_all(subscribers)
    fake.then(*[Behaviour(deltas=("x",) * deltas, delay=interval, timestamp_deltas=True)] * replies)
    cpu_before, started = cpu_seconds(pid), time.monotonic()
    own_before = cpu_seconds(os.getpid())
    await asyncio.gather(*(atlas.send(thread_id) for thread_id in threads))
    await asyncio.wait_for(asyncio.gather(*(s.task for s in subscribers if s.task)), 300)
    elapsed = time.monotonic() - started
    cpu = cpu_seconds(pid) - cpu_before
    own = cpu_seconds(os.getpid()) - own_before
    latencies = [value for s in subscribers for value in s.latencies_ms]
    complete = sum(1 for s in subscribers if s.final == "MessageCompleted")
    p99 = percentile(latencies, 0.99)
    line = (
        f"{replies:>4} concurrent replies: {complete}/{replies} completed in {elapsed:5.2f} s "
        f"(ideal {deltas * interval:4.2f} s), delta p50 {percentile(latencies, 0.5):7.2f} ms, "
        f"p99 {p99:8.2f} ms, {len(latencies) / elapsed:6.0f} deltas/s delivered; "
        f"CPU: server {cpu / elapsed:.0%}, bench (fake + clients) {own / elapsed:.0%} of a core"
    )
    return line, complete == replies, p99


async def main(args: argparse.Namespace) -> None:
    target = await prepare_database()
    fake = FakeOpenAI()
    await fake.start()
    port = free_port()
    process = start_server(target, port, fake)
    atlas = Atlas(port)
    try:
        await wait_until_up(f"http://127.0.0.1:{port}", process)
        await atlas.setup()
        # Warm-up: first-use costs (SDK event models, schema caches) are not streaming overhead.
        await fan_out(atlas, fake, 1, 20, 0.0, process.pid)
        print(
            f"Delta latency, fake upstream emit -> subscriber receive "
            f"({args.deltas} deltas every {args.interval * 1000:.0f} ms):"
        )
        for count in args.subscribers:
            line = await fan_out(atlas, fake, count, args.deltas, args.interval, process.pid)
            print("  " + line, flush=True)
        print(
            f"Concurrent replies on one worker ({args.reply_deltas} deltas every "
            f"{args.interval * 1000:.0f} ms each, one subscriber per thread):"
        )
        sustained = 0
        for replies in args.replies:
            line, all_done, p99 = await concurrent(
                atlas, fake, replies, args.reply_deltas, args.interval, process.pid
            )
            print("  " + line, flush=True)
            if all_done and p99 <= args.sustain_p99_ms:
                sustained = replies
        print(
            f"Sustained (all complete, delta p99 <= {args.sustain_p99_ms:.0f} ms): "
            f"{sustained} concurrent replies"
        )
    finally:
        await atlas.http.aclose()
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
        await fake.stop()
        await drop_database(target)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])

    def numbers(value: str) -> list[int]:
        return [int(item) for item in value.split(",") if item]

    parser.add_argument("--deltas", type=int, default=100)
    parser.add_argument("--interval", type=float, default=0.01, help="seconds between deltas")
    parser.add_argument("--subscribers", type=numbers, default=[1, 10, 100])
    parser.add_argument("--replies", type=numbers, default=[10, 50, 100, 200])
    parser.add_argument("--reply-deltas", type=int, default=50)
    parser.add_argument("--sustain-p99-ms", type=float, default=100.0)
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
