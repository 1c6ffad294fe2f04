"""Server-sent events framing (the WHATWG event-stream format), for the upstream hot path.

The OpenAI SDK parses every streamed event into a pydantic model; for a reply's deltas that is
most of the server's work per token. The Responses adapter reads the raw bytes instead and
hands each buffered read to `SSEDecoder.feed`, which returns every complete event in it
(all events of one wake-up at once), leaving JSON decoding to the caller, who skips the
events it does not use by name."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    event: str  # "message" when the event names no type
    data: bytes  # its data lines joined by "\n"


class SSEDecoder:
    """Complete events out of a byte stream cut anywhere (mid-line, mid-CRLF)."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        buffer = self._buffer + chunk if self._buffer else chunk
        if b"\r" in buffer:
            # A CR at the very end may be the first half of a CRLF: keep it for the next read.
            held = buffer[-1:] if buffer.endswith(b"\r") else b""
            if held:
                buffer = buffer[:-1]
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        else:
            held = b""
        *blocks, rest = buffer.split(b"\n\n")
        self._buffer = rest + held
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
