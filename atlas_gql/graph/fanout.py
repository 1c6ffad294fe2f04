"""Render once, write many: the WebSocket frames of events every subscriber sees the same.

Strawberry runs each graphql-transport-ws subscription on its own: for every event and every
subscriber, graphql-core executes the selection, Strawberry runs its per-result hooks, and the
result is serialised and framed. For a reply's deltas that is the same work N times over: a
`MessageDelta` carries only the event's own values (its id, number, message id and text;
`message` is null), so its result depends on nothing but the document, the variables its
selection uses, and the event — never on who watches.

This layer sits under Strawberry's per-subscriber machinery:
- the WebSocket handler (`graph/views.py`) gives each operation an `OperationSink`, set in a
  ContextVar for the operation's task (the task that iterates the subscription's resolver);
- `threadEvents` hands each delta to `OperationSink.send_shared` instead of yielding it: the
  sink finds the operation's *group* (same thread, document text, operation name and values of
  the variables the selection below the root field uses: `afterSequence` does not split a
  group), and the group's rendering of that event: executed once by graphql-core (the same
  executor class and schema as Strawberry's path), serialised once to the `payload` JSON;
- each socket then gets `{"id":<its id>,"type":"next","payload":<the shared bytes>}`: the
  per-operation prefix is built once, so the per-subscriber work is a string join and a write.

Written at once, not queued: a subscriber that is keeping up (its reader is waiting for its
next event, nothing queued for it) gets a delta from the publisher itself, through
`OperationSink.write_now` (ai/broker.py calls it as the subscription's `direct` writer): the
complete WebSocket frame (RFC 6455 header and the `next` message, built once per rendering and
operation id, so usually once for every subscriber) goes to the socket's transport in one
write, with no task wake-up, queue or await per subscriber. The server's WebSocket protocol
offers that write as the ASGI scope extension FRAME_WRITER (serving.py's
`FrameWritingWebSocketProtocol`); it refuses (False) a socket that is closing or whose write
buffer holds over FRAME_BUFFER_LIMIT bytes: the event then waits in the subscriber's queue,
where the reader sends it through Strawberry (waiting for the socket to drain) and merges
deltas that fell behind (ai/broker.py). So per socket the transport holds at most
FRAME_BUFFER_LIMIT bytes plus one frame, and the queue ATLAS_SUBSCRIBER_BACKLOG events
(beyond: close 1013).

Anything else takes Strawberry's own path, one execution per subscriber: events carrying a
message whose selection is not plain (below), a rendering with errors, an
operation without a document text, HTTP streams (no sink), and deltas merged for one
subscriber that fell behind (rendered for it alone unless another merged the same span).
graphql-transport-ws semantics are untouched: the frame is the `next` message Strawberry
would send (same id, same payload), never after the operation's `complete` or `error`.

Events that carry a message (MessageCreated, the final events) are shared the same way, through
the reader (`OperationSink.send_plain`), when the group's selection reads only values the event
holds (`plain_selection`: plain attribute fields, no resolver); otherwise Strawberry renders
them for each subscriber. The reader writes a shared rendering (of such an event, or of a
queued delta) as a prepared frame through FRAME_WRITER when the socket takes it, else through
the socket's ASGI `send`, which waits for it to drain.

Size: over 400 lines on purpose: one mechanism (groups, renderings, templates, the selection
analyses that decide what may be shared, and the per-operation sink) whose pieces only make
sense together and are tested together (tests/ai/test_fanout*.py, tests/graph/test_fanout_*).
"""

from __future__ import annotations

import json
import struct
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, NamedTuple

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLInterfaceType,
    GraphQLObjectType,
    GraphQLResolveInfo,
    GraphQLSchema,
    GraphQLUnionType,
    InlineFragmentNode,
    SelectionSetNode,
    VariableNode,
    Visitor,
    get_named_type,
    is_leaf_type,
    visit,
)
from graphql.pyutils import Undefined

from atlas_gql.graph.execution import AtlasExecutor

# Renderings kept per group: the events in flight (a subscriber a few events behind another
# one on the same thread still finds its rendering).
RENDERS_PER_GROUP = 64
# The ASGI scope extension of a WebSocket whose server writes prepared frames: a callable
# `(frame: bytes) -> bool` (False: not written, the socket is closing or its buffer is full).
FRAME_WRITER = "atlas.frame_writer"
# Bytes a socket's transport may hold unsent before frames wait in the subscriber's queue
# instead (asyncio's default high-water mark: the size at which the transport pauses writing).
FRAME_BUFFER_LIMIT = 64 * 1024

GroupKey = tuple[Hashable, ...]
FrameWriter = Callable[[bytes], bool]


def text_frame(data: bytes) -> bytes:
    """An unfragmented, unmasked text frame (RFC 6455 5.2: what a server sends) of `data`."""
    size = len(data)
    if size < 126:
        header = struct.pack("!BB", 0x81, size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", 0x81, 126, size)
    else:
        header = struct.pack("!BBQ", 0x81, 127, size)
    return header + data


class _Render:
    """An event's `payload` JSON for a group, and its frames by operation prefix."""

    __slots__ = ("frames", "payload")

    def __init__(self, payload: str) -> None:
        self.payload = payload
        self.frames: dict[str, bytes] = {}

    def frame(self, prefix: str) -> bytes:
        frame = self.frames.get(prefix)
        if frame is None:
            frame = self.frames[prefix] = text_frame((prefix + self.payload + "}").encode())
        return frame


@dataclass(frozen=True, slots=True)
class Varying:
    """An event of a *family* whose renderings differ only in a few values, each appearing
    verbatim in the payload JSON (e.g. a group's deltas: their number, id, message id and
    text).

    `values`: this event's, as they appear in the JSON (a string's escaped inside, an int's
    digits); `probe(n)`: the root object of an event of the same family with values of its
    own (n = 0, 1, 2: distinct, of different lengths), and those values."""

    family: Hashable
    values: tuple[str, ...]
    probe: Callable[[int], tuple[Any, tuple[str, ...]]]


class SharedEvent(NamedTuple):
    """An event as a group renders it: `key`, its rendering's key in the group (the same event
    reached through two subscribers' queues is one key); `root`, its root value for graphql-core
    (built only when the group executes it); `varying`, for an event of a family (a delta),
    what sets it apart from the others (`Varying`, asked for only when rendering)."""

    key: Hashable
    root: Callable[[], Any]
    varying: Callable[[], Varying] | None = None


class _Template:
    """A family's payload as the text around its varying values: `parts[0] value parts[1]
    value ... parts[-1]`, `slots[i]` naming the value between parts i and i + 1."""

    __slots__ = ("parts", "slots")

    def __init__(self, parts: list[str], slots: list[int]) -> None:
        self.parts = parts
        self.slots = slots

    @classmethod
    def of(cls, payload: str, values: tuple[str, ...]) -> _Template | None:
        """Cut `payload` at every occurrence of the values (None: two of them overlap)."""
        found = sorted(
            (start, -len(value), slot)
            for slot, value in enumerate(values)
            for start in _occurrences(payload, value)
        )
        parts: list[str] = []
        slots: list[int] = []
        end = 0
        for start, negative_length, slot in found:
            if start < end:
                return None
            parts.append(payload[end:start])
            slots.append(slot)
            end = start - negative_length
        parts.append(payload[end:])
        return cls(parts, slots)

    def fill(self, values: tuple[str, ...]) -> str:
        parts = self.parts
        pieces = [parts[0]]
        for index, slot in enumerate(self.slots, start=1):
            pieces.append(values[slot])
            pieces.append(parts[index])
        return "".join(pieces)


def _occurrences(text: str, value: str) -> list[int]:
    starts: list[int] = []
    start = text.find(value)
    while start >= 0 and value:
        starts.append(start)
        start = text.find(value, start + len(value))
    return starts


class _Group:
    """Subscribers of one thread with one document and the same relevant variables."""

    __slots__ = ("executor", "plain", "renders", "subscribers", "templates")

    def __init__(self, executor: Any) -> None:
        self.executor = executor
        # Per event type name: whether the selection is plain for it (`plain_selection`).
        self.plain: dict[str, bool] = {}
        self.renders: OrderedDict[Hashable, _Render | None] = OrderedDict()
        self.subscribers = 0
        # Per family (`Varying`): its template, or None when its renderings are not one.
        self.templates: OrderedDict[Hashable, _Template | None] = OrderedDict()


class SharedFrames:
    """This worker's groups and their recent renderings; counts what it did (tests, bench)."""

    def __init__(self) -> None:
        self.groups: dict[GroupKey, _Group] = {}
        self.executions = 0  # events rendered here (once per group and event)
        self.templated = 0  # of which filled into a family's template (no graphql-core run)
        self.shared = 0  # frames written from a rendering another subscriber paid for
        self.fallbacks = 0  # events handed back to Strawberry's per-subscriber path
        self.direct = 0  # frames written at once by the publisher (no queue, no await)

    def join(self, key: GroupKey, build: Callable[[], Any]) -> _Group | None:
        group = self.groups.get(key)
        if group is None:
            executor = build()
            if executor is None:
                return None
            group = self.groups[key] = _Group(executor)
        group.subscribers += 1
        return group

    def leave(self, key: GroupKey) -> None:
        group = self.groups.get(key)
        if group is not None:
            group.subscribers -= 1
            if group.subscribers <= 0:
                del self.groups[key]

    def render(self, group: _Group, event: SharedEvent) -> _Render | None:
        """The event's `payload` JSON for the group (None: fall back), rendered at most once:
        filled into its family's template when it has one (`varying`: asked for only here,
        once per group and event), else by graphql-core."""
        renders = group.renders
        key = event.key
        if key in renders:
            payload = renders[key]
            if payload is None:
                self.fallbacks += 1
            else:
                self.shared += 1
            return payload
        self.executions += 1
        text = None
        varying = event.varying() if event.varying is not None else None
        template = self._template(group, varying) if varying is not None else None
        if template is not None:
            assert varying is not None
            self.templated += 1
            text = template.fill(varying.values)
        else:
            text = _execute(group, event.root())
        payload = None
        if text is not None:
            payload = _Render(text)
        else:
            self.fallbacks += 1
        renders[key] = payload
        if len(renders) > RENDERS_PER_GROUP:
            renders.popitem(last=False)
        return payload

    def _template(self, group: _Group, varying: Varying) -> _Template | None:
        """The family's template, made at its first event from a probe and checked against
        two more (values of other lengths and contents): a selection whose result depends on
        a value otherwise than by quoting it (or an error) gets none, and renders each event."""
        templates = group.templates
        if varying.family in templates:
            return templates[varying.family]
        template = None
        probes = [varying.probe(n) for n in range(3)]
        texts = [_execute(group, root) for root, _ in probes]
        first = texts[0]
        if first is not None:
            template = _Template.of(first, probes[0][1])
        if template is not None and any(
            text is None or template.fill(values) != text
            for text, (_, values) in zip(texts[1:], probes[1:], strict=True)
        ):
            template = None
        templates[varying.family] = template
        if len(templates) > RENDERS_PER_GROUP:
            templates.popitem(last=False)
        return template


def _execute(group: _Group, root: Any) -> str | None:
    """The group's selection executed by graphql-core for `root`, as `payload` JSON (None:
    errors, or a result that would need awaiting: Strawberry's path renders it)."""
    result = group.executor.build_per_event_executor(root).execute_operation(False)
    if result.errors or group.executor.is_awaitable(result):
        return None
    return json.dumps({"data": result.data}, separators=(",", ":"), ensure_ascii=False)


class _VariableNames(Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()
        self.spreads: set[str] = set()

    def enter_variable(self, node: VariableNode, *_: Any) -> None:
        self.names.add(node.name.value)

    def enter_fragment_spread(self, node: Any, *_: Any) -> None:
        self.spreads.add(node.name.value)


def variables_below(
    field_nodes: Iterable[FieldNode], fragments: dict[str, FragmentDefinitionNode]
) -> set[str]:
    """The variables the selection below a field uses (its arguments excluded), following
    fragment spreads once each."""
    collector = _VariableNames()
    pending: list[SelectionSetNode] = [
        node.selection_set for node in field_nodes if node.selection_set is not None
    ]
    seen: set[str] = set()
    while pending:
        visit(pending.pop(), collector)
        for name in collector.spreads - seen:
            seen.add(name)
            fragment = fragments.get(name)
            if fragment is not None:
                pending.append(fragment.selection_set)
    return collector.names


# graphql-core fields built by Strawberry point back to their Strawberry field here.
_DEFINITION = "strawberry-definition"


def _applies(condition: Any, type_name: str, schema: GraphQLSchema) -> bool:
    """Whether a fragment with this type condition (None: none) applies to `type_name`."""
    if condition is None or condition.name.value == type_name:
        return True
    abstract = schema.get_type(condition.name.value)
    concrete = schema.get_type(type_name)
    return (
        isinstance(abstract, (GraphQLInterfaceType, GraphQLUnionType))
        and isinstance(concrete, GraphQLObjectType)
        and schema.is_sub_type(abstract, concrete)
    )


def plain_selection(
    schema: GraphQLSchema,
    parent: GraphQLObjectType,
    selections: SelectionSetNode,
    fragments: dict[str, FragmentDefinitionNode],
) -> bool:
    """Whether the selection, for an object of type `parent`, reads nothing but the values the
    object holds: every field selected (through fragments that apply to it) is a plain
    Strawberry attribute field (no resolver, no permission, extension or directive) of a leaf
    type, or of an object type whose own selection is plain. Such a result depends on the
    object alone, never on who asks (the viewer, the context)."""
    pending = [selections]
    seen: set[str] = set()
    while pending:
        for node in pending.pop().selections:
            if isinstance(node, FieldNode):
                name = node.name.value
                if name == "__typename":
                    continue
                field = parent.fields.get(name)
                definition = (
                    (field.extensions or {}).get(_DEFINITION) if field is not None else None
                )
                if (
                    field is None
                    or definition is None
                    or getattr(definition, "base_resolver", True) is not None
                    or getattr(definition, "permission_classes", True)
                    or getattr(definition, "extensions", True)
                    or getattr(definition, "directives", True)
                ):
                    return False
                named = get_named_type(field.type)
                if is_leaf_type(named):
                    if node.selection_set is not None:
                        return False
                elif not (
                    isinstance(named, GraphQLObjectType)
                    and node.selection_set is not None
                    and plain_selection(schema, named, node.selection_set, fragments)
                ):
                    return False
            elif isinstance(node, InlineFragmentNode):
                if _applies(node.type_condition, parent.name, schema):
                    pending.append(node.selection_set)
            elif isinstance(node, FragmentSpreadNode):
                name = node.name.value
                fragment = fragments.get(name)
                if fragment is None:
                    return False
                if name not in seen and _applies(fragment.type_condition, parent.name, schema):
                    seen.add(name)
                    pending.append(fragment.selection_set)
    return True


class OperationSink:
    """One graphql-transport-ws operation's way to write shared frames to its socket."""

    def __init__(
        self,
        *,
        frames: SharedFrames,
        operation_id: str,
        query: str,
        variables: dict[str, object] | None,
        operation_name: str | None,
        send: Callable[[str], Awaitable[None]],
        is_open: Callable[[], bool],
        on_too_slow: Callable[[], None],
        writer: FrameWriter | None = None,
    ) -> None:
        self.frames = frames
        self.query = query
        self.variables = variables or {}
        self.operation_name = operation_name
        self.prefix = '{"id":' + json.dumps(operation_id) + ',"type":"next","payload":'
        self._send = send
        self._is_open = is_open
        self.too_slow = on_too_slow
        # The socket's prepared-frame write (None: the server offers none; events are queued).
        self.writer = writer
        self._group: _Group | None = None
        self._key: GroupKey | None = None
        self._unshareable = False

    def _join(self, info: GraphQLResolveInfo[Any], thread_id: uuid.UUID) -> _Group | None:
        if self._group is not None or self._unshareable:
            return self._group
        used = variables_below(info.field_nodes, info.fragments)
        try:
            relevant = json.dumps(
                {name: self.variables.get(name) for name in sorted(used)}, sort_keys=True
            )
        except (TypeError, ValueError):
            self._unshareable = True
            return None
        key: GroupKey = (thread_id, self.query, self.operation_name, relevant)

        def build() -> Any:
            document = DocumentNode(definitions=(info.operation, *info.fragments.values()))
            raw = {name: value for name, value in self.variables.items() if value is not Undefined}
            executor = AtlasExecutor.build(
                info.schema, document, None, info.context, raw, self.operation_name
            )
            return None if isinstance(executor, list) else executor

        self._group = self.frames.join(key, build)
        self._key = key if self._group is not None else None
        self._unshareable = self._group is None
        return self._group

    def _rendering(
        self, info: GraphQLResolveInfo[Any], thread_id: uuid.UUID, event: SharedEvent
    ) -> _Render | None:
        group = self._join(info, thread_id)
        if group is None:
            self.frames.fallbacks += 1
            return None
        return self.frames.render(group, event)

    async def send_shared(
        self, info: GraphQLResolveInfo[Any], thread_id: uuid.UUID, event: SharedEvent
    ) -> bool:
        """Write the event's shared frame; False when it must take Strawberry's path."""
        return await self._send_render(self._rendering(info, thread_id, event))

    async def send_plain(
        self,
        info: GraphQLResolveInfo[Any],
        thread_id: uuid.UUID,
        event: SharedEvent,
        type_name: str,
    ) -> bool:
        """Write the shared frame of an event of another kind than a delta (one that carries a
        message) when the selection reads only values the event holds for its type
        (`plain_selection`): then its result is the same for every subscriber of the group.
        False: Strawberry renders it for this subscriber (a field with a resolver, e.g. one
        that depends on the viewer; an error)."""
        group = self._join(info, thread_id)
        if group is None:
            return False
        plain = group.plain.get(type_name)
        if plain is None:
            event_type = info.schema.get_type(type_name)
            plain = group.plain[type_name] = isinstance(event_type, GraphQLObjectType) and all(
                node.selection_set is not None
                and plain_selection(info.schema, event_type, node.selection_set, info.fragments)
                for node in info.field_nodes
            )
        if not plain:
            self.frames.fallbacks += 1
            return False
        return await self._send_render(self.frames.render(group, event))

    async def _send_render(self, render: _Render | None) -> bool:
        """Send a shared rendering's `next` frame (not after the operation ended); False when
        there is none (the event takes Strawberry's path). Written as a prepared frame when
        the socket takes one now (no ASGI message, no websockets framing: what `write_now`
        writes), else sent through the socket's ASGI `send` (which waits while its buffer
        drains)."""
        if render is None:
            return False
        if self._is_open():
            writer = self.writer
            if writer is None or not writer(render.frame(self.prefix)):
                await self._send(self.prefix + render.payload + "}")
        return True

    def write_now(
        self, info: GraphQLResolveInfo[Any], thread_id: uuid.UUID, event: SharedEvent
    ) -> bool:
        """Write the event's shared frame to the socket at once, without awaiting (the
        publisher calls it while the subscription's reader is idle). True: done (written, or
        the operation is over, so nothing is to be sent); False: queue the event (no writer,
        no shared rendering, or the socket is not taking frames now)."""
        writer = self.writer
        if writer is None:
            return False
        if not self._is_open():
            return True
        render = self._rendering(info, thread_id, event)
        if render is None or not writer(render.frame(self.prefix)):
            return False
        self.frames.direct += 1
        return True

    def close(self) -> None:
        if self._key is not None:
            self.frames.leave(self._key)
            self._key = self._group = None


_SINK: ContextVar[OperationSink | None] = ContextVar("atlas_operation_sink", default=None)


def current_sink() -> OperationSink | None:
    """The WebSocket operation's sink (None on HTTP streams and outside an operation)."""
    return _SINK.get()


def set_sink(sink: OperationSink | None) -> Any:
    return _SINK.set(sink)


def reset_sink(token: Any) -> None:
    _SINK.reset(token)
