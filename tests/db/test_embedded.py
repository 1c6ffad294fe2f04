"""With no DATABASE_URL, `atlas-gql serve` runs on an embedded PostgreSQL under ATLAS_DATA_DIR,
and comes up again on the same data."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(data_dir: Path, cwd: Path, port: int) -> subprocess.Popen[str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("ATLAS_", "DATABASE_URL", "OPENAI_", "REDIS_URL"))
    }
    environment.update({"ATLAS_DATA_DIR": str(data_dir), "ATLAS_SEED_PASSWORD": "embedded-pass"})
    return subprocess.Popen(
        [sys.executable, "-m", "atlas_gql", "serve", "--port", str(port)],
        cwd=cwd,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_ready(process: subprocess.Popen[str], port: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"server exited: {process.stdout.read() if process.stdout else ''}"
            )
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError("server did not become ready")


def stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGINT)
    try:
        output, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return output


def test_serve_on_embedded_postgres_and_restart_on_same_data(tmp_path: Path) -> None:
    data_dir = tmp_path / "atlas-data"
    port = free_port()
    first = start_server(data_dir, tmp_path, port)
    try:
        wait_ready(first, port)
        response = httpx.post(
            f"http://127.0.0.1:{port}/graphql", json={"query": "{ __typename }"}, timeout=5
        )
        assert response.json() == {"data": {"__typename": "Query"}}
        page = httpx.get(f"http://127.0.0.1:{port}/graphql", headers={"Accept": "text/html"})
        assert page.status_code == 200
        assert "graphiql" in page.text.lower()
    finally:
        first_output = stop(first)
    assert "seeded an empty database" in first_output
    assert (data_dir / "pgdata" / "PG_VERSION").exists()

    port = free_port()
    second = start_server(data_dir, tmp_path, port)
    try:
        wait_ready(second, port)
    finally:
        second_output = stop(second)
    # Same data: the database was not empty, so nothing was seeded again.
    assert "seeded an empty database" not in second_output
