"""Server-sent events framing (the WHATWG event-stream format), for the upstream hot path.

The OpenAI SDK parses every streamed event into a pydantic model; for a reply's deltas that is
most of the server's work per token. The Responses adapter reads the raw bytes instead and
hands each buffered read to `SSEDecoder.feed`, which returns every complete event in it
(all events of one wake-up at once), leaving JSON decoding to the caller, who skips the
events it does not use by name."""

from __future__ import annotations

from typing import NamedTuple


class ServerSentEvent(NamedTuple):
    event: str  # "message" when the event names no type
    data: bytes  # its data lines joined by "\n"


class SSEDecoder:
    """Complete events out of a byte stream cut anywhere (mid-line, mid-CRLF)."""

    __slots__ = ("_after_cr", "_buffer")

    def __init__(self) -> None:
        self._buffer = b""  # line ends already made "\n"
        # The last read ended with a CR: a LF first in the next one is the rest of a CRLF.
        self._after_cr = False

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        if self._after_cr:
            self._after_cr = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
        if b"\r" in chunk:
            self._after_cr = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buffer = self._buffer + chunk if self._buffer else chunk
        *blocks, self._buffer = buffer.split(b"\n\n")
        events = []
        for block in blocks:
            event = _parse_block(block)
            if event is not None:
                events.append(event)
        return events

    @property
    def pending(self) -> bytes:
        """Bytes of an event not complete yet."""
        return self._buffer


def _parse_block(block: bytes) -> ServerSentEvent | None:
    # The shape of (nearly) every event of the Responses API, read in one step: an `event:`
    # line, then a single `data:` line, each with the one optional space after the colon.
    if block.startswith(b"event: "):
        end = block.find(b"\n")
        if end > 0 and block.startswith(b"data: ", end + 1) and block.find(b"\n", end + 1) < 0:
            return ServerSentEvent(block[7:end].decode(), block[end + 7 :])
    name = "message"
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
        elif line.startswith(b"event:"):
            value = line[6:]
            name = (value[1:] if value.startswith(b" ") else value).decode()
        # `id:`, `retry:` and `:` comments carry nothing this stream uses.
    if not data:
        return None
    return ServerSentEvent(event=name, data=b"\n".join(data))
