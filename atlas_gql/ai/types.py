"""GraphQL types of the AI domain: Assistant, Thread, Message, File (and their enums), the
inputs and payloads of its mutations, and the events of `threadEvents`.

Relation fields (Thread.messages, .project, .assistant, .files, ...) resolve through
per-request DataLoaders."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, TypeAlias

import strawberry

from atlas_gql.ai import events, loaders
from atlas_gql.ai.models import (
    Assistant,
    AssociableType,
    File,
    Message,
    MessageRole,
    MessageStatus,
    Thread,
)
from atlas_gql.auth import loaders as auth_loaders
from atlas_gql.auth.graph import UserType
from atlas_gql.db.pagination import page_request
from atlas_gql.graph.context import Info
from atlas_gql.graph.inputs import After, Before, First, Last
from atlas_gql.graph.relay import (
    REFUSED,
    Connection,
    Node,
    from_row,
    resolve_node_of,
    to_connection,
)
from atlas_gql.ids import encode_global_id

# Thread.project and Assistant.project name the Project type, which sits above this module
# (Project.threads lists ThreadType): strawberry.lazy resolves the name when the schema is
# built, and `resolve_node_of` finds the visible project through the node registry, so this
# module never imports `projects.graph`. To mypy the field is a Node.
if TYPE_CHECKING:
    LazyProject: TypeAlias = Node
else:
    LazyProject = Annotated["ProjectType", strawberry.lazy("atlas_gql.projects.graph")]  # noqa: F821


async def _project(info: Info, project_id: uuid.UUID | None) -> LazyProject | None:
    if project_id is None:
        return None
    # Null when the viewer may not see the project (e.g. the creator of an assistant who has
    # since left its project), as everywhere else.
    project: LazyProject | None = await resolve_node_of(info.context, "Project", project_id)
    return project


async def _files(info: Info, kind: AssociableType, target_id: uuid.UUID) -> list[FileType]:
    files = await info.context.loader(loaders.files_by_target).load((kind, target_id))
    return [FileType.from_model(file) for file in files]


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
        return from_row(cls, "Assistant", assistant)

    @strawberry.field(description="The project sharing this assistant; null when personal.")
    async def project(self, info: Info) -> LazyProject | None:
        return await _project(info, self.project_db_id)

    @strawberry.field(description="Files attached to the assistant.")
    async def files(self, info: Info) -> list[FileType]:
        return await _files(info, AssociableType.ASSISTANT, self.db_id)


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
        return from_row(cls, "Thread", thread)

    @strawberry.field(description="The project the thread belongs to; null when personal.")
    async def project(self, info: Info) -> LazyProject | None:
        return await _project(info, self.project_db_id)

    @strawberry.field(description="The assistant answering in this thread (null if deleted).")
    async def assistant(self, info: Info) -> AssistantType | None:
        if self.assistant_db_id is None:
            return None
        assistant = await info.context.loader(loaders.assistant_by_id).load(self.assistant_db_id)
        return AssistantType.from_model(assistant) if assistant else None

    @strawberry.field(name="createdBy", description="Who started the thread.")
    async def created_by(self, info: Info) -> UserType | None:
        user = await info.context.loader(auth_loaders.user_by_id).load(self.created_by_db_id)
        return UserType.from_model(user) if user else None

    @strawberry.field(
        description="The thread's messages, oldest first (Relay connection; `last: n` gives "
        "the n most recent). " + REFUSED
    )
    async def messages(
        self,
        info: Info,
        first: First = None,
        after: After = None,
        last: Last = None,
        before: Before = None,
    ) -> Connection[MessageType] | None:
        request = page_request(first=first, after=after, last=last, before=before)
        page = await info.context.loader(loaders.messages_page).load((self.db_id, request))
        return to_connection(page, MessageType.from_model)

    @strawberry.field(description="Files attached to the thread.")
    async def files(self, info: Info) -> list[FileType]:
        return await _files(info, AssociableType.THREAD, self.db_id)


@strawberry.type(name="Message", description="One message of a thread.")
class MessageType(Node):
    db_id: strawberry.Private[uuid.UUID]
    thread_db_id: strawberry.Private[uuid.UUID]
    role: MessageRole
    content: str
    status: MessageStatus
    openai_message_id: str | None
    input_tokens: int | None
    output_tokens: int | None
    error: str | None = strawberry.field(
        description="Why a reply is FAILED, INCOMPLETE or CANCELLED (readable)."
    )
    created_at: datetime
    completed_at: datetime | None

    @classmethod
    def from_model(cls, message: Message) -> MessageType:
        return from_row(cls, "Message", message)

    @strawberry.field(description="Files sent with the message.")
    async def files(self, info: Info) -> list[FileType]:
        return await _files(info, AssociableType.MESSAGE, self.db_id)


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
        return from_row(cls, "File", file)


# -- inputs and payloads ---------------------------------------------------------------------


@strawberry.input
class _InProject:
    project_id: strawberry.ID | None = strawberry.field(
        default=None, description="Only those of this project."
    )


@strawberry.input(description="Filters of `assistants`.")
class AssistantFilter(_InProject):
    pass


@strawberry.input(description="A new assistant.")
class CreateAssistantInput:
    name: str = strawberry.field(description="1 to 200 characters.")
    model: str | None = strawberry.field(
        default=None,
        description="A model of the allowed list (ATLAS_ALLOWED_MODELS, else the priced "
        "models); default ATLAS_DEFAULT_MODEL.",
    )
    instructions: str | None = strawberry.field(
        default=None, description="The system instructions sent with every reply."
    )
    temperature: float | None = strawberry.field(
        default=None, description="Sampling temperature, 0 to 2; null for the model's default."
    )
    description: str | None = strawberry.field(default=None, description="What it is for.")
    project_id: strawberry.ID | None = strawberry.field(
        default=None,
        description="Share it with a project (MANAGER role or higher); null keeps it personal.",
    )


@strawberry.input(
    description="Changes to an assistant; omitted fields stay as they are, null clears one "
    "(refused for `name` and `model`)."
)
class UpdateAssistantInput:
    name: strawberry.Maybe[str | None]
    model: strawberry.Maybe[str | None]
    instructions: strawberry.Maybe[str | None]
    temperature: strawberry.Maybe[float | None]
    description: strawberry.Maybe[str | None]


@strawberry.input(description="Filters of `threads`.")
class ThreadFilter(_InProject):
    pass


@strawberry.input(description="A new thread.")
class CreateThreadInput:
    assistant_id: strawberry.ID = strawberry.field(
        description="The assistant answering (of the same project, or personal)."
    )
    project_id: strawberry.ID | None = strawberry.field(
        default=None,
        description="The project (MEMBER role or higher); null for a personal thread.",
    )
    title: str | None = strawberry.field(default=None, description="Up to 300 characters.")


@strawberry.input(description="Changes to a thread; omitted fields stay as they are.")
class UpdateThreadInput:
    title: strawberry.Maybe[str | None] = strawberry.field(
        description="The new title (up to 300 characters); null clears it."
    )


@strawberry.input(description="A message to a thread's assistant.")
class SendMessageInput:
    thread_id: strawberry.ID
    content: str = strawberry.field(
        description="1 to ATLAS_MAX_MESSAGE_CHARS (default 32000) characters."
    )
    file_ids: list[strawberry.ID] = strawberry.field(
        default_factory=list,
        description="Uploaded files to attach and give to the model as input files.",
    )


@strawberry.type(description="What sendMessage stored; the reply streams on `threadEvents`.")
class SendMessagePayload:
    user_message: MessageType = strawberry.field(description="The message sent (COMPLETED).")
    assistant_message: MessageType = strawberry.field(
        description="The reply, IN_PROGRESS until its MessageCompleted / MessageFailed event."
    )


# -- thread events ---------------------------------------------------------------------------


@strawberry.type(description="A message was added to the thread.")
class MessageCreated:
    sequence: int = strawberry.field(description="Per thread, strictly increasing.")
    message: MessageType


@strawberry.type(description="Text appended to a reply in progress; deltas join to its content.")
class MessageDelta:
    sequence: int
    message_id: strawberry.ID
    delta: str


@strawberry.type(description="A reply finished (COMPLETED) with its full text and usage.")
class MessageCompleted:
    sequence: int
    message: MessageType


@strawberry.type(
    description="A reply ended without completing: FAILED, INCOMPLETE or CANCELLED (see "
    "`message.status`), with the partial text kept."
)
class MessageFailed:
    sequence: int
    message_id: strawberry.ID
    message: MessageType
    error: str = strawberry.field(description="What went wrong, readable.")


ThreadEvent = Annotated[
    MessageCreated | MessageDelta | MessageCompleted | MessageFailed,
    strawberry.union("ThreadEvent", description="An event of a thread's live stream."),
]


def graph_event(event: events.ThreadEvent) -> Any:
    sequence = event.sequence
    if isinstance(event, events.MessageDelta):
        message_gid = strawberry.ID(encode_global_id("Message", event.message_id))
        return MessageDelta(sequence=sequence, message_id=message_gid, delta=event.delta)
    message = MessageType.from_model(event.message.to_message())
    if isinstance(event, events.MessageCreated):
        return MessageCreated(sequence=sequence, message=message)
    if isinstance(event, events.MessageCompleted):
        return MessageCompleted(sequence=sequence, message=message)
    # MessageCancelled is served as MessageFailed (status CANCELLED) until the schema has it.
    return MessageFailed(
        sequence=sequence,
        message_id=strawberry.ID(encode_global_id("Message", event.message_id)),
        message=message,
        error=event.error,
    )
