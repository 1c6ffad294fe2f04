"""The embedded PostgreSQL (pgserver) used when DATABASE_URL is unset.

pgserver keeps the pids of the processes using a data folder in `pgdata/.handle_pids.json`
and stops the server when the last of them exits. Two things defeat that bookkeeping, and
this module takes over starting and stopping to cover them:
- a process killed without running its exit handlers (SIGKILL, a crash, an OOM kill) leaves
  its pid in the list forever, so every later run believes somebody still uses the server and
  leaves it running. Pids of processes that no longer run are forgotten at start and at stop;
- a `postmaster.pid` naming a live process that is not this folder's postmaster (the pid was
  reused, e.g. after a reboot) makes pgserver hand out a server that does not exist, and
  PostgreSQL refuses to start. Such a lock file is removed before starting.
A postmaster left behind by a killed run is reused when it really is this folder's server,
and stopped by the next run's last user like one that run started itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

logger = logging.getLogger(__name__)

HANDLES_FILE = ".handle_pids.json"  # pgserver's name
FAST_SHUTDOWN_SECONDS = 60.0
IMMEDIATE_SHUTDOWN_SECONDS = 10.0


def _pgserver() -> Any:
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI): harmless here.
        warnings.simplefilter("ignore")
        import pgserver

    return pgserver


class EmbeddedPostgres:
    """A PostgreSQL server whose data lives under `data_dir/pgdata`; reused across starts."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self._server: Any = None
        self._attached = False

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def handles_path(self) -> Path:
        return self.pgdata / HANDLES_FILE

    def start(self) -> str:
        """Start (or attach to) the server and return its postgresql:// URL for database `atlas`."""
        pgserver = _pgserver()
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self._attached = True  # from here on, stop() must run even if starting fails midway
        with self._handles_locked():
            self._forget_stale_handles()
            self._forget_foreign_lock_file()
        self._server = pgserver.get_server(self.pgdata, cleanup_mode="stop")
        with self._handles_locked():
            # pgserver registers a process once per data folder; register again after a stop().
            self._write_handles(sorted({*self._read_handles(), os.getpid()}))
        uri: str = self._server.get_uri("atlas")
        logger.info("embedded PostgreSQL running in %s", self.pgdata)
        return uri

    def stop(self) -> bool:
        """Give up this process's use of the server and stop it if no other live process uses
        it (its data stays). Returns whether this call stopped a running server."""
        if not self._attached:
            return False
        self._attached = False
        self._server = None
        with self._handles_locked():
            others = [pid for pid in self._live_handles() if pid != os.getpid()]
            self._write_handles(others)
            if others:
                logger.info("embedded PostgreSQL left running for processes %s", others)
                return False
            postmaster = running_postmaster(self.pgdata)
            if postmaster is None:
                return False
            _shut_down(postmaster)
        logger.info("embedded PostgreSQL in %s stopped", self.pgdata)
        return True

    @contextlib.contextmanager
    def _handles_locked(self) -> Iterator[None]:
        # pgserver's own inter-process lock guards its handle list and its starting and
        # stopping; a second lock object on the same file would not exclude this process.
        with _pgserver().PostgresServer._lock:
            yield

    def _read_handles(self) -> list[int]:
        try:
            values = json.loads(self.handles_path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError):
            logger.warning("unreadable %s: starting a new list", self.handles_path)
            return []
        if not isinstance(values, list):
            return []
        return [value for value in values if isinstance(value, int) and value > 0]

    def _write_handles(self, pids: list[int]) -> None:
        if self.pgdata.is_dir():
            self.handles_path.write_text(json.dumps(pids))

    def _live_handles(self) -> list[int]:
        return [pid for pid in self._read_handles() if process_is_alive(pid)]

    def _forget_stale_handles(self) -> None:
        if not self.handles_path.exists():
            return  # (a new folder must stay empty until initdb has run)
        listed = self._read_handles()
        live = [pid for pid in listed if process_is_alive(pid)]
        stale = sorted(set(listed) - set(live))
        if stale:
            logger.warning(
                "embedded PostgreSQL: forgetting processes %s, which ended without releasing "
                "the server (killed?)",
                stale,
            )
        self._write_handles(live)  # also replaces an unreadable file

    def _forget_foreign_lock_file(self) -> None:
        lock_file = self.pgdata / "postmaster.pid"
        pid = _lock_file_pid(lock_file)
        if pid is None or running_postmaster(self.pgdata) is not None:
            return
        if not process_is_alive(pid):
            return  # PostgreSQL itself recovers from a lock file naming a dead process
        # The pid is alive but is not this folder's postmaster: the file is stale, and both
        # pgserver ("already running") and PostgreSQL ("another server running?") trust it.
        logger.warning("embedded PostgreSQL: removing stale %s (pid %d is not it)", lock_file, pid)
        socket_dir, port = _lock_file_socket(lock_file)
        lock_file.unlink(missing_ok=True)
        if socket_dir is not None and port is not None:
            (socket_dir / f".s.PGSQL.{port}.lock").unlink(missing_ok=True)


def process_is_alive(pid: int) -> bool:
    """Whether `pid` is a running process (a zombie has ended; it only awaits its parent)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def running_postmaster(pgdata: Path) -> psutil.Process | None:
    """The live postmaster serving `pgdata`, if any: the process `postmaster.pid` names, when
    it is a `postgres` started on this very folder."""
    pid = _lock_file_pid(pgdata / "postmaster.pid")
    if pid is None:
        return None
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        if process.name() != "postgres" or str(pgdata) not in process.cmdline():
            return None
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return process


def _shut_down(postmaster: psutil.Process) -> None:
    """Fast shutdown (what `pg_ctl stop` does: SIGINT, then wait), escalating if it hangs."""
    for signum, wait in (
        (signal.SIGINT, FAST_SHUTDOWN_SECONDS),
        (signal.SIGQUIT, IMMEDIATE_SHUTDOWN_SECONDS),
        (signal.SIGKILL, IMMEDIATE_SHUTDOWN_SECONDS),
    ):
        try:
            postmaster.send_signal(signum)
            postmaster.wait(wait)
            return
        except psutil.NoSuchProcess:
            return
        except psutil.TimeoutExpired:
            logger.warning("embedded PostgreSQL did not stop within %ss", wait)


def _lock_file_pid(lock_file: Path) -> int | None:
    try:
        first_line = lock_file.read_text().split("\n", 1)[0].strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(first_line) if first_line.isdigit() else None


def _lock_file_socket(lock_file: Path) -> tuple[Path | None, int | None]:
    try:
        lines = lock_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None, None
    port = lines[3].strip() if len(lines) > 3 else ""
    socket_dir = lines[4].strip() if len(lines) > 4 else ""
    return (Path(socket_dir) if socket_dir else None), (int(port) if port.isdigit() else None)
