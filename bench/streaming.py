"""Benchmark: what streaming replies cost the server, beside a minimal floor.

    .venv/bin/python bench/streaming.py [--variant NAME=PATH[,ENV=VALUE...]]... [--floor/--no-floor]
        [--subscribers 1,10,100,1000] [--deltas 100 --interval 0.01] [--parallel 10]
        [--replies 200 --reply-deltas 60 --reply-interval 0.066 --spread 4]
        [--fixed-replies 20] [--quick]

Every part runs in a process of its own, so the server's figures are the server's alone:
- the fake upstream: `python -m tests.ai.fake_openai` (the Responses API's SSE wire format; each
  delta's text is the CLOCK_REALTIME nanoseconds at which it was written, `<t:...>`);
- the server: a real `atlas-gql serve` (one worker, in-memory broker, a throw-away database on
  127.0.0.1:5432 that `serve` creates, migrates and seeds; dropped afterwards), run from the
  variant's PATH, so a copy of an older commit (`git archive`) can be measured in the same run;
- the subscribers: processes of at most 250 graphql-transport-ws WebSockets each (websockets
  client, permessage-deflate offered as browsers do); they note when each delta arrives;
- the floor (`--floor`, on by default): a minimal server in this file that reads the same
  upstream stream with httpx, serialises each event once and writes the same frame to every
  socket (`websockets.broadcast`, no compression), on uvloop as ATLAS is under uvicorn.

Server CPU comes from the kernel's per-thread run time of the server process
(/proc/<pid>/task/*/schedstat, nanoseconds; /proc/<pid>/stat as a fallback), sampled every 5 ms
into a timeline and read at the moments that bound a measured window (send, first delta, last
delta; all on CLOCK_MONOTONIC, shared by every process of the machine).

What "server CPU per upstream delta" measures: all CPU the kernel charged to the server's
threads between the first and the last delta its subscribers received, divided by the deltas
in between; printed net of the server's idle CPU (measured over an equally long quiet window
just before, once the previous reply's aftermath has settled), with the raw figure and the
idle part beside it. On a paced stream (one delta per `--interval`) the server sleeps between
deltas, and on this kind of machine (a small VM) a wake-up is dear: the `machine:` line,
printed at the start and the end, measures it in a process of its own: a bare wake-up every
10 ms costs ~45 us of CPU, and Python work right after one costs ~2.5x what it costs back to
back (cold caches and branch predictors after the vCPU idled). So a paced figure is mostly
the price of waking: the floor spends ~30 us per delta when deltas come back to back, ~250 at
one per 2 ms and ~500 at one per 10 ms (the same code; the 5 ms sampler and idle CPU
ruled out: the floor's idle is 0 and a 100 ms sampler gives the same). That is the truth for
one lone stream, not an error to subtract; the `busy:` line shows the same stream with
`--parallel` replies at once (one subscriber each, starts spread over one interval), where
wake-ups are shared and the worker is warm: the cost per delta that bounds a busy worker.
Compare ATLAS with the floor line by line.

Printed per server:
- fan-out, one thread, N subscribers, `--deltas` every `--interval`: delta p50/p99/max (upstream
  emit -> subscriber receive), events delivered, server CPU per upstream delta (steady state:
  between the first and the last delta; net of idle, then raw and idle) and per delivered
  event, and the marginal CPU per additional subscriber (against N = 1);
- busy (`--parallel`, 10 by default; 0 or 1 skips it): the same, `--parallel` replies at once,
  one subscriber each;
- per-reply fixed cost: server CPU from the sendMessage request to the first delta received
  (one subscriber; median and mean of `--fixed-replies` replies, the first delta sent at once);
- concurrent replies: `--replies` threads, one subscriber each, sends spread over `--spread`
  seconds, `--reply-deltas` every `--reply-interval`: how many completed, delta p50/p99;
- RSS: idle (after a warm-up) and with the largest N subscriptions open and idle.

Before each measured reply every subscriber sees a one-delta probe reply end: that is the
signal that the server has registered all subscriptions (graphql-transport-ws has no
acknowledgement of `subscribe`). Nothing here asserts: it prints figures.
Size: over 400 lines on purpose: a self-contained benchmark script (variants, fake
upstream, subscribers, CPU sampling, report) that runs on its own; nothing in it is imported
elsewhere.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import socket
import statistics
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
SEED_PASSWORD = "bench-seed-password-1"
JWT_SECRET = "bench-secret-" + "x" * 40
STAMP = re.compile(r"<t:(\d+)>")
SUBSCRIBERS_PER_PROCESS = 250
FINAL_TYPES = ("MessageCompleted", "MessageFailed", "MessageCancelled")

SUBSCRIPTION = """
subscription($threadId: ID!) {
  threadEvents(threadId: $threadId) {
    __typename
    ... on MessageDelta { sequence delta }
    ... on MessageCompleted { sequence message { status } }
    ... on MessageFailed { sequence error }
  }
}"""


# -- the kernel's accounting of a process --------------------------------------------------


def cpu_ns(pid: int) -> int:
    """CPU time used by all threads of `pid` so far, in nanoseconds."""
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
        return total
    except OSError:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class CpuTimeline:
    """The server's CPU time sampled every few milliseconds, readable at any past moment."""

    def __init__(self, pid: int, every: float = 0.005) -> None:
        self.pid = pid
        self.every = every
        self.samples: list[tuple[int, int]] = []
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    def sample(self) -> None:
        self.samples.append((time.monotonic_ns(), cpu_ns(self.pid)))
        if len(self.samples) > 200_000:
            del self.samples[:100_000]

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.every)

    def at(self, moment_ns: int) -> float:
        """CPU ns at `moment_ns`, interpolated between the samples around it."""
        samples = self.samples
        low, high = 0, len(samples) - 1
        if moment_ns <= samples[0][0]:
            return samples[0][1]
        if moment_ns >= samples[-1][0]:
            return samples[-1][1]
        while high - low > 1:
            middle = (low + high) // 2
            if samples[middle][0] <= moment_ns:
                low = middle
            else:
                high = middle
        (t0, c0), (t1, c1) = samples[low], samples[high]
        return c0 + (c1 - c0) * (moment_ns - t0) / max(t1 - t0, 1)


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_for_line(stream: asyncio.StreamReader, prefix: str, timeout: float = 30) -> str:
    async def read() -> str:
        while True:
            line = (await stream.readline()).decode()
            if not line:
                raise RuntimeError(f"process ended before printing {prefix!r}")
            if line.startswith(prefix):
                return line[len(prefix) :].strip()

    return await asyncio.wait_for(read(), timeout)


async def wait_until_up(url: str, process: asyncio.subprocess.Process, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise RuntimeError(f"the server exited ({process.returncode})")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in {timeout} s")


async def stop_process(process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    process.terminate()
    try:
        await asyncio.wait_for(process.wait(), 15)
    except TimeoutError:
        process.kill()
        await process.wait()


# -- the fake upstream -----------------------------------------------------------------------


class Upstream:
    """tests/ai/fake_openai.py in a process of its own, scripted over HTTP."""

    def __init__(self) -> None:
        self.process: asyncio.subprocess.Process | None = None
        self.port = 0
        self.http = httpx.AsyncClient(timeout=30)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.ai.fake_openai", "--port", "0",
            cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert self.process.stdout is not None
        self.port = int(await wait_for_line(self.process.stdout, "listening on "))

    async def script(self, count: int, *, reset: bool = False, **behaviour: Any) -> None:
        response = await self.http.post(
            f"http://127.0.0.1:{self.port}/_fake/script",
            json={"behaviours": [behaviour] * count, "reset": reset},
        )
        response.raise_for_status()

    async def stop(self) -> None:
        await self.http.aclose()
        if self.process is not None:
            await stop_process(self.process)


# -- the servers under test ------------------------------------------------------------------


class Server:
    name: str
    pid: int
    ws_url: str
    token: str = ""

    async def start(self, upstream: Upstream) -> None: ...

    async def new_thread(self) -> str: ...

    async def send(self, thread_id: str) -> None: ...

    async def stop(self) -> None: ...


class AtlasServer(Server):
    """`atlas-gql serve` from a source tree, on a database of its own."""

    def __init__(self, name: str, root: Path, env: dict[str, str]) -> None:
        self.name = name
        self.root = root
        self.env = env
        self.database = f"atlas_bench_{uuid.uuid4().hex[:8]}"
        self.process: asyncio.subprocess.Process | None = None
        self.http: httpx.AsyncClient | None = None
        self.project_id = ""
        self.assistant_id = ""
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115
            prefix=f"atlas-bench-{name}-", suffix=".log", delete=False
        )

    async def start(self, upstream: Upstream) -> None:
        port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": str(self.root),
            "DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{self.database}",
            "ATLAS_SEED_PASSWORD": SEED_PASSWORD,
            "ATLAS_JWT_SECRET": JWT_SECRET,
            "OPENAI_BASE_URL": upstream.base_url,
            "OPENAI_API_KEY": "sk-bench",
            "ATLAS_OPENAI_TIMEOUT": "60",
            "ATLAS_MAX_COST": "1000000",
            # A saturated variant may take longer than the default 15 minutes.
            "ATLAS_ACCESS_TOKEN_TTL": "3600",
            # One bench user sends hundreds of messages: the per-person limits are not measured.
            "ATLAS_USER_MESSAGES_PER_MINUTE": "1000000",
            "ATLAS_USER_MONTHLY_TOKENS": "1000000000000",
            "REDIS_URL": "",
            **self.env,
        }
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "atlas_gql", "serve", "--host", "127.0.0.1",
            "--port", str(port),
            cwd=self.root, env=env, stdout=self.log, stderr=self.log,
        )  # fmt: skip
        self.pid = self.process.pid
        await wait_until_up(f"http://127.0.0.1:{port}/healthz", self.process, timeout=120)
        self.ws_url = f"ws://127.0.0.1:{port}/graphql"
        self.http = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            timeout=120,
            limits=httpx.Limits(max_connections=100, keepalive_expiry=2),
        )
        login = await self.gql(
            "mutation($e: String!, $p: String!) { login(input: {email: $e, password: $p}) "
            "{ accessToken } }",
            {"e": "user@example.com", "p": SEED_PASSWORD},
        )
        self.token = login["login"]["accessToken"]
        found = await self.gql("{ assistants(first: 10) { edges { node { id project { id } } } } }")
        node = found["assistants"]["edges"][0]["node"]
        self.assistant_id, self.project_id = node["id"], node["project"]["id"]

    async def gql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        assert self.http is not None
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

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.aclose()
        if self.process is not None:
            await stop_process(self.process)
        sys.path.insert(0, str(ROOT))
        from atlas_gql.db.engine import drop_database
        from atlas_gql.db.url import parse_database_url

        with contextlib.suppress(Exception):
            await drop_database(parse_database_url(LOCAL_SERVER).with_database(self.database))


class FloorServer(Server):
    """The minimal pre-serialised broadcaster (`--role floor` of this file)."""

    name = "floor"

    def __init__(self) -> None:
        self.process: asyncio.subprocess.Process | None = None
        self.http = httpx.AsyncClient(timeout=30)
        self.port = 0

    async def start(self, upstream: Upstream) -> None:
        self.port = free_port()
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--role", "floor", "--port", str(self.port),
            "--upstream", upstream.base_url, cwd=ROOT,
        )  # fmt: skip
        self.pid = self.process.pid
        await wait_until_up(f"http://127.0.0.1:{self.port}/healthz", self.process, timeout=30)
        self.ws_url = f"ws://127.0.0.1:{self.port}/graphql"

    async def new_thread(self) -> str:
        return uuid.uuid4().hex

    async def send(self, thread_id: str) -> None:
        response = await self.http.get(f"http://127.0.0.1:{self.port}/send?thread={thread_id}")
        response.raise_for_status()

    async def stop(self) -> None:
        await self.http.aclose()
        if self.process is not None:
            await stop_process(self.process)


# -- subscribers, in processes of their own ----------------------------------------------------


@dataclass
class Final:
    thread_id: str
    typename: str
    first_ns: int | None  # CLOCK_MONOTONIC when the reply's first delta arrived
    last_ns: int | None
    stamps: int
    events: int


@dataclass
class Fleet:
    """Subscriber processes holding `count` subscriptions on each of some threads."""

    server: Server
    processes: list[asyncio.subprocess.Process] = field(default_factory=list)
    readers: list[asyncio.Task[None]] = field(default_factory=list)
    finals: dict[str, list[Final]] = field(default_factory=lambda: defaultdict(list))
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    reports: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    ready: asyncio.Queue[int] = field(default_factory=asyncio.Queue)

    async def open(self, plan: list[tuple[str, int]]) -> None:
        sockets = [thread_id for thread_id, count in plan for _ in range(count)]
        chunks = [
            sockets[index : index + SUBSCRIBERS_PER_PROCESS]
            for index in range(0, len(sockets), SUBSCRIBERS_PER_PROCESS)
        ]
        for chunk in chunks:
            config = {"url": self.server.ws_url, "token": self.server.token, "threads": chunk}
            process = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--role", "subscribers", json.dumps(config),
                cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                limit=1 << 26,
            )  # fmt: skip
            self.processes.append(process)
            self.readers.append(asyncio.create_task(self._read(process)))
        for _ in chunks:
            await asyncio.wait_for(self.ready.get(), 600)

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        while line := await process.stdout.readline():
            message = json.loads(line)
            if "ready" in message:
                await self.ready.put(message["ready"])
            elif "final" in message:
                self.finals[message["final"]].append(
                    Final(
                        thread_id=message["final"],
                        typename=message["typename"],
                        first_ns=message["first"],
                        last_ns=message["last"],
                        stamps=message["stamps"],
                        events=message["events"],
                    )
                )
                self.changed.set()
            elif "latencies" in message:
                await self.reports.put(message)

    async def wait_finals(self, expected: dict[str, int], timeout: float = 300) -> None:
        """Until every thread of `expected` had that many final events (then forgets them)."""
        deadline = time.monotonic() + timeout

        def missing() -> bool:
            if "*" in expected:  # that many finals on any threads
                return sum(len(group) for group in self.finals.values()) < expected["*"]
            return any(len(self.finals[thread]) < count for thread, count in expected.items())

        while missing():
            self.changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"finals missing after {timeout} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)

    def take_finals(self) -> list[Final]:
        finals = [final for group in self.finals.values() for final in group]
        self.finals.clear()
        return finals

    async def report(self) -> list[float]:
        """Delta latencies (ms) noted since the last report, all processes together."""
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.write(b'{"cmd": "report"}\n')
            await process.stdin.drain()
        latencies: list[float] = []
        for _ in self.processes:
            latencies += (await asyncio.wait_for(self.reports.get(), 60))["latencies"]
        return latencies

    async def close(self) -> None:
        for process in self.processes:
            if process.stdin is not None and process.returncode is None:
                with contextlib.suppress(ConnectionError):
                    process.stdin.write(b'{"cmd": "close"}\n')
                    await process.stdin.drain()
        for process in self.processes:
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
        for reader in self.readers:
            reader.cancel()


async def subscribers_main(config: dict[str, Any]) -> None:
    """Hold WebSocket subscriptions; print one JSON line per final event a socket sees."""
    from websockets.asyncio.client import connect

    latencies: list[float] = []
    out = sys.stdout
    connected = 0
    handshakes = asyncio.Semaphore(50)

    def emit(message: dict[str, Any]) -> None:
        out.write(json.dumps(message) + "\n")
        out.flush()

    async def run(thread_id: str, opened: asyncio.Event) -> None:
        nonlocal connected
        async with contextlib.AsyncExitStack() as stack:
            async with handshakes:  # not 1,000 handshakes at once
                ws = await stack.enter_async_context(
                    connect(
                        config["url"], subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
                        max_queue=None, open_timeout=120,
                    )
                )  # fmt: skip
                token = f"Bearer {config['token']}"
                init = {"type": "connection_init", "payload": {"Authorization": token}}
                await ws.send(json.dumps(init))
                assert json.loads(await ws.recv())["type"] == "connection_ack"
            subscribe = {"query": SUBSCRIPTION, "variables": {"threadId": thread_id}}
            await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": subscribe}))
            connected += 1
            if connected == len(config["threads"]):
                opened.set()
            first = last = None
            stamps = events = 0
            async for raw in ws:
                received = time.time_ns()
                text = raw if isinstance(raw, str) else raw.decode()
                found = STAMP.findall(text)
                if found:
                    now = time.monotonic_ns()
                    first = first or now
                    last = now
                    stamps += len(found)
                    events += 1
                    latencies.extend((received - int(stamp)) / 1e6 for stamp in found)
                    continue
                message = json.loads(text)
                if message["type"] == "ping":
                    await ws.send('{"type":"pong"}')
                    continue
                if message["type"] != "next":
                    continue
                data = message["payload"].get("data")
                if not data:
                    raise RuntimeError(f"subscription error: {message['payload']}")
                typename = data["threadEvents"]["__typename"]
                if typename in FINAL_TYPES:
                    emit(
                        {"final": thread_id, "typename": typename, "first": first, "last": last,
                         "stamps": stamps, "events": events}
                    )  # fmt: skip
                    first = last = None
                    stamps = events = 0

    opened = asyncio.Event()
    tasks = [asyncio.create_task(run(thread_id, opened)) for thread_id in config["threads"]]
    await opened.wait()
    emit({"ready": len(tasks)})
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command = json.loads(line)["cmd"]
        if command == "report":
            emit({"latencies": latencies})
            latencies = []
        elif command == "close":
            break
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# -- the floor: a minimal pre-serialised broadcaster -------------------------------------------


async def floor_main(port: int, upstream: str) -> None:
    """graphql-transport-ws just enough for the bench's subscribers; each upstream event is
    serialised once per distinct subscription id and the same frame written to every socket."""
    import logging
    from http import HTTPStatus

    from websockets.asyncio.server import ServerConnection, broadcast, serve
    from websockets.http11 import Request, Response

    logging.getLogger("websockets").setLevel(logging.CRITICAL)  # closed sockets are no news
    subscribers: dict[str, dict[ServerConnection, str]] = defaultdict(dict)
    client = httpx.AsyncClient(timeout=120)
    tasks: set[asyncio.Task[None]] = set()

    def publish(thread_id: str, event: dict[str, Any]) -> None:
        by_id: dict[str, list[ServerConnection]] = defaultdict(list)
        for connection, subscription_id in subscribers.get(thread_id, {}).items():
            by_id[subscription_id].append(connection)
        for subscription_id, connections in by_id.items():
            frame = json.dumps(
                {"id": subscription_id, "type": "next",
                 "payload": {"data": {"threadEvents": event}}}, separators=(",", ":"),
            )  # fmt: skip
            broadcast(connections, frame)

    async def stream(thread_id: str) -> None:
        body = {"model": "bench", "input": "bench", "stream": True}
        sequence = 0
        async with client.stream("POST", f"{upstream}/responses", json=body) as response:
            buffer = b""
            async for chunk in response.aiter_raw():
                buffer += chunk
                *raw_events, buffer = buffer.split(b"\n\n")
                for raw in raw_events:
                    event = json.loads(raw[raw.index(b"data: ") + 6 :])
                    kind = event["type"]
                    if kind == "response.output_text.delta":
                        sequence += 1
                        publish(thread_id, {"__typename": "MessageDelta", "sequence": sequence,
                                            "delta": event["delta"]})  # fmt: skip
                    elif kind == "response.completed":
                        sequence += 1
                        publish(thread_id, {"__typename": "MessageCompleted", "sequence": sequence,
                                            "message": {"status": "COMPLETED"}})  # fmt: skip

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/healthz":
            return connection.respond(HTTPStatus.OK, "ok\n")
        if request.path.startswith("/send"):
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.path).query)
            task = asyncio.create_task(stream(query["thread"][0]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            return connection.respond(HTTPStatus.ACCEPTED, "sent\n")
        return None

    async def handler(connection: ServerConnection) -> None:
        thread_id: str | None = None
        try:
            async for raw in connection:
                message = json.loads(raw)
                kind = message.get("type")
                if kind == "connection_init":
                    await connection.send('{"type":"connection_ack"}')
                elif kind == "ping":
                    await connection.send('{"type":"pong"}')
                elif kind == "subscribe":
                    thread_id = message["payload"]["variables"]["threadId"]
                    subscribers[thread_id][connection] = message["id"]
                elif kind == "complete" and thread_id is not None:
                    subscribers[thread_id].pop(connection, None)
        finally:
            if thread_id is not None:
                subscribers[thread_id].pop(connection, None)

    async with serve(
        handler, "127.0.0.1", port, subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
        compression=None, process_request=process_request, max_queue=None,
    ) as server:  # fmt: skip
        await server.serve_forever()


# -- the machine: what a wake-up costs ---------------------------------------------------------


def wakes_main(interval: float, rounds: int = 300) -> None:
    """Print (JSON) this process's CPU per round of a small fixed piece of Python work done
    back to back, and done after sleeping `interval` (a paced stream's life), and of a bare
    wake-up: what the machine charges for waking, beside any server's code."""
    event = {"type": "response.output_text.delta", "sequence_number": 7, "delta": "x" * 20}

    def work() -> None:
        for _ in range(10):
            json.dumps(json.loads(json.dumps(event)))

    def cpu() -> int:
        return int(Path("/proc/self/schedstat").read_text().split()[0])

    def per_round(pause: float, task: Any) -> float:
        before = cpu()
        for _ in range(rounds):
            if pause:
                time.sleep(pause)
            task()
        return (cpu() - before) / rounds / 1000

    per_round(0, work)  # warm
    print(json.dumps({
        "hot": per_round(0, work),
        "paced": per_round(interval, work),
        "wake": per_round(interval, lambda: None),
    }))  # fmt: skip


async def machine_line(interval: float) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--role", "wakes", "--interval", str(interval),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    output, _ = await process.communicate()
    found = json.loads(output)
    cold = found["paced"] - found["wake"]
    return (
        f"machine: a bare wake-up every {interval * 1000:g} ms costs {found['wake']:.0f} us of "
        f"CPU; a fixed piece of Python work costs {found['hot']:.0f} us back to back, "
        f"{cold:.0f} us ({cold / max(found['hot'], 1e-9):.1f}x) after each such wake-up"
    )


# -- the scenarios ---------------------------------------------------------------------------


@dataclass
class FanOut:
    subscribers: int
    latencies: list[float]
    stamps: int
    events: int
    completed: int
    cpu_per_delta_us: float
    cpu_per_event_us: float
    # The server's CPU when nothing streams, over a window as long as the stream's, per
    # upstream delta (what `cpu_per_delta_us` holds that the deltas did not cause).
    idle_per_delta_us: float = 0.0
    replies: int = 1  # replies streaming at once (one subscriber each when > 1)

    @property
    def net_per_delta_us(self) -> float:
        return self.cpu_per_delta_us - self.idle_per_delta_us


@dataclass
class Figures:
    name: str
    rss_idle: int = 0
    rss_subscribed: int = 0
    rss_subscriptions: int = 0
    fan_outs: list[FanOut] = field(default_factory=list)
    busy: FanOut | None = None
    fixed_ms: list[float] = field(default_factory=list)
    concurrent: str = ""


PROBE = {"deltas": ["p"], "delay": 0.0}


async def probe(server: Server, upstream: Upstream, fleet: Fleet, plan: dict[str, int]) -> None:
    """One-delta replies on every thread, until every subscriber saw theirs end."""
    # A scenario starts afresh: what a refused send left in the script goes.
    await upstream.script(len(plan), reset=True, **PROBE)
    semaphore = asyncio.Semaphore(10)

    async def send(thread_id: str) -> None:
        async with semaphore:
            await server.send(thread_id)

    await asyncio.gather(*(send(thread_id) for thread_id in plan))
    await fleet.wait_finals(plan, timeout=PROBE_TIMEOUT)
    fleet.take_finals()
    await fleet.report()


# Seconds the probe reply may take to reach every subscriber (a saturated server is reported).
PROBE_TIMEOUT = 150


async def cpu_rate(server: Server, seconds: float) -> float:
    """The server's CPU (ns per second) over the next `seconds`."""
    before, started = cpu_ns(server.pid), time.monotonic_ns()
    await asyncio.sleep(seconds)
    return (cpu_ns(server.pid) - before) / max(time.monotonic_ns() - started, 1) * 1e9


async def idle_rate(server: Server, seconds: float) -> float:
    """The server's CPU (ns per second) over `seconds` in which nothing is asked of it, once
    the aftermath of what came before (the probe reply's title, its finishing writes) is over:
    it settles when a quarter second costs under 1 % of a core, or after 5 s."""
    deadline = time.monotonic() + 5
    while await cpu_rate(server, 0.25) > 0.01e9 and time.monotonic() < deadline:
        pass
    return await cpu_rate(server, seconds)


async def fan_out(
    server: Server, upstream: Upstream, timeline: CpuTimeline, figures: Figures,
    count: int, deltas: int, interval: float, measure_rss: bool, replies: int = 1,
) -> FanOut:  # fmt: skip
    """`replies` threads (`count` subscribers each) streaming `deltas` every `interval` at
    once, their starts spread over one interval."""
    threads = [await server.new_thread() for _ in range(replies)]
    fleet = Fleet(server)
    try:
        await fleet.open([(thread_id, count) for thread_id in threads])
        await probe(server, upstream, fleet, dict.fromkeys(threads, count))
        if measure_rss:
            figures.rss_subscribed, figures.rss_subscriptions = rss_bytes(server.pid), count
        # A quiet window as long as the stream: the CPU the server spends anyway (and the
        # stream starts on a settled server).
        idle = await idle_rate(server, min(deltas * interval, 5.0)) if interval else 0.0
        await upstream.script(replies, deltas=["x"] * deltas, delay=interval, timestamp_deltas=True)

        async def send_at(index: int, thread_id: str) -> None:
            await asyncio.sleep(index * interval / replies)
            await server.send(thread_id)

        await asyncio.gather(*(send_at(index, t) for index, t in enumerate(threads)))
        await fleet.wait_finals(dict.fromkeys(threads, count))
        timeline.sample()
        finals = fleet.take_finals()
        latencies = await fleet.report()
    finally:
        await fleet.close()
    firsts = [final.first_ns for final in finals if final.first_ns]
    lasts = [final.last_ns for final in finals if final.last_ns]
    events = sum(final.events for final in finals)
    window = max(lasts) - min(firsts) if firsts and lasts else 0
    cpu = timeline.at(max(lasts)) - timeline.at(min(firsts)) if window else float("nan")
    # Steady state: the deltas after each reply's first one (as its subscribers saw them).
    measured = max(replies * (deltas - 1), 1)
    return FanOut(
        subscribers=count,
        latencies=latencies,
        stamps=sum(final.stamps for final in finals),
        events=events,
        completed=sum(1 for final in finals if final.typename == "MessageCompleted"),
        cpu_per_delta_us=cpu / measured / 1000,
        cpu_per_event_us=cpu / max(events - len(finals), 1) / 1000,
        idle_per_delta_us=idle * window / 1e9 / measured / 1000,
        replies=replies,
    )


async def fixed_cost(
    server: Server, upstream: Upstream, timeline: CpuTimeline, replies: int
) -> list[float]:
    """Server CPU (ms) from the sendMessage request to the first delta received."""
    thread_id = await server.new_thread()
    fleet = Fleet(server)
    costs = []
    try:
        await fleet.open([(thread_id, 1)])
        await probe(server, upstream, fleet, {thread_id: 1})
        for _ in range(replies):
            costs.append(await one_fixed_cost(server, upstream, timeline, fleet, thread_id))
        await fleet.report()
    finally:
        await fleet.close()
    return costs


async def one_fixed_cost(
    server: Server, upstream: Upstream, timeline: CpuTimeline, fleet: Fleet, thread_id: str
) -> float:
    """One reply of `fixed_cost` in a thread `fleet` subscribes to (one subscriber)."""
    await upstream.script(1, deltas=["<t:0>", "y"], first_delay=0.0, delay=0.2)
    timeline.sample()
    sent = time.monotonic_ns()
    await server.send(thread_id)
    await fleet.wait_finals({thread_id: 1})
    [final] = fleet.take_finals()
    assert final.first_ns is not None
    return (timeline.at(final.first_ns) - timeline.at(sent)) / 1e6


async def concurrent(
    server: Server, upstream: Upstream, timeline: CpuTimeline, args: argparse.Namespace
) -> str:
    threads = [await server.new_thread() for _ in range(args.replies)]
    fleet = Fleet(server)
    try:
        await fleet.open([(thread_id, 1) for thread_id in threads])
        await probe(server, upstream, fleet, dict.fromkeys(threads, 1))
        await upstream.script(
            args.replies, deltas=["x"] * args.reply_deltas, delay=args.reply_interval,
            timestamp_deltas=True,
        )  # fmt: skip
        started = time.monotonic()
        cpu_before = cpu_ns(server.pid)

        refused: list[str] = []

        async def send_at(index: int, thread_id: str) -> None:
            await asyncio.sleep(index * args.spread / args.replies)
            try:
                await server.send(thread_id)
            except RuntimeError as error:  # an error answer (e.g. DB_UNAVAILABLE)
                refused.append(str(error))

        await asyncio.gather(*(send_at(index, t) for index, t in enumerate(threads)))
        expected = len(threads) - len(refused)
        with contextlib.suppress(TimeoutError):
            await fleet.wait_finals({"*": expected}, timeout=300)
        elapsed = time.monotonic() - started
        cpu = (cpu_ns(server.pid) - cpu_before) / 1e9
        finals = fleet.take_finals()
        latencies = await fleet.report()
    finally:
        await fleet.close()
    completed = sum(1 for final in finals if final.typename == "MessageCompleted")
    ideal = args.spread + args.reply_deltas * args.reply_interval
    refusals = f" ({len(refused)} sends refused: {refused[0][:120]})" if refused else ""
    return (
        f"{completed}/{args.replies} completed{refusals} in {elapsed:.1f} s (ideal {ideal:.1f} s); "
        f"delta p50 {percentile(latencies, 0.5):.1f} ms, p99 {percentile(latencies, 0.99):.1f} "
        f"ms, max {max(latencies, default=float('nan')):.0f} ms; server CPU {cpu / elapsed:.0%} "
        f"of a core ({cpu * 1e6 / max(len(latencies), 1):.0f} us per delta delivered)"
    )


async def measure(server: Server, upstream: Upstream, args: argparse.Namespace) -> Figures:
    figures = Figures(name=server.name)
    await server.start(upstream)
    timeline = CpuTimeline(server.pid)
    timeline.start()
    try:
        # Warm-up: first-use costs (imports, caches, the first conversation) are not streaming.
        await fan_out(server, upstream, timeline, figures, 1, 20, 0.0, measure_rss=False)
        figures.rss_idle = rss_bytes(server.pid)
        largest = max(args.subscribers)
        for count in args.subscribers:
            try:
                result = await fan_out(
                    server, upstream, timeline, figures, count, args.deltas, args.interval,
                    measure_rss=count == largest,
                )  # fmt: skip
            except TimeoutError as error:
                # A saturated server: say so, and skip the larger counts (not a crash).
                print(
                    f"  [{server.name}] {count:>5} subscribers: the probe reply did not reach "
                    f"every subscriber within {PROBE_TIMEOUT} s ({error or 'timeout'})",
                    flush=True,
                )
                break
            figures.fan_outs.append(result)
            print(f"  [{server.name}] {fan_out_line(result, figures.fan_outs[0])}", flush=True)
        if args.parallel > 1 and figures.fan_outs:
            figures.busy = await fan_out(
                server, upstream, timeline, figures, 1, args.deltas, args.interval,
                measure_rss=False, replies=args.parallel,
            )  # fmt: skip
            print(f"  [{server.name}] busy: {fan_out_line(figures.busy, figures.fan_outs[0])}")
        figures.fixed_ms = await fixed_cost(server, upstream, timeline, args.fixed_replies)
        print(f"  [{server.name}] fixed cost: {fixed_line(figures)}", flush=True)
        if args.replies:
            figures.concurrent = await concurrent(server, upstream, timeline, args)
            print(f"  [{server.name}] concurrent: {figures.concurrent}", flush=True)
    finally:
        await timeline.stop()
        await server.stop()
    return figures


def fan_out_line(result: FanOut, single: FanOut) -> str:
    marginal = ""
    if result.subscribers > 1:
        extra = (result.net_per_delta_us - single.net_per_delta_us) / (result.subscribers - 1)
        marginal = f", +{extra:.1f} us per extra subscriber"
    who = (
        f"{result.replies} replies x {result.subscribers} subscriber"
        if result.replies > 1
        else f"{result.subscribers:>5} subscribers"
    )
    return (
        f"{who}: p50 {percentile(result.latencies, 0.5):8.2f} ms, "
        f"p99 {percentile(result.latencies, 0.99):8.2f} ms, "
        f"max {max(result.latencies, default=float('nan')):8.1f} ms; "
        f"{result.stamps} deltas in {result.events} events, "
        f"{result.completed}/{result.subscribers * result.replies} completed; server CPU "
        f"{result.net_per_delta_us:.0f} us per upstream delta ({result.cpu_per_delta_us:.0f} "
        f"with {result.idle_per_delta_us:.0f} idle), "
        f"{result.cpu_per_event_us:.1f} us per delivered event{marginal}"
    )


def fixed_line(figures: Figures) -> str:
    if not figures.fixed_ms:
        return "-"
    return (
        f"median {statistics.median(figures.fixed_ms):.1f} ms, mean "
        f"{statistics.fmean(figures.fixed_ms):.1f} ms of server CPU from sendMessage to the "
        f"first delta ({len(figures.fixed_ms)} replies)"
    )


def print_summary(all_figures: list[Figures], args: argparse.Namespace) -> None:
    print()
    print(
        f"Summary (fan-out: {args.deltas} deltas every {args.interval * 1000:.0f} ms; concurrent: "
        f"{args.replies} replies x {args.reply_deltas} deltas every "
        f"{args.reply_interval * 1000:.0f} ms, sends over {args.spread:.0f} s)"
    )
    for figures in all_figures:
        print(f"== {figures.name}")
        for result in figures.fan_outs:
            print("  " + fan_out_line(result, figures.fan_outs[0]))
        if figures.busy is not None:
            print("  busy: " + fan_out_line(figures.busy, figures.fan_outs[0]))
        print(f"  per-reply fixed cost: {fixed_line(figures)}")
        if figures.concurrent:
            print(f"  concurrent replies: {figures.concurrent}")
        extra = figures.rss_subscribed - figures.rss_idle
        print(
            f"  RSS idle {figures.rss_idle / 2**20:.0f} MiB; with {figures.rss_subscriptions} idle "
            f"subscriptions {figures.rss_subscribed / 2**20:.0f} MiB (+{extra / 2**20:.0f} MiB, "
            f"{extra / max(figures.rss_subscriptions, 1) / 1024:.0f} KiB each)"
        )


def parse_variant(text: str) -> AtlasServer:
    name, _, rest = text.partition("=")
    path, *settings = rest.split(",") if rest else ["."]
    env = dict(setting.split("=", 1) for setting in settings)
    return AtlasServer(name, (ROOT / path).resolve(), env)


async def main(args: argparse.Namespace) -> None:
    upstream = Upstream()
    await upstream.start()
    servers: list[Server] = [parse_variant(text) for text in args.variant or ["atlas=."]]
    if args.floor:
        servers.append(FloorServer())
    all_figures = []
    machine = await machine_line(args.interval)
    print(machine, flush=True)
    try:
        for server in servers:
            print(f"-- {server.name}", flush=True)
            all_figures.append(await measure(server, upstream, args))
    finally:
        await upstream.stop()
    print_summary(all_figures, args)
    print(machine)
    print(await machine_line(args.interval))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])

    def numbers(value: str) -> list[int]:
        return [int(item) for item in value.split(",") if item]

    parser.add_argument(
        "--role", default="driver", choices=["driver", "subscribers", "floor", "wakes"]
    )
    parser.add_argument("config", nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    parser.add_argument(
        "--variant", action="append",
        help="NAME=PATH[,ENV=VALUE...]: an ATLAS source tree to serve (default atlas=.)",
    )  # fmt: skip
    parser.add_argument("--floor", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--subscribers", type=numbers, default=[1, 10, 100, 1000])
    parser.add_argument("--deltas", type=int, default=100)
    parser.add_argument("--interval", type=float, default=0.01)
    parser.add_argument(
        "--parallel", type=int, default=10,
        help="the fan-out stream run by this many replies at once, one subscriber each",
    )  # fmt: skip
    parser.add_argument("--replies", type=int, default=200)
    parser.add_argument("--reply-deltas", type=int, default=60)
    parser.add_argument("--reply-interval", type=float, default=0.066)
    parser.add_argument("--spread", type=float, default=4.0)
    parser.add_argument("--fixed-replies", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="small loads, to try the bench")
    args = parser.parse_args()
    if args.quick:
        args.subscribers, args.replies, args.fixed_replies = [1, 10], 20, 5
    return args


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.role == "subscribers":
        asyncio.run(subscribers_main(json.loads(arguments.config)))
    elif arguments.role == "wakes":
        wakes_main(arguments.interval)
    elif arguments.role == "floor":
        # uvloop, as ATLAS under uvicorn (its `loop="auto"` takes uvloop when installed).
        import uvloop

        uvloop.run(floor_main(arguments.port, arguments.upstream))
    else:
        asyncio.run(main(arguments))
