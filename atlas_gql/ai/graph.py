"""The AI part of the graph: assistants, threads, messages, files, and `threadEvents`."""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator
from typing import Annotated, Any, cast

import strawberry
from strawberry.file_uploads import Upload
from strawberry.types import Info

from atlas_gql.ai import events, service
from atlas_gql.ai import files as files_service
from atlas_gql.ai.types import AssistantType, FileType, MessageType, ThreadType
from atlas_gql.auth.models import PermissionName
from atlas_gql.auth.permissions import AuthenticatedDirective, authenticated, requires
from atlas_gql.auth.sessions import load_viewer_for_session
from atlas_gql.auth.viewer import Viewer
from atlas_gql.db.pagination import page_request
from atlas_gql.errors import AtlasError, Unauthenticated
from atlas_gql.graph.context import Context
from atlas_gql.graph.errors import as_graphql_error
from atlas_gql.graph.relay import Connection, register_node, to_connection
from atlas_gql.ids import decode_id_of, encode_global_id


def _client(context: Context) -> service.Client:
    return service.Client(**context.origin)


def _changes(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not strawberry.UNSET}


# -- inputs and payloads ---------------------------------------------------------------------


@strawberry.input(description="Filters of `assistants`.")
class AssistantFilter:
    project_id: strawberry.ID | None = strawberry.field(
        default=None, description="Only the assistants of this project."
    )


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


@strawberry.input(description="Changes to an assistant; omitted fields stay as they are.")
class UpdateAssistantInput:
    name: str | None = strawberry.UNSET
    model: str | None = strawberry.UNSET
    instructions: str | None = strawberry.UNSET
    temperature: float | None = strawberry.UNSET
    description: str | None = strawberry.UNSET


@strawberry.input(description="Filters of `threads`.")
class ThreadFilter:
    project_id: strawberry.ID | None = strawberry.field(
        default=None, description="Only the threads of this project."
    )


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


@strawberry.input(description="Changes to a thread.")
class UpdateThreadInput:
    title: str | None = strawberry.field(description="The new title; null clears it.")


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


def _graph_event(event: events.ThreadEvent) -> Any:
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


# -- node resolvers --------------------------------------------------------------------------


async def _assistant_node(context: Context, object_id: uuid.UUID) -> AssistantType | None:
    viewer = await context.viewer()
    if viewer is None:
        return None
    try:
        assistant = await service.get_assistant(
            db=context.db, viewer=viewer, assistant_id=object_id
        )
    except AtlasError:
        return None
    return AssistantType.from_model(assistant)


async def _thread_node(context: Context, object_id: uuid.UUID) -> ThreadType | None:
    viewer = await context.viewer()
    if viewer is None:
        return None
    try:
        thread = await service.get_thread(db=context.db, viewer=viewer, thread_id=object_id)
    except AtlasError:
        return None
    return ThreadType.from_model(thread)


async def _message_node(context: Context, object_id: uuid.UUID) -> MessageType | None:
    viewer = await context.viewer()
    if viewer is None:
        return None
    try:
        message = await service.get_message(db=context.db, viewer=viewer, message_id=object_id)
    except AtlasError:
        return None
    return MessageType.from_model(message)


async def _file_node(context: Context, object_id: uuid.UUID) -> FileType | None:
    viewer = await context.viewer()
    if viewer is None:
        return None
    try:
        file = await files_service.get_file(db=context.db, viewer=viewer, file_id=object_id)
    except AtlasError:
        return None
    return FileType.from_model(file)


register_node("Assistant", _assistant_node)
register_node("Thread", _thread_node)
register_node("Message", _message_node)
register_node("File", _file_node)


# -- Query -----------------------------------------------------------------------------------


@strawberry.type
class Query:
    @strawberry.field(
        description="Assistants the viewer may see (their own, their projects'), newest first.",
        extensions=authenticated(),
    )
    async def assistants(
        self,
        info: Info[Context, None],
        first: int | None = None,
        after: str | None = None,
        filter: AssistantFilter | None = None,
    ) -> Connection[AssistantType]:
        viewer = await info.context.require_viewer()
        project_id = (
            decode_id_of(filter.project_id, "Project", field="projectId")
            if filter and filter.project_id
            else None
        )
        page = await service.list_assistants(
            db=info.context.db,
            viewer=viewer,
            request=page_request(first=first, after=after),
            project_id=project_id,
        )
        return to_connection(page, AssistantType.from_model)

    @strawberry.field(
        description="Threads the viewer may see (their projects', their own), newest first.",
        extensions=authenticated(),
    )
    async def threads(
        self,
        info: Info[Context, None],
        first: int | None = None,
        after: str | None = None,
        filter: ThreadFilter | None = None,
    ) -> Connection[ThreadType]:
        viewer = await info.context.require_viewer()
        project_id = (
            decode_id_of(filter.project_id, "Project", field="projectId")
            if filter and filter.project_id
            else None
        )
        page = await service.list_threads(
            db=info.context.db,
            viewer=viewer,
            request=page_request(first=first, after=after),
            project_id=project_id,
        )
        return to_connection(page, ThreadType.from_model)

    @strawberry.field(
        description="A thread by ID; NOT_FOUND when it does not exist or the viewer may not "
        "see it.",
        extensions=authenticated(),
    )
    async def thread(self, info: Info[Context, None], id: strawberry.ID) -> ThreadType | None:
        viewer = await info.context.require_viewer()
        thread = await service.get_thread(
            db=info.context.db, viewer=viewer, thread_id=decode_id_of(id, "Thread")
        )
        return ThreadType.from_model(thread)


# -- Mutation --------------------------------------------------------------------------------


@strawberry.type
class Mutation:
    @strawberry.mutation(
        description="Create an assistant, personal or shared with a project (MANAGER+).",
        extensions=requires(PermissionName.USE_AI),
    )
    async def create_assistant(
        self, info: Info[Context, None], input: CreateAssistantInput
    ) -> AssistantType:
        context = info.context
        assistant = await service.create_assistant(
            db=context.db,
            viewer=await context.require_viewer(),
            settings=context.settings,
            name=input.name,
            model=input.model,
            instructions=input.instructions,
            temperature=input.temperature,
            description=input.description,
            project_id=(
                decode_id_of(input.project_id, "Project", field="projectId")
                if input.project_id
                else None
            ),
            client=_client(context),
        )
        return AssistantType.from_model(assistant)

    @strawberry.mutation(
        description="Change an assistant (its creator, a project MANAGER+, ADMIN).",
        extensions=authenticated(),
    )
    async def update_assistant(
        self, info: Info[Context, None], id: strawberry.ID, input: UpdateAssistantInput
    ) -> AssistantType:
        context = info.context
        assistant = await service.update_assistant(
            db=context.db,
            viewer=await context.require_viewer(),
            settings=context.settings,
            assistant_id=decode_id_of(id, "Assistant"),
            changes=_changes(
                {
                    "name": input.name,
                    "model": input.model,
                    "instructions": input.instructions,
                    "temperature": input.temperature,
                    "description": input.description,
                }
            ),
            client=_client(context),
        )
        return AssistantType.from_model(assistant)

    @strawberry.mutation(
        description="Delete an assistant; its threads stay, without an assistant.",
        extensions=authenticated(),
    )
    async def delete_assistant(self, info: Info[Context, None], id: strawberry.ID) -> bool:
        context = info.context
        return await service.delete_assistant(
            db=context.db,
            viewer=await context.require_viewer(),
            assistant_id=decode_id_of(id, "Assistant"),
            client=_client(context),
        )

    @strawberry.mutation(
        description="Start a thread with an assistant (project MEMBER+). Its OpenAI "
        "conversation is created with the first reply.",
        extensions=requires(PermissionName.USE_AI),
    )
    async def create_thread(
        self, info: Info[Context, None], input: CreateThreadInput
    ) -> ThreadType:
        context = info.context
        thread = await service.create_thread(
            db=context.db,
            viewer=await context.require_viewer(),
            assistant_id=decode_id_of(input.assistant_id, "Assistant", field="assistantId"),
            project_id=(
                decode_id_of(input.project_id, "Project", field="projectId")
                if input.project_id
                else None
            ),
            title=input.title,
            client=_client(context),
        )
        return ThreadType.from_model(thread)

    @strawberry.mutation(
        description="Rename a thread (its creator, a project MANAGER+, ADMIN).",
        extensions=authenticated(),
    )
    async def update_thread(
        self, info: Info[Context, None], id: strawberry.ID, input: UpdateThreadInput
    ) -> ThreadType:
        context = info.context
        thread = await service.update_thread(
            db=context.db,
            viewer=await context.require_viewer(),
            thread_id=decode_id_of(id, "Thread"),
            title=input.title,
            client=_client(context),
        )
        return ThreadType.from_model(thread)

    @strawberry.mutation(
        description="Delete a thread and its messages (its creator, a project MANAGER+, ADMIN).",
        extensions=authenticated(),
    )
    async def delete_thread(self, info: Info[Context, None], id: strawberry.ID) -> bool:
        context = info.context
        return await service.delete_thread(
            db=context.db,
            viewer=await context.require_viewer(),
            thread_id=decode_id_of(id, "Thread"),
            client=_client(context),
        )

    @strawberry.mutation(
        description="Send a message (project MEMBER+): returns at once with the stored message "
        "and the IN_PROGRESS reply, which streams on `threadEvents`. CONFLICT while another "
        "reply of the thread runs. QUOTA_EXCEEDED (`extensions.budget`, `used`) when the "
        "project's tokens this month reached its `monthlyTokenBudget`, or would with its "
        "replies still running (each reckoned as its text so far, at least 1 token; "
        "`extensions.inProgress`).",
        extensions=requires(PermissionName.USE_AI),
    )
    async def send_message(
        self, info: Info[Context, None], input: SendMessageInput
    ) -> SendMessagePayload:
        context = info.context
        user_message, assistant_message = await service.send_message(
            db=context.db,
            viewer=await context.require_viewer(),
            ai=context.services.ai,
            thread_id=decode_id_of(input.thread_id, "Thread", field="threadId"),
            content=input.content,
            file_ids=[decode_id_of(file_id, "File", field="fileIds") for file_id in input.file_ids],
            client=_client(context),
        )
        return SendMessagePayload(
            user_message=MessageType.from_model(user_message),
            assistant_message=MessageType.from_model(assistant_message),
        )

    @strawberry.mutation(
        description="Stop a reply in progress (its sender, a project MANAGER+, ADMIN): "
        "CANCELLED with the text received so far.",
        extensions=authenticated(),
    )
    async def cancel_message(self, info: Info[Context, None], id: strawberry.ID) -> MessageType:
        context = info.context
        message = await service.cancel_message(
            db=context.db,
            viewer=await context.require_viewer(),
            ai=context.services.ai,
            message_id=decode_id_of(id, "Message"),
            client=_client(context),
        )
        return MessageType.from_model(message)

    @strawberry.mutation(
        description="Upload a file (GraphQL multipart request; send an `Apollo-Require-"
        "Preflight` or `GraphQL-Preflight` header). Stored in OpenAI Files (purpose "
        "user_data); at most ATLAS_MAX_UPLOAD_BYTES.",
        extensions=requires(PermissionName.USE_AI),
    )
    async def upload_file(
        self, info: Info[Context, None], file: Upload, purpose: str | None = None
    ) -> FileType:
        context = info.context
        stored = await files_service.upload_file(
            db=context.db,
            viewer=await context.require_viewer(),
            ai=context.services.ai,
            upload=cast("files_service.UploadLike", file),
            purpose=purpose,
            client=_client(context),
        )
        return FileType.from_model(stored)

    @strawberry.mutation(
        description="Attach a file to an Assistant, a Thread or a Message (one you may change).",
        extensions=authenticated(),
    )
    async def attach_file(
        self, info: Info[Context, None], file_id: strawberry.ID, target_id: strawberry.ID
    ) -> FileType:
        context = info.context
        file = await files_service.attach_file(
            db=context.db,
            viewer=await context.require_viewer(),
            file_id=decode_id_of(file_id, "File", field="fileId"),
            target_id=str(target_id),
            client=_client(context),
        )
        return FileType.from_model(file)

    @strawberry.mutation(
        description="Detach a file from an Assistant, a Thread or a Message; false when it was "
        "not attached.",
        extensions=authenticated(),
    )
    async def detach_file(
        self, info: Info[Context, None], file_id: strawberry.ID, target_id: strawberry.ID
    ) -> bool:
        context = info.context
        return await files_service.detach_file(
            db=context.db,
            viewer=await context.require_viewer(),
            file_id=decode_id_of(file_id, "File", field="fileId"),
            target_id=str(target_id),
            client=_client(context),
        )

    @strawberry.mutation(
        description="Delete a file you uploaded (and its attachments); ADMIN may delete any.",
        extensions=authenticated(),
    )
    async def delete_file(self, info: Info[Context, None], id: strawberry.ID) -> bool:
        context = info.context
        return await files_service.delete_file(
            db=context.db,
            viewer=await context.require_viewer(),
            ai=context.services.ai,
            file_id=decode_id_of(id, "File"),
            client=_client(context),
        )


# -- Subscription ----------------------------------------------------------------------------


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description="The live events of a thread, numbered by a per-thread, strictly "
        "increasing `sequence` (numbers may skip, never repeat). With `afterSequence`, first "
        "the kept events numbered above it (what a reconnecting client missed of the reply in "
        "progress), then live ones. NOT_FOUND for a thread the viewer may not see.",
        directives=[AuthenticatedDirective()],
    )
    async def thread_events(
        self,
        info: Info[Context, None],
        thread_id: strawberry.ID,
        after_sequence: int | None = None,
    ) -> AsyncGenerator[ThreadEvent, None]:
        context = info.context
        try:
            viewer = await context.require_viewer()
            thread_uuid = decode_id_of(thread_id, "Thread", field="threadId")
            # The socket's context lives as long as the connection: use a short session here.
            async with context.runtime.sessionmaker() as db:
                await service.get_thread(db=db, viewer=viewer, thread_id=thread_uuid)
        except AtlasError as error:
            # Subscription errors bypass the per-operation error mapping: map it here.
            raise as_graphql_error(error) from None
        finally:
            await context.close_db()
        broker = context.services.ai.broker
        async for event in broker.subscribe(thread_uuid, after_sequence=after_sequence):
            if isinstance(event, events.MessageCreated):
                # A new exchange: check again that the viewer's session and access still hold
                # (a logout or a removal from the project ends the subscription).
                viewer = await _check_still_allowed(context, viewer, thread_uuid)
            yield _graph_event(event)
            # Between events, hold no connection and no cached rows.
            context.reset_loaders()
            await context.close_db()


async def _check_still_allowed(context: Context, viewer: Viewer, thread_id: uuid.UUID) -> Viewer:
    """The viewer, reloaded from their session (not from the token, which may have expired
    during a long subscription: the session is what logout revokes)."""
    async with context.runtime.sessionmaker() as db:
        current = await load_viewer_for_session(
            db=db, user_id=viewer.user_id, session_id=viewer.session_id
        )
        try:
            if current is None:
                raise Unauthenticated("Your session has ended.")
            await service.get_thread(db=db, viewer=current, thread_id=thread_id)
        except AtlasError as error:
            raise as_graphql_error(error) from None
    return current
