"""A thread's reply events, typed: what the orchestrator publishes, the broker carries and
`threadEvents` serves.

One discriminated union (`ThreadEvent`, by `type`), one message payload model (enough to
render a message without the database), and one adapter (`EVENT_ADAPTER`) for the JSON the
Redis broker stores and sends. The in-memory broker passes the objects themselves.

Pydantic's TypeAdapter rather than msgspec: `bench/event_codec.py` measures both (and the
hand-written dict converters they replace); the difference is a few microseconds per event,
only for Redis, and pydantic is already the project's model library."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from atlas_gql.ai.models import (
    AssistantTool,
    Message,
    MessageRole,
    MessageStatus,
    Thread,
)


class _RowPayload(BaseModel):
    """A database row as an event carries it, read from the row's attributes (`of`). The
    graph's MessageType reads a message payload as it is; a thread payload is turned back
    into a detached row (`to_thread`)."""

    model_config = ConfigDict(frozen=True, from_attributes=True)

    @classmethod
    def of(cls, row: Message | Thread) -> Self:
        return cls.model_validate(row)


class MessagePayload(_RowPayload):
    """A message as carried inside an event."""

    id: uuid.UUID
    thread_id: uuid.UUID
    parent_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = None
    assistant_id: uuid.UUID | None = None
    role: MessageRole
    content: str
    status: MessageStatus
    openai_message_id: str | None = None
    openai_response_id: str | None = None
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    error: str | None = None
    created_at: datetime
    completed_at: datetime | None = None
    # The stored citations (ai/citations.py), set when a reply completes.
    citations: list[dict[str, Any]] | None = None


class ThreadPayload(_RowPayload):
    """A thread as carried inside a ThreadUpdated event."""

    id: uuid.UUID
    title: str | None = None
    project_id: uuid.UUID | None = None
    assistant_id: uuid.UUID | None = None
    created_by_id: uuid.UUID
    openai_thread_id: str | None = None
    # The branch shown (Thread.activeLeaf); absent from events encoded before it was added.
    active_leaf_id: uuid.UUID | None = None
    pinned: bool = False
    archived_at: datetime | None = None
    created_at: datetime
    updated_at: datetime

    def to_thread(self) -> Thread:
        """A detached Thread row with these values (for the graph's types)."""
        return Thread(**self.model_dump())


class _ThreadEventBase(BaseModel):
    model_config = ConfigDict(frozen=True)

    # Per thread, strictly increasing (see sequences.py).
    sequence: int
    thread_id: uuid.UUID
    message_id: uuid.UUID


class _MessageEvent(_ThreadEventBase):
    """An event that carries the message as it is now."""

    message: MessagePayload


class _ReplyEnded(_MessageEvent):
    """A reply that ended without completing, and why (readable)."""

    error: str


class MessageCreated(_MessageEvent):
    type: Literal["MessageCreated"] = "MessageCreated"


class MessageDelta(_ThreadEventBase):
    type: Literal["MessageDelta"] = "MessageDelta"
    delta: str


class MessageCompleted(_MessageEvent):
    type: Literal["MessageCompleted"] = "MessageCompleted"


class MessageFailed(_ReplyEnded):
    """FAILED or INCOMPLETE (see `message.status`); a cancelled reply is MessageCancelled."""

    type: Literal["MessageFailed"] = "MessageFailed"


class MessageCancelled(_ReplyEnded):
    """A reply stopped by cancelMessage (status CANCELLED)."""

    type: Literal["MessageCancelled"] = "MessageCancelled"


class ThreadUpdated(_ThreadEventBase):
    """The thread itself changed (its title, named after a reply: `message_id`)."""

    type: Literal["ThreadUpdated"] = "ThreadUpdated"
    thread: ThreadPayload


class ToolCallStatus(enum.StrEnum):
    """How a built-in tool call ended (the ToolCallCompleted event)."""

    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    INCOMPLETE = "INCOMPLETE"


class _ToolCallEvent(_ThreadEventBase):
    """A built-in tool call of the reply: the provider's id of the call, the tool, and what it
    searches for when the provider says."""

    call_id: str
    tool: AssistantTool
    query: str | None = None


class ToolCallStarted(_ToolCallEvent):
    """A built-in tool started working for the reply (e.g. "searching files…")."""

    type: Literal["ToolCallStarted"] = "ToolCallStarted"


class ToolCallCompleted(_ToolCallEvent):
    """A tool call ended: COMPLETED, FAILED or INCOMPLETE, with its query and how many
    results it found when the upstream says."""

    type: Literal["ToolCallCompleted"] = "ToolCallCompleted"
    status: ToolCallStatus
    result_count: int | None = None


TOOL_EVENTS = (ToolCallStarted, ToolCallCompleted)

ThreadEvent = Annotated[
    MessageCreated
    | MessageDelta
    | ToolCallStarted
    | ToolCallCompleted
    | MessageCompleted
    | MessageFailed
    | MessageCancelled
    | ThreadUpdated,
    Field(discriminator="type"),
]
FinalEvent = MessageCompleted | MessageFailed | MessageCancelled
FINAL_EVENTS = (MessageCompleted, MessageFailed, MessageCancelled)

EVENT_ADAPTER: TypeAdapter[ThreadEvent] = TypeAdapter(ThreadEvent)

DEFAULT_FAILURE_TEXT = "The reply did not complete."


def encode_event(event: ThreadEvent) -> str:
    """The event as compact JSON (what Redis carries)."""
    return EVENT_ADAPTER.dump_json(event).decode()


def decode_event(data: str | bytes) -> ThreadEvent:
    return EVENT_ADAPTER.validate_json(data)


def created_event(sequence: int, message: Message) -> MessageCreated:
    return MessageCreated(
        sequence=sequence,
        thread_id=message.thread_id,
        message_id=message.id,
        message=MessagePayload.of(message),
    )


_DELTA_FIELDS = frozenset({"sequence", "thread_id", "message_id", "delta"})
_new_object = object.__new__
_set_attribute = object.__setattr__


def delta_event(
    sequence: int, *, thread_id: uuid.UUID, message_id: uuid.UUID, delta: str
) -> MessageDelta:
    """The event of one delta. The hot path (once per upstream delta): the values are ours,
    so no validation, and the model is filled as `model_construct` would fill it (equal,
    same hash and JSON; tests/ai/test_units.py) at a third of its cost."""
    event = _new_object(MessageDelta)
    _set_attribute(
        event,
        "__dict__",
        {
            "sequence": sequence,
            "thread_id": thread_id,
            "message_id": message_id,
            "type": "MessageDelta",
            "delta": delta,
        },
    )
    _set_attribute(event, "__pydantic_fields_set__", set(_DELTA_FIELDS))
    _set_attribute(event, "__pydantic_extra__", None)
    _set_attribute(event, "__pydantic_private__", None)
    return event


def final_event(sequence: int, message: Message) -> FinalEvent:
    """The event that ends a reply, by the message's final status."""
    payload = MessagePayload.of(message)
    common = {"sequence": sequence, "thread_id": message.thread_id, "message_id": message.id}
    if message.status is MessageStatus.COMPLETED:
        return MessageCompleted(**common, message=payload)
    error = message.error or DEFAULT_FAILURE_TEXT
    if message.status is MessageStatus.CANCELLED:
        return MessageCancelled(**common, message=payload, error=error)
    return MessageFailed(**common, message=payload, error=error)
