"""One way down for every stop signal: Ctrl-C (SIGINT), SIGTERM and SIGHUP all end a command
the way Ctrl-C does, so its `finally` blocks and exit handlers (which stop an embedded
PostgreSQL) run whichever arrives (atlas_gql.serving explains what uvicorn alone would do).

A module of its own, importing nothing of ATLAS: every `atlas-gql` command enters
`stopping_on_signals` first (`cli.main`), and a command that does not serve must not pay for
importing the app (the GraphQL schema, the AI provider) to get it.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType

HANGUP: int | None = getattr(signal, "SIGHUP", None)  # (not on Windows)
_hangup_ignored = False


def hangup_ignored() -> bool:
    """Whether SIGHUP was ignored when `stopping_on_signals` was entered (`nohup`)."""
    return _hangup_ignored


def stop_signals() -> list[int]:
    return [signal.SIGINT, signal.SIGTERM, *([HANGUP] if HANGUP is not None else [])]


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _hang_up(signum: int, frame: FrameType | None) -> None:
    # Stop as on SIGTERM, through whoever handles SIGTERM at this moment: uvicorn (a graceful
    # shutdown) while it serves, `_interrupt` before and after.
    signal.raise_signal(signal.SIGTERM)


@contextlib.contextmanager
def stopping_on_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP stop `serve` the way Ctrl-C does, so the caller's `finally` (which
    stops the embedded PostgreSQL) runs whichever arrives. SIGHUP stays ignored when it was
    ignored on entry (`nohup atlas-gql serve`)."""
    global _hangup_ignored
    previous = {signum: signal.getsignal(signum) for signum in stop_signals()}
    _hangup_ignored = HANGUP is not None and previous[HANGUP] == signal.SIG_IGN
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    if HANGUP is not None and not _hangup_ignored:
        signal.signal(HANGUP, _hang_up)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold stop signals for the duration of the block and act on them right after it (while
    the embedded PostgreSQL starts, so it is never left half-started and unaccounted for)."""
    received: list[int] = []

    def remember(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    watched = [s for s in stop_signals() if signal.getsignal(s) != signal.SIG_IGN]
    previous = {signum: signal.signal(signum, remember) for signum in watched}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(received):
            signal.raise_signal(signum)


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """While the embedded PostgreSQL stops, a second Ctrl-C must not abandon it halfway."""
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in stop_signals()}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
