"""The frontend flow driven by real client libraries in Node (tests/clients/flow.mjs) against a
live ATLAS and the fake OpenAI: Apollo Client 3 over the WebSocket (GraphQLWsLink + graphql-ws)
and over HTTP multipart subscriptions, and graphql-sse's client. Also graphql-codegen's types
for typical operations, with no `any` and compiling under `tsc --strict`.

Node (20+) and npm are required: without them these tests fail, saying so. Packages come from
package-lock.json (`npm ci`), once, into tests/clients/node_modules (gitignored)."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.ai.conftest import StartServer
from tests.conftest import SEED_PASSWORD

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TRANSPORTS = ("apollo-ws", "apollo-http", "graphql-sse")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"`{name}` is not on PATH: the client tests need Node.js 20+ and npm "
            "(https://nodejs.org); they drive ATLAS with Apollo Client, graphql-sse and "
            "graphql-codegen.",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """tests/clients/node_modules from the lock file, installed when missing, stale or unfinished.

    `npm ci` runs in a staging folder beside it and the finished tree is renamed into place with
    a stamp naming the lock file's digest, written last: an install that was cut short (a killed
    run, a full disk) never counts as installed, so the next run installs again instead of
    importing half-written files. Each pytest-xdist worker has its own session: a file lock
    makes the others wait for the one installing, then find the stamp (two `npm ci` at once
    fail with ENOTEMPTY, and one would replace the tree under the other's `node`)."""
    with (HERE / ".node-install.lock").open("w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        return _install_node_modules()


def _install_node_modules() -> Path:
    node = _tool("node")
    npm = _tool("npm")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True)
    major = int(version.stdout.strip().lstrip("v").split(".")[0])
    if major < 20:
        pytest.fail(f"Node.js 20+ is needed, found {version.stdout.strip()}", pytrace=False)
    modules = HERE / "node_modules"
    stamp = modules / ".atlas-lock-digest"
    lock = HERE / "package-lock.json"
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return modules
    staging = Path(tempfile.mkdtemp(prefix=".node-install-", dir=HERE))
    try:
        for name in ("package.json", "package-lock.json"):
            shutil.copy2(HERE / name, staging / name)
        installed = subprocess.run(
            [npm, "ci", "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=staging,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if installed.returncode != 0:
            pytest.fail(f"npm ci failed:\n{installed.stdout}\n{installed.stderr}", pytrace=False)
        (staging / "node_modules" / stamp.name).write_text(digest)
        shutil.rmtree(modules, ignore_errors=True)
        os.replace(staging / "node_modules", modules)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return modules


async def _run_node(*args: str, on_line: Any = None, timeout: float = 180) -> list[Any]:
    """Run `node ARGS` in tests/clients; its JSON stdout lines (each also to `on_line`)."""
    process = await asyncio.create_subprocess_exec(
        _tool("node"),
        *args,
        cwd=HERE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NODE_ENV": "production"},
    )
    assert process.stdout is not None
    assert process.stderr is not None
    lines: list[Any] = []

    async def read() -> None:
        assert process.stdout is not None
        async for raw in process.stdout:
            text = raw.decode().strip()
            if not text.startswith("{"):
                continue
            line = json.loads(text)
            lines.append(line)
            if on_line is not None:
                on_line(line)

    try:
        await asyncio.wait_for(asyncio.gather(read(), process.wait()), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"node {' '.join(args)} timed out; output so far: {lines}")
    stderr = (await process.stderr.read()).decode()
    assert process.returncode == 0, f"node {args[0]} failed: {lines}\n{stderr}"
    return lines


async def test_apollo_and_graphql_sse_drive_the_whole_flow(
    node_modules: Path, start_ai_server: StartServer
) -> None:
    ai = await start_ai_server(atlas_openai_timeout=30.0)
    # Every reply streams its deltas, then waits before completing until the client has
    # re-subscribed mid-reply: the re-subscription must then replay what it missed.
    ai.fake.gates["complete"] = asyncio.Event()
    resumed = []

    def on_line(line: dict[str, Any]) -> None:
        if "resumed" in line:
            resumed.append(line["resumed"])
            ai.fake.gates["complete"].set()
            ai.fake.gates["complete"] = asyncio.Event()

    lines = await _run_node(
        "flow.mjs",
        ai.server.http_url,
        ai.server.ws_url,
        "pm@example.com",
        SEED_PASSWORD,
        *TRANSPORTS,
        on_line=on_line,
    )
    results = {line["ok"]: line for line in lines if "ok" in line}
    assert set(results) == set(TRANSPORTS), lines
    assert resumed == list(TRANSPORTS)
    for result in results.values():
        assert result["text"] == "Hello, this is ATLAS."
        assert result["resumedAfter"] > 0
        # Load-then-subscribe starts after the loaded thread's lastEventSequence.
        assert result["lastEventSequence"] is True
    slots = ai.server.app.state.atlas["graphql"].stream_slots
    assert slots.open == 0


async def test_codegen_types_have_no_any_and_compile(node_modules: Path, tmp_path: Path) -> None:
    await _run_node("codegen.mjs", str(ROOT / "schema" / "schema.graphql"), str(tmp_path))
    files = [tmp_path / "schema.ts", tmp_path / "operations.ts"]
    for path in files:
        # Comments (the schema's descriptions) may say "any"; the code may not.
        code = re.sub(r"/\*.*?\*/", "", path.read_text(), flags=re.DOTALL)
        offending = [line for line in code.splitlines() if re.search(r"\bany\b", line)]
        assert offending == [], (path.name, offending)
    operations = files[1].read_text()
    for name in (
        "LoginMutation",
        "ThreadEventsSubscription",
        "ThreadEventsSubscriptionVariables",
        "ProjectsQuery",
        "UploadFileMutation",
        "SetProjectSettingMutationVariables",
    ):
        assert f"export type {name} =" in operations, name
    checked = await asyncio.create_subprocess_exec(
        _tool("node"),
        str(node_modules / "typescript" / "bin" / "tsc"),
        "--noEmit",
        "--strict",
        "--skipLibCheck",
        "--target",
        "es2022",
        "--lib",
        "es2022,dom",
        *map(str, files),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await checked.communicate()
    assert checked.returncode == 0, output.decode()
