"""graph/fanout.py's templates: a family's events (a group's deltas) filled into one rendering
instead of running graphql-core per event, only when three probes show the payload quotes the
varying values verbatim; anything else renders each event (the executor here is a stand-in
for graphql-core's: it renders the selection a test gives it). Last, how a rendering goes out:
a prepared frame when the socket takes one."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from atlas_gql.graph.fanout import (
    OperationSink,
    SharedEvent,
    SharedFrames,
    Varying,
    _Render,
    text_frame,
)

Root = tuple[int, str]  # (number, text): the values of an event


@dataclass
class _Result:
    data: Any
    errors: list[Any] | None = None


class _Executor:
    """Renders `selection(root)` as graphql-core would return it; counts its runs."""

    def __init__(self, selection: Callable[[Root], Any]) -> None:
        self.selection = selection
        self.runs = 0

    def build_per_event_executor(self, root: Root) -> _Executor:
        self.root = root
        return self

    def execute_operation(self, _: bool) -> _Result:
        self.runs += 1
        data = self.selection(self.root)
        if data is None:
            return _Result(None, errors=["boom"])
        return _Result(data)

    @staticmethod
    def is_awaitable(_: object) -> bool:
        return False


PROBES: list[Root] = [
    (2_111_111_111, '\ue000"a\\\ue001'),
    (311_111_113, "\ue000bb\n\ue001"),
    (41, "z"),
]


def inside(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)[1:-1]


def varying(root: Root) -> Callable[[], Varying]:
    def probe(n: int) -> tuple[Root, tuple[str, ...]]:
        number, text = PROBES[n]
        return (number, text), (str(number), inside(text))

    return lambda: Varying(family="m1", values=(str(root[0]), inside(root[1])), probe=probe)


def render_all(selection: Callable[[Root], Any], roots: list[Root]) -> tuple[list[str], int, int]:
    """Each root rendered for one group; the payloads, graphql-core runs, events templated."""
    frames = SharedFrames()
    executor = _Executor(selection)
    group = frames.join(("thread", "doc"), lambda: executor)
    assert group is not None
    payloads = []
    for root in roots:
        render = frames.render(
            group, SharedEvent(root, functools.partial(_same, root), varying(root))
        )
        assert render is not None
        payloads.append(render.payload)
    return payloads, executor.runs, frames.templated


def _same(root: Root) -> Root:
    return root


def expected(selection: Callable[[Root], Any], root: Root) -> str:
    return json.dumps({"data": selection(root)}, separators=(",", ":"), ensure_ascii=False)


ROOTS: list[Root] = [(5, "Hello"), (6, ' "quoted" \\ and\nlines \u2603'), (1234, ""), (7, "5")]


def test_a_selection_quoting_its_values_is_filled_into_one_template() -> None:
    def selection(root: Root) -> Any:
        number, text = root
        return {"e": {"n": number, "again": number, "id": f"E:{number}", "t": text, "m": None}}

    payloads, runs, templated = render_all(selection, ROOTS)
    assert payloads == [expected(selection, root) for root in ROOTS]
    assert runs == 3  # the probes only
    assert templated == len(ROOTS)


def test_a_value_not_quoted_verbatim_renders_each_event() -> None:
    def selection(root: Root) -> Any:
        number, text = root
        return {"e": {"n": number + 1, "t": text}}

    payloads, runs, templated = render_all(selection, ROOTS)
    assert payloads == [expected(selection, root) for root in ROOTS]
    assert runs == 3 + len(ROOTS)
    assert templated == 0


def test_a_value_transformed_renders_each_event() -> None:
    def selection(root: Root) -> Any:
        number, text = root
        return {"e": {"n": number, "size": len(text), "upper": text.upper()}}

    payloads, _, templated = render_all(selection, ROOTS)
    assert payloads == [expected(selection, root) for root in ROOTS]
    assert templated == 0


def test_a_probe_that_errors_leaves_no_template() -> None:
    def selection(root: Root) -> Any:
        number, text = root
        return None if number == PROBES[1][0] else {"n": number, "t": text}

    payloads, _, templated = render_all(selection, ROOTS)
    assert payloads == [expected(selection, root) for root in ROOTS]
    assert templated == 0


def test_a_selection_without_the_values_is_one_constant() -> None:
    def selection(_: Root) -> Any:
        return {"e": {"__typename": "MessageDelta", "message": None}}

    payloads, runs, templated = render_all(selection, ROOTS)
    assert payloads == [expected(selection, root) for root in ROOTS]
    assert (runs, templated) == (3, len(ROOTS))


# -- a rendering's frame: prepared when the socket takes one, else through ASGI send -----------


def _sink(writer: Callable[[bytes], bool] | None, sent: list[str]) -> OperationSink:
    async def send(text: str) -> None:
        sent.append(text)

    return OperationSink(
        frames=SharedFrames(), operation_id="7", query="{ x }", variables=None,
        operation_name=None, send=send, is_open=lambda: True, on_too_slow=lambda: None,
        writer=writer,
    )  # fmt: skip


async def test_a_rendering_goes_out_as_a_prepared_frame_when_the_socket_takes_it() -> None:
    written: list[bytes] = []
    sent: list[str] = []

    def writer(frame: bytes) -> bool:
        written.append(frame)
        return True

    sink = _sink(writer, sent)
    assert await sink._send_render(_Render('{"data":{"x":1}}'))
    assert written == [text_frame(b'{"id":"7","type":"next","payload":{"data":{"x":1}}}')]
    assert sent == []


async def test_a_socket_refusing_the_frame_gets_the_message_through_asgi_send() -> None:
    # (Its buffer is over the limit, or it is closing: ASGI send waits or drops it.)
    sent: list[str] = []
    for writer in (None, lambda _: False):
        assert await _sink(writer, sent)._send_render(_Render('{"data":{"x":1}}'))
    assert sent == ['{"id":"7","type":"next","payload":{"data":{"x":1}}}'] * 2
