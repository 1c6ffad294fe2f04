"""An asyncio TCP proxy on loopback in front of a real server, which can black-hole it.

Modes:
- "pass": bytes flow both ways.
- "stall": what a network that drops packets looks like to a client: new connections are
  accepted and never answered, and nothing is forwarded on open ones (bytes wait in the proxy,
  as they would in TCP retransmissions, and flow again when it heals).
- "drop": everything read is thrown away (connections stay open, nothing ever answers).

`CommitCutProxy` (in front of PostgreSQL) cuts one connection right after the server answered
a COMMIT, before the client reads the answer: the server committed, the client sees the
connection drop. `ConfirmationDelayProxy` (in front of Redis) holds back Redis's confirmation
of a SUBSCRIBE of one channel while passing everything else, until released.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Self

# A connection's reading and writing ends.
Ends = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.mode = "pass"
        self._healed = asyncio.Event()
        self._healed.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0
        # Connections accepted, and chunks held or thrown away while black-holed.
        self.connections = 0
        self.blocked_chunks = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def black_hole(self, mode: str = "stall") -> None:
        assert mode in {"stall", "drop"}
        self.mode = mode
        self._healed.clear()

    def heal(self) -> None:
        self.mode = "pass"
        self._healed.set()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            # Accepted, never answered: the upstream connection waits for the heal.
            await self._healed.wait()
            upstream_reader, upstream_writer = await asyncio.open_connection(
                self.target_host, self.target_port
            )
            self._writers.add(upstream_writer)
            await self._relay((reader, writer), (upstream_reader, upstream_writer))
        except (ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            # Only `stop` cancels a connection; asyncio's server would log a cancelled
            # handler as an error.
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _relay(self, client: Ends, server: Ends) -> None:
        (client_reader, client_writer), (server_reader, server_writer) = client, server
        await asyncio.gather(
            self._pipe(client_reader, server_writer), self._pipe(server_reader, client_writer)
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                if self.mode == "drop":
                    self.blocked_chunks += 1
                    continue
                if self.mode == "stall":
                    self.blocked_chunks += 1
                    await self._healed.wait()
                writer.write(chunk)
                await writer.drain()
        finally:
            writer.close()


class CommitCutProxy(TcpProxy):
    """A proxy in front of PostgreSQL that, once armed (`arm(marker)`), lets the COMMIT of the
    first committed transaction whose statements carry `marker` (bytes of its SQL, e.g. a
    table name, or of a bound text parameter) through, then cuts that connection when the
    server answers, before the client reads the answer. `cut` is set then; the proxy passes
    everything afterwards."""

    def __init__(self, target_host: str, target_port: int) -> None:
        super().__init__(target_host, target_port)
        self.marker: bytes | None = None
        self.cut = asyncio.Event()

    def arm(self, marker: bytes) -> None:
        self.marker = marker

    async def _relay(self, client: Ends, server: Ends) -> None:
        (client_reader, client_writer), (server_reader, server_writer) = client, server
        committing = asyncio.Event()

        async def to_server() -> None:
            marked = False
            try:
                while chunk := await client_reader.read(65536):
                    marked = marked or (self.marker is not None and self.marker in chunk)
                    if marked and b"ROLLBACK" in chunk:
                        # That transaction ends without a commit: a later one of this
                        # connection is not the one to cut.
                        marked = False
                    elif marked and b"COMMIT" in chunk:
                        marked = False
                        if self.marker is not None:
                            # The client waits for each answer before its next statement:
                            # what the server sends from now on answers this COMMIT.
                            self.marker = None
                            committing.set()
                    server_writer.write(chunk)
                    await server_writer.drain()
            finally:
                server_writer.close()

        async def to_client() -> None:
            try:
                while chunk := await server_reader.read(65536):
                    if committing.is_set():
                        self.cut.set()
                        return  # the answer is dropped and both sides closed
                    client_writer.write(chunk)
                    await client_writer.drain()
            finally:
                client_writer.close()
                server_writer.close()

        await asyncio.gather(to_server(), to_client())


def resp_frame_end(buffer: bytes, start: int = 0) -> int | None:
    """Where the RESP (2 or 3) value at `start` of `buffer` ends, or None when it is not all
    there yet."""
    line_end = buffer.find(b"\r\n", start)
    if line_end < 0:
        return None
    kind, after = buffer[start : start + 1], line_end + 2
    if kind in b"+-:_,#(":
        return after
    length = int(buffer[start + 1 : line_end])
    if kind in b"$!=":
        end = after + length + 2 if length >= 0 else after
        return end if len(buffer) >= end else None
    assert kind in b"*~>%|", buffer[start : start + 20]
    position: int | None = after
    for _ in range(max(length, 0) * (2 if kind in b"%|" else 1)):
        assert position is not None
        position = resp_frame_end(buffer, position)
        if position is None:
            return None
    return position


class ConfirmationDelayProxy(TcpProxy):
    """A proxy in front of Redis that holds back the confirmation of a SUBSCRIBE of one
    channel (`hold(channel)`; `holding` is set once one is held) and passes every other reply,
    push message and confirmation, until `release()` sends it on: one channel's confirmation
    is late, the others' are not."""

    def __init__(self, target_host: str, target_port: int) -> None:
        super().__init__(target_host, target_port)
        self._held_channel: bytes | None = None
        self._held: list[tuple[asyncio.StreamWriter, bytes]] = []
        self.holding = asyncio.Event()

    def hold(self, channel: str) -> None:
        encoded = channel.encode()
        # The confirmation: [subscribe, channel, count], an array (RESP2) or a push (RESP3).
        self._held_channel = b"3\r\n$9\r\nsubscribe\r\n$%d\r\n%s\r\n" % (len(encoded), encoded)

    def release(self) -> None:
        self._held_channel = None
        for writer, frame in self._held:
            writer.write(frame)
        self._held.clear()

    async def _relay(self, client: Ends, server: Ends) -> None:
        (client_reader, client_writer), (server_reader, server_writer) = client, server

        async def to_client() -> None:
            buffer = b""
            try:
                while chunk := await server_reader.read(65536):
                    buffer += chunk
                    passed = 0
                    while (end := resp_frame_end(buffer, passed)) is not None:
                        frame = buffer[passed:end]
                        if self._held_channel is not None and frame[1:].startswith(
                            self._held_channel
                        ):
                            self._held.append((client_writer, frame))
                            self.holding.set()
                        else:
                            client_writer.write(frame)
                        passed = end
                    buffer = buffer[passed:]
                    await client_writer.drain()
            finally:
                client_writer.close()

        await asyncio.gather(self._pipe(client_reader, server_writer), to_client())
