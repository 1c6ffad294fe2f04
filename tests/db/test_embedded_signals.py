"""The embedded PostgreSQL stops with `atlas-gql serve` on every stop signal (Ctrl-C, SIGTERM,
SIGHUP), with one process and with several workers, and survives the bookkeeping a killed run
leaves behind (a stale pid in pgserver's handle file, a postmaster left running, a stale
postmaster.pid). Every case runs the real command on a real embedded server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from atlas_gql.db.embedded import EmbeddedPostgres, process_is_alive, running_postmaster

ROOT = Path(__file__).resolve().parents[2]


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Serve:
    """`atlas-gql serve` in its own session (as a terminal would run it), output in a file."""

    def __init__(self, data_dir: Path, log: Path, *args: str) -> None:
        environment = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("ATLAS_", "DATABASE_URL", "OPENAI_", "REDIS_URL"))
        }
        environment.update({"ATLAS_DATA_DIR": str(data_dir), "ATLAS_SEED_PASSWORD": "sig-pass"})
        self.port = free_port()
        self.log = log
        with log.open("w") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "atlas_gql", "serve", "--port", str(self.port), *args],
                cwd=data_dir.parent,
                env=environment,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text()

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited early:\n{self.output()}")
            try:
                response = httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2)
            except httpx.HTTPError:
                return False
            return response.status_code == 200

        wait_until(ready, 180, "serve to answer /readyz")

    def signal(self, signum: int, *, whole_group: bool) -> None:
        """`whole_group` is what a terminal does (Ctrl-C, hang-up): the signal reaches the
        server and its workers; otherwise only the server process gets it (`kill PID`)."""
        if whole_group:
            os.killpg(self.process.pid, signum)
        else:
            self.process.send_signal(signum)

    def wait_exit(self, timeout: float = 120) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"serve did not exit:\n{self.output()}") from None


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One data folder for the module, initialised once; no postmaster outlives the module."""
    path = tmp_path_factory.mktemp("embedded-signals") / "atlas-data"
    embedded = EmbeddedPostgres(path)
    embedded.start()
    # What a running server's lock file looks like, for the stale-lock-file case.
    (path / "postmaster.pid.sample").write_text((embedded.pgdata / "postmaster.pid").read_text())
    assert embedded.stop()
    yield path
    postmaster = running_postmaster(embedded.pgdata)
    if postmaster is not None:
        postmaster.terminate()
        postmaster.wait(30)


@pytest.fixture
def serve(data_dir: Path, tmp_path: Path) -> Iterator[Callable[..., Serve]]:
    started: list[Serve] = []

    def start(*args: str) -> Serve:
        server = Serve(data_dir, tmp_path / f"serve-{len(started)}.log", *args)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.process.poll() is None:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()


def postmaster_of(data_dir: Path, server: Serve) -> psutil.Process:
    postmaster = running_postmaster((data_dir / "pgdata").resolve())
    assert postmaster is not None, server.output()
    # The postmaster runs in its own session: a signal to the server's process group cannot
    # reach it, so only `serve` stopping it can make it go away.
    assert os.getsid(postmaster.pid) != os.getsid(server.process.pid)
    return postmaster


def assert_stopped(data_dir: Path, postmaster: psutil.Process) -> None:
    wait_until(lambda: not process_is_alive(postmaster.pid), 60, "the postmaster to exit")
    assert not (data_dir / "pgdata" / "postmaster.pid").exists()


# With one process, each signal has its case below (Ctrl-C after a stale handle, SIGTERM after
# a killed run, the terminal closing after a stale lock file); here, the same with workers.
@pytest.mark.parametrize(
    ("signum", "whole_group"),
    [
        pytest.param(signal.SIGINT, True, id="ctrl-c"),
        pytest.param(signal.SIGTERM, False, id="sigterm"),
        pytest.param(signal.SIGHUP, True, id="terminal-closed"),
    ],
)
def test_every_stop_signal_stops_the_embedded_postgres_with_workers(
    serve: Callable[..., Serve], data_dir: Path, signum: int, whole_group: bool
) -> None:
    server = serve("--workers", "2")
    server.wait_ready()
    postmaster = postmaster_of(data_dir, server)
    assert f"embedded PostgreSQL in {data_dir.resolve() / 'pgdata'}" in server.output()
    server.signal(signum, whole_group=whole_group)
    assert server.wait_exit() == 0, server.output()
    assert_stopped(data_dir, postmaster)
    assert "stopped the embedded PostgreSQL" in server.output()


def test_ctrl_c_stops_it_despite_a_stale_handle(
    serve: Callable[..., Serve], data_dir: Path
) -> None:
    # A pid that no longer runs, as a run killed with SIGKILL leaves in pgserver's list.
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    handles = data_dir / "pgdata" / ".handle_pids.json"
    handles.write_text(json.dumps([ended.pid]))

    server = serve()
    server.wait_ready()
    postmaster = postmaster_of(data_dir, server)
    assert json.loads(handles.read_text()) == [server.process.pid]
    server.signal(signal.SIGINT, whole_group=True)
    assert server.wait_exit() == 0, server.output()
    assert_stopped(data_dir, postmaster)
    assert json.loads(handles.read_text()) == []


def test_sigterm_stops_a_postmaster_left_by_a_killed_run_after_reusing_it(
    serve: Callable[..., Serve], data_dir: Path
) -> None:
    killed = serve()
    killed.wait_ready()
    postmaster = postmaster_of(data_dir, killed)
    killed.signal(signal.SIGKILL, whole_group=False)
    killed.wait_exit()
    # SIGKILL runs no exit handler: the server keeps running, the dead pid stays listed.
    assert process_is_alive(postmaster.pid)
    handles = json.loads((data_dir / "pgdata" / ".handle_pids.json").read_text())
    assert killed.process.pid in handles

    server = serve()
    server.wait_ready()
    assert postmaster_of(data_dir, server).pid == postmaster.pid  # reused, not a second one
    server.signal(signal.SIGTERM, whole_group=False)
    assert server.wait_exit() == 0, server.output()
    assert_stopped(data_dir, postmaster)


def test_closing_the_terminal_stops_it_after_a_stale_lock_file(
    serve: Callable[..., Serve], data_dir: Path
) -> None:
    # After a reboot, the pid in a leftover postmaster.pid may belong to any live process.
    stand_in = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        sample = (data_dir / "postmaster.pid.sample").read_text().splitlines()
        lock_file = data_dir / "pgdata" / "postmaster.pid"
        lock_file.write_text("\n".join([str(stand_in.pid), *sample[1:]]) + "\n")
        server = serve()
        server.wait_ready()
        postmaster = postmaster_of(data_dir, server)
        assert postmaster.pid != stand_in.pid
        server.signal(signal.SIGHUP, whole_group=True)
        assert server.wait_exit() == 0, server.output()
        assert_stopped(data_dir, postmaster)
        assert stand_in.poll() is None  # the unrelated process was left alone
    finally:
        stand_in.kill()
        stand_in.wait()
