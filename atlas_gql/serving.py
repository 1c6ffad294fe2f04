"""`atlas-gql serve`: uvicorn set up for clients that misbehave, a start-up banner that says what
runs where, and one way down for every stop signal.

Signals: Ctrl-C (SIGINT), SIGTERM (kill, IDE stop buttons, process managers) and SIGHUP (the
terminal closed) all shut the server down gracefully and then let `serve` stop the embedded
PostgreSQL, with one process or with `--workers N`. Uvicorn alone would not: after a graceful
stop it re-raises SIGTERM with the default action (the process dies without running its exit
handlers), SIGHUP kills a single process outright, and its worker supervisor treats SIGHUP as
"restart the workers". The handlers themselves are in atlas_gql.stopping (every command uses
them; this module imports the app's pieces).

Slow clients: uvicorn bounds idle keep-alive connections but not a request still arriving. The
HTTP protocols below close a connection that has not delivered a request's headers within
ATLAS_HEADER_TIMEOUT seconds (of connecting, or of its previous response), and refuse headers
over ATLAS_MAX_HEADER_BYTES (httptools has no limit of its own). The body is bounded inside the
app (atlas_gql.edge.BodyTimeoutMiddleware), so it holds under any server.

Size: over 400 lines on purpose: the supervisor's SIGHUP, the guarded uvicorn protocols (with the
WebSocket protocol's prepared-frame write and its light queue and event, memory per idle
socket) and the banner are the three parts of one command (`serve`) and are tested as it; the
shared pieces they could move to (the error body) already live in `errors.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.applications import Starlette
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.supervisors import Multiprocess
from websockets.protocol import State

from atlas_gql import __version__, stopping
from atlas_gql.ai.broker import Inbox
from atlas_gql.config import MetricsAccess, Settings, get_settings
from atlas_gql.db.url import DatabaseTarget
from atlas_gql.errors import error_body
from atlas_gql.graph.fanout import FRAME_BUFFER_LIMIT, FRAME_WRITER
from atlas_gql.logformat import configure_logging, log_format
from atlas_gql.metrics import MULTIPROCESS_ENV

logger = logging.getLogger(__name__)

KEEP_ALIVE_SECONDS = 5  # uvicorn's default: idle connections between requests are closed
STARTUP_FAILURE = 3  # uvicorn's exit status when the server could not start
# With --workers N, how long a worker may leave the supervisor's health ping unanswered (while
# it starts, or later) before it is killed and replaced. uvicorn's 5 s killed workers that
# were still importing the app on a loaded machine, again and again; a hung worker is still
# replaced, 30 s later.
WORKER_HEALTHCHECK_SECONDS = 30


class _Workers(Multiprocess):
    """uvicorn's worker supervisor, except that SIGHUP stops it (uvicorn restarts the workers):
    closing the terminal must not leave the server, nor its database, running."""

    def handle_hup(self) -> None:
        if stopping.hangup_ignored():
            return
        logger.info("Received SIGHUP, exiting.")
        self.should_exit.set()


def app_factory() -> Starlette:
    """The app uvicorn loads in `serve`. A worker process leaves SIGHUP to its supervisor, which
    then stops it gracefully (SIGTERM), instead of dying at once when the terminal closes."""
    if (
        stopping.HANGUP is not None
        and multiprocessing.parent_process() is not None
        and threading.current_thread() is threading.main_thread()
    ):
        signal.signal(stopping.HANGUP, signal.SIG_IGN)
    from atlas_gql.app import app_factory as build_app

    return build_app()


# --- slow and oversized request heads ----------------------------------------------------------


class _HeaderDeadline:
    """A timer per connection: when it fires and no request is being served (its headers never
    completed), the connection is closed. Armed when the connection opens and after each
    response; a request in progress, or an upgrade to WebSocket, makes it a no-op."""

    def __init__(self, protocol: Any, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.protocol = protocol
        self.loop = loop
        self.timeout = timeout
        self.timer: asyncio.TimerHandle | None = None

    def arm(self) -> None:
        self.cancel()
        self.timer = self.loop.call_later(self.timeout, self.expire)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def expire(self) -> None:
        self.timer = None
        transport = self.protocol.transport
        if transport is None or transport.is_closing():
            return
        if transport.get_protocol() is not self.protocol:  # upgraded to WebSocket
            return
        cycle = self.protocol.cycle
        if cycle is not None and not cycle.response_complete:
            return
        transport.close()


class _HeaderDeadlineMixin:
    """The header deadline's hooks, shared by both uvicorn protocols (set `header_deadline` in
    `__init__`, mixed in before the protocol class)."""

    header_deadline: _HeaderDeadline

    def connection_made(self, transport: Any) -> None:  # asyncio.Transport, as uvicorn types it
        super().connection_made(transport)  # type: ignore[misc]
        self.header_deadline.arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self.header_deadline.cancel()
        super().connection_lost(exc)  # type: ignore[misc]

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self.header_deadline.arm()

    def handle_websocket_upgrade(self, *event: Any) -> None:  # (h11 passes its request)
        super().handle_websocket_upgrade(*event)  # type: ignore[misc]
        # The WebSocket protocol owns the connection now: a pending deadline would only keep
        # this HTTP protocol (its parser, scope, flow control) alive until it fires.
        self.header_deadline.cancel()


class GuardedH11Protocol(_HeaderDeadlineMixin, H11Protocol):
    """uvicorn's h11 protocol with the header deadline (h11 bounds header bytes itself, with
    `h11_max_incomplete_event_size`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_deadline = _HeaderDeadline(self, self.loop, get_settings().atlas_header_timeout)


HTTP_PROTOCOL = "atlas_gql.serving:GuardedH11Protocol"


class LazyEvent:
    """asyncio.Event's set/clear/is_set/wait, its list of waiters made only when one waits."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        if self._set:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)


class FrameWritingWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol (websockets' sans-I/O implementation, uvicorn's default)
    that also writes frames the app prepared, synchronously: the ASGI scope extension
    FRAME_WRITER (graph/fanout.py), with which a reply's delta goes to every subscriber's socket
    as one `transport.write` each, without a task wake-up or an await per socket.

    A prepared frame is a complete, unfragmented text frame without compression (RSV1 clear,
    which RFC 7692 allows even when permessage-deflate was negotiated), so writing it beside
    the websockets protocol leaves that protocol's state as it is. It is refused (False) unless
    the connection is open and taking data: accepted, no close sent or received, the transport
    not paused and holding at most FRAME_BUFFER_LIMIT bytes (the caller queues it instead)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # What uvicorn uses of asyncio.Queue and asyncio.Event (put_nowait/get/empty;
        # set/clear/is_set/wait), without their five deques per socket (memory per idle
        # WebSocket: docs/ai.md, "Memory per idle subscription").
        self.queue = Inbox()  # type: ignore[assignment]
        self.writable = LazyEvent()  # type: ignore[assignment]
        self.writable.set()

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope.setdefault("extensions", {})[FRAME_WRITER] = self.write_frame

    def handle_text(self, event: Any) -> None:
        super().handle_text(event)
        # Handed on (uvicorn keeps its own reference while a message is fragmented). websockets'
        # parser keeps the last frame it parsed (a local of its suspended generator) until the
        # next one: on an idle socket, for the connection's life (memory per socket).
        event.data = b""

    def handle_bytes(self, event: Any) -> None:
        super().handle_bytes(event)
        event.data = b""

    def handle_cont(self, event: Any) -> None:
        super().handle_cont(event)
        event.data = b""

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete:
            # The handshake's request and response (their headers) are of no use once the
            # connection is open: not kept for the connection's life (memory per socket).
            # websockets' parser keeps a reference to the request for the connection's life
            # (a local of its suspended generator): its headers are emptied instead.
            if self.request is not None:
                self.request.headers.clear()
            self.request = self.response = None  # type: ignore[assignment]

    def write_frame(self, frame: bytes) -> bool:
        transport = self.transport
        if (
            not self.handshake_complete
            or self.close_sent
            or self.disconnected
            or self.initial_response is not None
            or self.conn.state is not State.OPEN
            or not self.writable.is_set()
            or transport.is_closing()
            or transport.get_write_buffer_size() > FRAME_BUFFER_LIMIT
        ):
            return False
        transport.write(frame)
        return True


WS_PROTOCOL = FrameWritingWebSocketProtocol

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - uvicorn[standard] brings httptools
    pass
else:

    class GuardedHttpToolsProtocol(_HeaderDeadlineMixin, HttpToolsProtocol):
        """uvicorn's httptools protocol with the header deadline and a header size limit."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            settings = get_settings()
            self.header_deadline = _HeaderDeadline(self, self.loop, settings.atlas_header_timeout)
            self.max_header_bytes = settings.atlas_max_header_bytes
            self.reading_headers = False
            self.header_bytes = 0

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self.reading_headers = True
            self.header_bytes = 0

        def on_headers_complete(self) -> None:
            self.reading_headers = False
            super().on_headers_complete()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if not self.reading_headers or self.transport.is_closing():
                return
            self.header_bytes += len(data)
            if self.header_bytes > self.max_header_bytes:
                self.reading_headers = False
                _refuse_large_headers(self.transport, self.max_header_bytes)

    HTTP_PROTOCOL = "atlas_gql.serving:GuardedHttpToolsProtocol"


def _refuse_large_headers(transport: asyncio.Transport, limit: int) -> None:
    body = error_body(f"Request headers exceed {limit} bytes.", "BAD_REQUEST")
    transport.write(
        b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
        b"content-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n"
        b"connection: close\r\n\r\n" + body
    )
    transport.close()


# --- banner ----------------------------------------------------------------------------------


def listen_url(host: str, port: int) -> str:
    try:
        bracketed = ip_address(host).version == 6
    except ValueError:
        bracketed = False
    shown = f"[{host}]" if bracketed else host
    return f"http://{shown}:{port}/graphql"


def hide_url_password(url: str) -> str:
    """`url` with any password (in the user part or a `password=` parameter) replaced by ***."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user_info, _, host = netloc.rpartition("@")
        user, has_password, _ = user_info.partition(":")
        # A lone `redis://secret@host` is a password to some clients: hide it as well.
        netloc = f"{user}:***@{host}" if has_password else f"***@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(key, "***" if "password" in key.lower() else value) for key, value in pairs],
            safe="*",
        )
    # (written out: urlunsplit drops the `//` of `unix:///path` URLs)
    shown = f"{parts.scheme}://{netloc}{parts.path}"
    return shown + (f"?{query}" if query else "") + (f"#{parts.fragment}" if parts.fragment else "")


def banner(
    *,
    settings: Settings,
    target: DatabaseTarget,
    host: str,
    port: int,
    workers: int,
    reload: bool,
    embedded_pgdata: Path | None,
) -> str:
    """The block `serve` prints before it starts listening: what runs where (no secrets)."""
    if embedded_pgdata is not None:
        database = f"embedded PostgreSQL in {embedded_pgdata} (database {target.database})"
    else:
        database = target.render()
        if target.schema:
            database += f" (schema {target.schema})"
    broker = (
        f"Redis at {hide_url_password(settings.redis_url)}" if settings.redis_url else "in-process"
    )
    proxies = (
        ", ".join(str(network) for network in settings.atlas_trusted_proxies)
        if settings.atlas_trusted_proxies
        else "none (X-Forwarded-For ignored)"
    )
    rows = [
        ("listening", listen_url(host, port)),
        ("workers", f"{workers}" + (" (reloading on code changes)" if reload else "")),
        ("database", database),
        ("broker", broker),
        ("environment", settings.atlas_env.value),
        ("proxies", proxies),
        ("metrics", _metrics_access(settings, workers)),
        ("logs", f"{log_format(settings).value}, level {settings.atlas_log_level.upper()}"),
    ]
    lines = [f"ATLAS {__version__}"]
    lines += [f"  {label:<12} {value}" for label, value in rows]
    return "\n".join(lines)


def _metrics_access(settings: Settings, workers: int) -> str:
    access = {
        MetricsAccess.OFF: "off",
        MetricsAccess.LOOPBACK: "GET /metrics, loopback clients only",
        MetricsAccess.TOKEN: "GET /metrics, bearer token (ATLAS_METRICS_TOKEN)",
    }[settings.atlas_metrics]
    if settings.atlas_metrics is not MetricsAccess.OFF and workers > 1:
        access += "; all workers' series (multiprocess)"
    return access


# --- running ---------------------------------------------------------------------------------


@contextlib.contextmanager
def shared_metrics(workers: int) -> Iterator[None]:
    """With several workers, prometheus-client keeps every series in files of one directory
    that each worker's /metrics reads whole (its multiprocess mode). The directory must be
    empty when the workers start: `serve` makes a fresh one (or empties the one the operator
    named in PROMETHEUS_MULTIPROC_DIR) and removes its own at the end."""
    if workers <= 1:
        yield
        return
    named = os.environ.get(MULTIPROCESS_ENV)
    if named:
        directory = Path(named)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()
        yield
        return
    directory = Path(tempfile.mkdtemp(prefix="atlas-metrics-"))
    os.environ[MULTIPROCESS_ENV] = str(directory)
    try:
        yield
    finally:
        os.environ.pop(MULTIPROCESS_ENV, None)
        shutil.rmtree(directory, ignore_errors=True)


def run_server(*, settings: Settings, host: str, port: int, workers: int, reload: bool) -> None:
    """Serve until a stop signal. Returns after a graceful shutdown, or raises
    KeyboardInterrupt once uvicorn has shut down gracefully (one process)."""
    import uvicorn
    from uvicorn.supervisors import ChangeReload

    configure_logging(settings)
    config = uvicorn.Config(
        "atlas_gql.serving:app_factory",
        factory=True,
        host=host,
        port=port,
        workers=None if reload else workers,
        reload=reload,
        log_level=settings.atlas_log_level.lower(),
        # Logging is ATLAS's (atlas_gql.logformat, in every worker); uvicorn's access log is
        # off: the app's access line replaces it and never holds a query string.
        log_config=None,
        access_log=False,
        # Client addresses come from ClientAddressMiddleware (ATLAS_TRUSTED_PROXIES), not
        # from uvicorn, which would trust X-Forwarded-For from 127.0.0.1 unasked.
        proxy_headers=False,
        http=HTTP_PROTOCOL,
        ws=WS_PROTOCOL,
        h11_max_incomplete_event_size=settings.atlas_max_header_bytes,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        ws_per_message_deflate=settings.atlas_ws_per_message_deflate,
        # A WebSocket message is bounded like an HTTP body, before it is buffered whole.
        ws_max_size=settings.atlas_max_body_bytes,
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_SECONDS,
    )
    server = uvicorn.Server(config)
    if config.should_reload:
        ChangeReload(config, target=server.run, sockets=[config.bind_socket()]).run()
    elif config.workers > 1:
        with shared_metrics(config.workers):
            _Workers(config, sockets=[config.bind_socket()]).run()
    else:
        server.run()
        if not server.started:
            raise SystemExit(STARTUP_FAILURE)
