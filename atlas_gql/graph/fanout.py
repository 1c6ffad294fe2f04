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

Anything else takes Strawberry's own path, one execution per subscriber: every other event type
(they carry a message, whose fields may depend on the viewer), a rendering with errors, an
operation without a document text, HTTP streams (no sink), and deltas merged for one
subscriber that fell behind (rendered for it alone unless another merged the same span).
graphql-transport-ws semantics are untouched: the frame is the `next` message Strawberry
would send (same id, same payload), never after the operation's `complete` or `error`.
"""

from __future__ import annotations

import json
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterable
from contextvars import ContextVar
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    GraphQLResolveInfo,
    SelectionSetNode,
    VariableNode,
    Visitor,
    visit,
)
from graphql.pyutils import Undefined

from atlas_gql.graph.execution import AtlasExecutor

# Renderings kept per group: the events in flight (a subscriber a few events behind another
# one on the same thread still finds its rendering).
RENDERS_PER_GROUP = 64

GroupKey = tuple[Hashable, ...]


class _Group:
    """Subscribers of one thread with one document and the same relevant variables."""

    __slots__ = ("executor", "renders", "subscribers")

    def __init__(self, executor: Any) -> None:
        self.executor = executor
        self.renders: OrderedDict[Hashable, str | None] = OrderedDict()
        self.subscribers = 0


class SharedFrames:
    """This worker's groups and their recent renderings; counts what it did (tests, bench)."""

    def __init__(self) -> None:
        self.groups: dict[GroupKey, _Group] = {}
        self.executions = 0  # events executed by graphql-core here
        self.shared = 0  # frames written from a rendering another subscriber paid for
        self.fallbacks = 0  # events handed back to Strawberry's per-subscriber path

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

    def render(self, group: _Group, event_key: Hashable, root: Callable[[], Any]) -> str | None:
        """The event's `payload` JSON for the group (None: fall back), rendered at most once."""
        renders = group.renders
        if event_key in renders:
            payload = renders[event_key]
            if payload is None:
                self.fallbacks += 1
            else:
                self.shared += 1
            return payload
        self.executions += 1
        result = group.executor.build_per_event_executor(root()).execute_operation(False)
        payload = None
        if not result.errors and not group.executor.is_awaitable(result):
            payload = json.dumps({"data": result.data}, separators=(",", ":"), ensure_ascii=False)
        else:
            self.fallbacks += 1
        renders[event_key] = payload
        if len(renders) > RENDERS_PER_GROUP:
            renders.popitem(last=False)
        return payload


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
    ) -> None:
        self.frames = frames
        self.query = query
        self.variables = variables or {}
        self.operation_name = operation_name
        self.prefix = '{"id":' + json.dumps(operation_id) + ',"type":"next","payload":'
        self._send = send
        self._is_open = is_open
        self.too_slow = on_too_slow
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

    async def send_shared(
        self,
        info: GraphQLResolveInfo[Any],
        thread_id: uuid.UUID,
        event_key: Hashable,
        root: Callable[[], Any],
    ) -> bool:
        """Write the event's shared frame; False when it must take Strawberry's path."""
        group = self._join(info, thread_id)
        if group is None:
            self.frames.fallbacks += 1
            return False
        payload = self.frames.render(group, event_key, root)
        if payload is None:
            return False
        if self._is_open():
            await self._send(self.prefix + payload + "}")
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
