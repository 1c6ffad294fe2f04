"""GraphQL types of the AI domain: Assistant, Thread, Message, File (and their enums).

Relation fields (Thread.messages, .project, .assistant, .files, ...) resolve through
per-request DataLoaders."""

from __future__ import annotations

import uuid
from datetime import datetime

import strawberry

from atlas_gql.ai.models import Assistant, File, Message, MessageRole, MessageStatus, Thread
from atlas_gql.graph.relay import Node, encode_global_id

MessageRoleEnum = strawberry.enum(
    MessageRole, name="MessageRole", description="Who wrote a message."
)
MessageStatusEnum = strawberry.enum(
    MessageStatus, name="MessageStatus", description="Where a message is in its life."
)


@strawberry.type(name="Assistant", description="A configured AI assistant (model, instructions).")
class AssistantType(Node):
    db_id: strawberry.Private[uuid.UUID]
    project_db_id: strawberry.Private[uuid.UUID | None]
    name: str
    description: str | None
    model: str
    instructions: str | None
    temperature: float | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_model(cls, assistant: Assistant) -> AssistantType:
        return cls(
            id=strawberry.ID(encode_global_id("Assistant", assistant.id)),
            db_id=assistant.id,
            project_db_id=assistant.project_id,
            name=assistant.name,
            description=assistant.description,
            model=assistant.model,
            instructions=assistant.instructions,
            temperature=assistant.temperature,
            created_at=assistant.created_at,
            updated_at=assistant.updated_at,
        )


@strawberry.type(
    name="Thread", description="A conversation with an assistant (an OpenAI conversation)."
)
class ThreadType(Node):
    db_id: strawberry.Private[uuid.UUID]
    project_db_id: strawberry.Private[uuid.UUID | None]
    assistant_db_id: strawberry.Private[uuid.UUID | None]
    created_by_db_id: strawberry.Private[uuid.UUID]
    title: str | None
    openai_thread_id: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_model(cls, thread: Thread) -> ThreadType:
        return cls(
            id=strawberry.ID(encode_global_id("Thread", thread.id)),
            db_id=thread.id,
            project_db_id=thread.project_id,
            assistant_db_id=thread.assistant_id,
            created_by_db_id=thread.created_by_id,
            title=thread.title,
            openai_thread_id=thread.openai_thread_id,
            created_at=thread.created_at,
            updated_at=thread.updated_at,
        )


@strawberry.type(name="Message", description="One message of a thread.")
class MessageType(Node):
    db_id: strawberry.Private[uuid.UUID]
    thread_db_id: strawberry.Private[uuid.UUID]
    role: MessageRoleEnum  # type: ignore[valid-type]
    content: str
    status: MessageStatusEnum  # type: ignore[valid-type]
    openai_message_id: str | None
    input_tokens: int | None
    output_tokens: int | None
    created_at: datetime
    completed_at: datetime | None

    @classmethod
    def from_model(cls, message: Message) -> MessageType:
        return cls(
            id=strawberry.ID(encode_global_id("Message", message.id)),
            db_id=message.id,
            thread_db_id=message.thread_id,
            role=message.role,
            content=message.content,
            status=message.status,
            openai_message_id=message.openai_message_id,
            input_tokens=message.input_tokens,
            output_tokens=message.output_tokens,
            created_at=message.created_at,
            completed_at=message.completed_at,
        )


@strawberry.type(name="File", description="An uploaded file (stored in OpenAI Files).")
class FileType(Node):
    db_id: strawberry.Private[uuid.UUID]
    filename: str
    bytes: int
    mime_type: str | None
    purpose: str
    openai_file_id: str | None
    created_at: datetime

    @classmethod
    def from_model(cls, file: File) -> FileType:
        return cls(
            id=strawberry.ID(encode_global_id("File", file.id)),
            db_id=file.id,
            filename=file.filename,
            bytes=file.bytes,
            mime_type=file.mime_type,
            purpose=file.purpose,
            openai_file_id=file.openai_file_id,
            created_at=file.created_at,
        )
