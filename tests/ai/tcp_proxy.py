"""An asyncio TCP proxy on loopback in front of a real server, which can black-hole it.

Modes:
- "pass": bytes flow both ways.
- "stall": what a network that drops packets looks like to a client: new connections are
  accepted and never answered, and nothing is forwarded on open ones (bytes wait in the proxy,
  as they would in TCP retransmissions, and flow again when it heals).
- "drop": everything read is thrown away (connections stay open, nothing ever answers).
"""

from __future__ import annotations

import asyncio
import contextlib


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
            await asyncio.gather(
                self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer)
            )
        except (ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            # Only `stop` cancels a connection; asyncio's server would log a cancelled
            # handler as an error.
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

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
