"""GraphQL types of the AI domain: Assistant, Thread, Message, File (and their enums), the
inputs and payloads of its mutations, and the events of `threadEvents`.

Relation fields (Thread.messages, .project, .assistant, .files, ...) resolve through
per-request DataLoaders.

Size: over 400 lines on purpose: one Strawberry type per API object of the domain, each with
its `from_model` and its relation fields, read as the schema reads (Feedback included); there
is no rule here to split along."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, TypeAlias

import strawberry

from atlas_gql.ai import events, loaders
from atlas_gql.ai.events import ToolCallStatus
from atlas_gql.ai.messages import SentMessage
from atlas_gql.ai.models import (
    Assistant,
    AssistantTool,
    AssociableType,
    File,
    FileIndexStatus,
    Message,
    MessageRating,
    MessageRole,
    MessageStatus,
    Rating,
    Thread,
)
from atlas_gql.ai.search import SearchHit
from atlas_gql.ai.tool_items import CitationKind
from atlas_gql.auth import loaders as auth_loaders
from atlas_gql.auth.graph import UserType
from atlas_gql.graph.context import Info
from atlas_gql.graph.enums import described_enum
from atlas_gql.graph.inputs import After, Before, First, Last
from atlas_gql.graph.relay import (
    REFUSED,
    Connection,
    Node,
    from_row,
    requested_page,
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


async def _message(info: Info, message_id: uuid.UUID | None) -> MessageType | None:
    """A message of a thread the viewer reads (same thread: no check of its own)."""
    if message_id is None:
        return None
    message = await info.context.loader(loaders.message_by_id).load(message_id)
    return MessageType.from_model(message) if message else None


async def _assistant(info: Info, assistant_id: uuid.UUID | None) -> AssistantType | None:
    """An assistant by id (what the caller's object names): null once it is deleted."""
    if assistant_id is None:
        return None
    assistant = await info.context.loader(loaders.assistant_by_id).load(assistant_id)
    return AssistantType.from_model(assistant) if assistant else None


async def _user(info: Info, user_id: uuid.UUID | None) -> UserType | None:
    """A user by id (what the caller's object names): null once their account is deleted."""
    if user_id is None:
        return None
    user = await info.context.loader(auth_loaders.user_by_id).load(user_id)
    return UserType.from_model(user) if user else None


async def _files(info: Info, kind: AssociableType, target_id: uuid.UUID) -> list[FileType]:
    files = await info.context.loader(loaders.files_by_target).load((kind, target_id))
    return [FileType.from_model(file) for file in files]


MessageRoleEnum = described_enum(
    MessageRole,
    name="MessageRole",
    description="Who wrote a message.",
    values={
        "USER": "Written by a person (see `Message.author`).",
        "ASSISTANT": "A reply written by the model (see `Message.assistant`).",
        "SYSTEM": "Set by the system (instructions, notices); no author.",
    },
)
MessageStatusEnum = described_enum(
    MessageStatus,
    name="MessageStatus",
    description="Where a message is in its life. A user message is COMPLETED when stored; a "
    "reply starts IN_PROGRESS and ends in one of the other four states.",
    values={
        "IN_PROGRESS": "A reply still streaming: `content` holds the text so far; follow "
        "`threadEvents` for the rest.",
        "COMPLETED": "Finished: `content` is the whole text (token counts set for a reply).",
        "INCOMPLETE": "The model stopped early (output limit, cut stream): `content` keeps "
        "the partial text, `error` says why.",
        "FAILED": "The provider failed (upstream error, timeout): `content` keeps the text "
        "received, `error` says why.",
        "CANCELLED": "Stopped by `cancelMessage`: `content` keeps the text received before.",
    },
)

RatingEnum = described_enum(
    Rating,
    name="Rating",
    description="A person's verdict on a reply.",
    values={"UP": "A good reply (thumbs up).", "DOWN": "A disappointing reply (thumbs down)."},
)


@strawberry.type(description="How many people rated a reply up and down.")
class MessageRatings:
    up: int = strawberry.field(description="Ratings UP.")
    down: int = strawberry.field(description="Ratings DOWN.")


AssistantToolEnum = described_enum(
    AssistantTool,
    name="AssistantTool",
    description="A built-in tool an assistant may use while it writes a reply (Responses API "
    "adapter only; the Chat Completions adapter has none).",
    values={
        "FILE_SEARCH": "Search the files attached to the assistant and to the thread (indexed "
        "in vector stores; see `File.indexStatus`); answers cite them (`Message.citations`).",
        "WEB_SEARCH": "Search the web; answers cite the pages (URL citations).",
    },
)
FileIndexStatusEnum = described_enum(
    FileIndexStatus,
    name="FileIndexStatus",
    description="Where a file is in its indexing for file search.",
    values={
        "IN_PROGRESS": "Being added to a vector store; file search may not find it yet.",
        "COMPLETED": "Indexed: file search finds it.",
        "FAILED": "The provider could not index it (see `indexError`); attach it again to retry.",
    },
)


CitationKindEnum = described_enum(
    CitationKind,
    name="CitationKind",
    description="What a citation points at.",
    values={
        "FILE": "A file found by file search (`file`, `title` = its filename).",
        "URL": "A web page found by web search (`url`, `title`).",
    },
)
ToolCallStatusEnum = described_enum(
    ToolCallStatus,
    name="ToolCallStatus",
    description="How a tool call ended.",
    values={
        "COMPLETED": "It ran; `resultCount` says how many results it found (when known).",
        "FAILED": "The provider's tool failed.",
        "INCOMPLETE": "It stopped before finishing (the reply was cut short).",
    },
)


@strawberry.type(name="Assistant", description="A configured AI assistant (model, instructions).")
class AssistantType(Node):
    db_id: strawberry.Private[uuid.UUID]
    project_db_id: strawberry.Private[uuid.UUID | None]
    name: str = strawberry.field(description="The assistant's display name (1 to 200 characters).")
    description: str | None = strawberry.field(
        description="What the assistant is for; null when not given."
    )
    model: str = strawberry.field(
        description="The model that writes its replies (e.g. `gpt-4o-mini`)."
    )
    temperature: float | None = strawberry.field(
        description="Sampling temperature, 0 to 2; null uses the model's default."
    )
    created_at: datetime = strawberry.field(description="When the assistant was created (UTC).")
    updated_at: datetime = strawberry.field(
        description="When the assistant was last changed (UTC)."
    )
    stored_instructions: strawberry.Private[str | None] = None
    stored_tools: strawberry.Private[list[str] | None] = None
    # True when the viewer just created or changed the assistant (so may change it); None:
    # ask `ai.rules.assistant_instructions_visible` (one batched statement per request).
    instructions_visible: strawberry.Private[bool | None] = None

    @classmethod
    def from_model(
        cls, assistant: Assistant, *, instructions_visible: bool | None = None
    ) -> AssistantType:
        return from_row(
            cls,
            "Assistant",
            assistant,
            stored_instructions=assistant.instructions,
            stored_tools=assistant.tools,
            instructions_visible=instructions_visible,
        )

    @strawberry.field(
        description="The built-in tools the assistant uses (empty: none). Set by "
        "`createAssistant` / `updateAssistant` (whoever may change the assistant: a MANAGER+ "
        "of its project for a shared one)."
    )
    def tools(self) -> list[AssistantTool]:
        stored = self.stored_tools or []
        return [tool for tool in AssistantTool if tool.value in stored]

    @strawberry.field(
        description="The system instructions sent with every reply. Shown to those who may "
        "change the assistant (its creator, a MANAGER+ of its project, ADMIN); null for "
        "anyone else."
    )
    async def instructions(self, info: Info) -> str | None:
        if self.stored_instructions is None:
            return None
        visible = self.instructions_visible
        if visible is None:
            context = info.context
            visible = await context.viewer_loader(loaders.instructions_visible_by_assistant).load(
                self.db_id
            )
        return self.stored_instructions if visible else None

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
    active_leaf_db_id: strawberry.Private[uuid.UUID | None]
    title: str | None = strawberry.field(description="The thread's title; null when it has none.")
    openai_thread_id: str | None = strawberry.field(
        description="The OpenAI conversation (`conv_…`) holding the thread's history; null until "
        "the first reply creates it (and on Chat Completions servers, which keep no history)."
    )
    pinned: bool = strawberry.field(
        description="Pinned by `updateThread(input: {pinned: true})`; list the pinned threads "
        "with `threads(filter: {pinned: true})`."
    )
    archived_at: datetime | None = strawberry.field(
        description="When the thread was archived (UTC); null when it is not. An archived "
        "thread is hidden from `threads` (unless `filter: {archived: true}`) and refuses new "
        "messages (CONFLICT) until `updateThread(input: {archived: false})`."
    )
    created_at: datetime = strawberry.field(description="When the thread was started (UTC).")
    updated_at: datetime = strawberry.field(description="When the thread was last changed (UTC).")

    @classmethod
    def from_model(cls, thread: Thread) -> ThreadType:
        return from_row(cls, "Thread", thread)

    @strawberry.field(description="The project the thread belongs to; null when personal.")
    async def project(self, info: Info) -> LazyProject | None:
        return await _project(info, self.project_db_id)

    @strawberry.field(description="The assistant answering in this thread (null if deleted).")
    async def assistant(self, info: Info) -> AssistantType | None:
        return await _assistant(info, self.assistant_db_id)

    @strawberry.field(
        description="The number of the thread's last event whose effect `messages` holds, read "
        "in the same snapshot as `messages` (the partial text of a running reply included). "
        "Load `messages` and this in one query, then subscribe to `threadEvents(afterSequence: "
        "lastEventSequence)`: the events that follow are exactly what the loaded messages lack "
        "(no gap, no repeat). 0 for a thread without events."
    )
    async def last_event_sequence(self, info: Info) -> int:
        return await info.context.loader(loaders.last_event_sequence_by_thread).load(self.db_id)

    @strawberry.field(description="Who started the thread.")
    async def created_by(self, info: Info) -> UserType | None:
        return await _user(info, self.created_by_db_id)

    @strawberry.field(
        description="The branch shown: the path from the first message to `activeLeaf`, "
        "oldest first (Relay connection; `last: n` gives the n most recent). Other branches "
        "are reached through `Message.siblings` and `selectBranch`. " + REFUSED
    )
    async def messages(
        self,
        info: Info,
        first: First = None,
        after: After = None,
        last: Last = None,
        before: Before = None,
    ) -> Connection[MessageType] | None:
        request = requested_page(info, first=first, after=after, last=last, before=before)
        page = await info.context.loader(loaders.messages_page).load((self.db_id, request))
        return to_connection(page, MessageType.from_model)

    @strawberry.field(
        description="The last message of the branch shown (`messages` ends with it); a new "
        "message follows it. Null while the thread has no message.",
    )
    async def active_leaf(self, info: Info) -> MessageType | None:
        return await _message(info, self.active_leaf_db_id)

    @strawberry.field(description="Files attached to the thread.")
    async def files(self, info: Info) -> list[FileType]:
        return await _files(info, AssociableType.THREAD, self.db_id)


@strawberry.type(name="Message", description="One message of a thread.")
class MessageType(Node):
    db_id: strawberry.Private[uuid.UUID]
    thread_db_id: strawberry.Private[uuid.UUID]
    parent_db_id: strawberry.Private[uuid.UUID | None]
    user_db_id: strawberry.Private[uuid.UUID | None]
    assistant_db_id: strawberry.Private[uuid.UUID | None]
    role: MessageRole = strawberry.field(
        description="Who wrote it: a user, the assistant, or the system."
    )
    content: str = strawberry.field(
        description="The text. For a reply IN_PROGRESS, the text received so far (append the "
        "MessageDelta events of `threadEvents`); for FAILED, INCOMPLETE or CANCELLED, the text "
        "received before it ended."
    )
    status: MessageStatus = strawberry.field(description="Where the message is in its life.")
    openai_message_id: str | None = strawberry.field(
        description="The provider's id of a reply's output message (`msg_…`); null for user "
        "messages, and for a reply until the provider names it."
    )
    input_tokens: int | None = strawberry.field(
        description="Tokens the model read for this reply (instructions, history, input); null "
        "for user messages, while the reply runs, and when the provider reported none."
    )
    output_tokens: int | None = strawberry.field(
        description="Tokens the model wrote for this reply; null for user messages, while the "
        "reply runs, and when the provider reported none."
    )
    error: str | None = strawberry.field(
        description="Why a reply is FAILED, INCOMPLETE or CANCELLED (readable)."
    )
    created_at: datetime = strawberry.field(description="When the message was stored (UTC).")
    completed_at: datetime | None = strawberry.field(
        description="When the message reached its final status (UTC): a user message when "
        "stored, a reply when it ended (whatever the status); null while IN_PROGRESS."
    )

    stored_citations: strawberry.Private[Any] = None

    @classmethod
    def from_model(cls, message: Message | events.MessagePayload) -> MessageType:
        """From a row, or from an event's payload as it is (it has every field read here:
        building a Message of it first cost ~0.3 ms per event and subscriber)."""
        return from_row(cls, "Message", message, stored_citations=message.citations)

    @strawberry.field(
        description="What the reply's text cites (file search and web search results), in "
        "the order of the text; empty for other messages and until the reply completes (also "
        "sent with MessageCompleted)."
    )
    def citations(self) -> list[CitationType]:
        return [CitationType.from_stored(item) for item in self.stored_citations or []]

    @strawberry.field(description="Files sent with the message.")
    async def files(self, info: Info) -> list[FileType]:
        return await _files(info, AssociableType.MESSAGE, self.db_id)

    @strawberry.field(
        description="The message this one follows in the thread's tree (a reply's question, "
        "the reply a question follows); null for a first message."
    )
    async def parent(self, info: Info) -> MessageType | None:
        return await _message(info, self.parent_db_id)

    @strawberry.field(
        description="The alternatives at this point of the thread (the messages with the same "
        "parent: regenerated replies, edited questions), this message included, oldest first."
    )
    async def siblings(self, info: Info) -> list[MessageType]:
        found = await info.context.loader(loaders.siblings_by_message).load(self.db_id)
        return [MessageType.from_model(message) for message in found]

    @strawberry.field(
        description="This message's place among `siblings` (0 for the oldest): a UI shows "
        "`siblingIndex + 1` / `siblings.length`.",
    )
    async def sibling_index(self, info: Info) -> int:
        found = await info.context.loader(loaders.siblings_by_message).load(self.db_id)
        return next((i for i, message in enumerate(found) if message.id == self.db_id), 0)

    @strawberry.field(
        description="Who wrote the message: the user of a USER message (null once their "
        "account is deleted); null for an ASSISTANT or SYSTEM message (see `assistant`). Seen "
        "by whoever sees the message, as a thread's `createdBy` is."
    )
    async def author(self, info: Info) -> UserType | None:
        return await _user(info, self.user_db_id if self.role is MessageRole.USER else None)

    @strawberry.field(
        description="The viewer's rating of this reply (`rateMessage`); null when they have not "
        "rated it (and for messages that are not replies)."
    )
    async def viewer_rating(self, info: Info) -> Rating | None:
        if self.role is not MessageRole.ASSISTANT:
            return None
        return await info.context.viewer_loader(loaders.viewer_rating_by_message).load(self.db_id)

    @strawberry.field(
        description="How many people rated this reply up and down (0 and 0 for messages that "
        "are not replies)."
    )
    async def ratings(self, info: Info) -> MessageRatings:
        if self.role is not MessageRole.ASSISTANT:
            return MessageRatings(up=0, down=0)
        up, down = await info.context.loader(loaders.rating_counts_by_message).load(self.db_id)
        return MessageRatings(up=up, down=down)

    @strawberry.field(
        description="The assistant that wrote an ASSISTANT message (null for other messages, "
        "and once that assistant is deleted). Seen by whoever sees the message, as the "
        "thread's `assistant` is."
    )
    async def assistant(self, info: Info) -> AssistantType | None:
        written = self.role is MessageRole.ASSISTANT
        return await _assistant(info, self.assistant_db_id if written else None)


@strawberry.type(
    name="Feedback",
    description="A person's rating of a reply, with their comment (`feedback` lists them).",
)
class FeedbackType(Node):
    db_id: strawberry.Private[uuid.UUID]
    message_db_id: strawberry.Private[uuid.UUID]
    user_db_id: strawberry.Private[uuid.UUID]
    rating: Rating = strawberry.field(description="UP or DOWN.")
    comment: str | None = strawberry.field(
        description="What the person said about the reply; null when they said nothing."
    )
    created_at: datetime = strawberry.field(description="When the reply was first rated (UTC).")
    updated_at: datetime = strawberry.field(
        description="When the rating or its comment last changed (UTC)."
    )

    @classmethod
    def from_model(cls, rating: MessageRating) -> FeedbackType:
        return from_row(cls, "Feedback", rating)

    async def _message(self, info: Info) -> Message | None:
        return await info.context.loader(loaders.message_by_id).load(self.message_db_id)

    @strawberry.field(description="The reply that was rated.")
    async def message(self, info: Info) -> MessageType | None:
        message = await self._message(info)
        return MessageType.from_model(message) if message else None

    @strawberry.field(description="The model that wrote the reply (e.g. `gpt-4o-mini`).")
    async def model(self, info: Info) -> str | None:
        message = await self._message(info)
        return message.model if message else None

    @strawberry.field(
        description="The assistant that wrote the reply; null once that assistant is deleted."
    )
    async def assistant(self, info: Info) -> AssistantType | None:
        message = await self._message(info)
        return await _assistant(info, message.assistant_id if message else None)

    @strawberry.field(description="Who rated the reply (null once their account is deleted).")
    async def author(self, info: Info) -> UserType | None:
        return await _user(info, self.user_db_id)


@strawberry.type(name="File", description="An uploaded file (stored in OpenAI Files).")
class FileType(Node):
    db_id: strawberry.Private[uuid.UUID]
    filename: str = strawberry.field(description="The name the file was uploaded with.")
    bytes: int = strawberry.field(description="The file's size in bytes.")
    mime_type: str | None = strawberry.field(
        description="The media type the upload declared (e.g. `application/pdf`); null when none."
    )
    purpose: str = strawberry.field(
        description="The OpenAI Files purpose it was stored with (`user_data` by default)."
    )
    openai_file_id: str | None = strawberry.field(
        description="The provider's file id (`file-…`); null when the file is not stored upstream."
    )
    created_at: datetime = strawberry.field(description="When the file was uploaded (UTC).")
    index_status: FileIndexStatus | None = strawberry.field(
        description="Its indexing for file search: null when it is not attached to an "
        "assistant or a thread (or the server's adapter has no vector stores); the latest "
        "outcome otherwise."
    )
    index_error: str | None = strawberry.field(
        description="Why indexing FAILED (readable); null otherwise."
    )

    @classmethod
    def from_model(cls, file: File) -> FileType:
        return from_row(cls, "File", file)


@strawberry.type(
    name="Citation",
    description="A source the reply's text cites: a file found by file search or a web page "
    "found by web search. Indexes count characters (Unicode code points) of the message's "
    "`content`, as the provider gives them.",
)
class CitationType:
    kind: CitationKind = strawberry.field(description="A file or a web page.")
    url: str | None = strawberry.field(description="The cited page (URL citations); else null.")
    title: str | None = strawberry.field(
        description="The page's title, or the cited file's filename."
    )
    quote: str | None = strawberry.field(
        description="The cited text (the span of a URL citation; the passage file search "
        "retrieved from a file, up to 500 characters); null when the provider gave none."
    )
    start_index: int | None = strawberry.field(
        description="Where the cited span starts in `content` (a file citation: where its "
        "marker goes)."
    )
    end_index: int | None = strawberry.field(
        description="Where the cited span ends (exclusive); equal to `startIndex` for a file "
        "citation."
    )
    file_db_id: strawberry.Private[uuid.UUID | None] = None

    @classmethod
    def from_stored(cls, item: dict[str, Any]) -> CitationType:
        file_id = item.get("fileId")
        return cls(
            kind=CitationKind(item.get("kind", "URL")),
            url=item.get("url"),
            title=item.get("title"),
            quote=item.get("quote"),
            start_index=item.get("startIndex"),
            end_index=item.get("endIndex"),
            file_db_id=uuid.UUID(file_id) if file_id else None,
        )

    @strawberry.field(
        description="The cited file (FILE citations); null for a URL, for a file since "
        "deleted, and for one the viewer may no longer see."
    )
    async def file(self, info: Info) -> FileType | None:
        if self.file_db_id is None:
            return None
        file = await info.context.viewer_loader(loaders.visible_file_by_id).load(self.file_db_id)
        return FileType.from_model(file) if file else None


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
        default=None,
        description="The system instructions sent with every reply; at most "
        "ATLAS_MAX_INSTRUCTIONS_CHARS characters (default 32,000).",
    )
    temperature: float | None = strawberry.field(
        default=None, description="Sampling temperature, 0 to 2; null for the model's default."
    )
    description: str | None = strawberry.field(
        default=None, description="What it is for; at most 2,000 characters."
    )
    tools: list[AssistantTool] | None = strawberry.field(
        default=None,
        description="Built-in tools to enable (null or empty: none). BAD_USER_INPUT on a "
        "server whose adapter has no tools (ATLAS_OPENAI_API=chat).",
    )
    project_id: strawberry.ID | None = strawberry.field(
        default=None,
        description="Share it with a project (MANAGER role or higher); null keeps it personal.",
    )


@strawberry.input(
    description="Changes to an assistant; omitted fields stay as they are, null clears one "
    "(refused for `name` and `model`)."
)
class UpdateAssistantInput:
    name: strawberry.Maybe[str | None] = strawberry.field(
        description="The new name, 1 to 200 characters; null is BAD_USER_INPUT."
    )
    model: strawberry.Maybe[str | None] = strawberry.field(
        description="A model of the allowed list (ATLAS_ALLOWED_MODELS, else the priced models); "
        "null is BAD_USER_INPUT."
    )
    instructions: strawberry.Maybe[str | None] = strawberry.field(
        description="The new system instructions; null clears them."
    )
    temperature: strawberry.Maybe[float | None] = strawberry.field(
        description="Sampling temperature, 0 to 2; null returns to the model's default."
    )
    description: strawberry.Maybe[str | None] = strawberry.field(
        description="What it is for; null clears it."
    )
    tools: strawberry.Maybe[list[AssistantTool] | None] = strawberry.field(
        description="The built-in tools, replacing the current list; null or empty disables "
        "them all. BAD_USER_INPUT on a server whose adapter has no tools."
    )


@strawberry.input(description="Filters of `threads`.")
class ThreadFilter(_InProject):
    archived: bool | None = strawberry.field(
        default=None,
        description="true: only the archived threads; false, null or omitted: only those not "
        "archived (archived threads are hidden by default).",
    )
    pinned: bool | None = strawberry.field(
        default=None,
        description="true: only the pinned threads; false: only those not pinned; null or "
        "omitted: both.",
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


@strawberry.input(description="Changes to a thread; omitted fields stay as they are.")
class UpdateThreadInput:
    title: strawberry.Maybe[str | None] = strawberry.field(
        description="The new title (up to 300 characters); null clears it."
    )
    pinned: strawberry.Maybe[bool | None] = strawberry.field(
        description="Pin (true) or unpin (false) the thread; null is BAD_USER_INPUT."
    )
    archived: strawberry.Maybe[bool | None] = strawberry.field(
        description="Archive (true: `archivedAt` is set, kept if already archived) or "
        "unarchive (false) the thread; null is BAD_USER_INPUT."
    )


@strawberry.input(description="A message to a thread's assistant.")
class SendMessageInput:
    thread_id: strawberry.ID = strawberry.field(
        description="The thread to write to (project MEMBER+); NOT_FOUND when the viewer may not "
        "see it."
    )
    content: str = strawberry.field(
        description="1 to ATLAS_MAX_MESSAGE_CHARS (default 32000) characters."
    )
    file_ids: list[strawberry.ID] = strawberry.field(
        default_factory=list,
        description="Uploaded files to attach and give to the model as input files.",
    )


@strawberry.input(description="The thread to name again.")
class GenerateThreadTitleInput:
    thread_id: strawberry.ID = strawberry.field(
        description="A thread the viewer may rename (its creator while MEMBER+, a project "
        "MANAGER+, ADMIN); NOT_FOUND when they cannot see it, FORBIDDEN when they may not "
        "rename it."
    )


@strawberry.input(description="A rating of a reply by the viewer.")
class RateMessageInput:
    message_id: strawberry.ID = strawberry.field(
        description="The reply (an ASSISTANT message that has ended) of a thread the viewer "
        "sees; another message is BAD_USER_INPUT, a reply still IN_PROGRESS CONFLICT, one the "
        "viewer may not see NOT_FOUND."
    )
    rating: Rating | None = strawberry.field(
        description="UP or DOWN (replaces the viewer's earlier rating); null clears the "
        "viewer's rating and its comment."
    )
    comment: str | None = strawberry.field(
        default=None,
        description="Why, in at most 2,000 characters (blank or null: no comment). Read by the "
        "project's managers and administrators in `feedback`.",
    )


@strawberry.input(description="Narrows `feedback`; all given conditions apply.")
class FeedbackFilter:
    project_id: strawberry.ID | None = strawberry.field(
        default=None, description="Replies in this project (you must own or manage it)."
    )
    assistant_id: strawberry.ID | None = strawberry.field(
        default=None, description="Replies written by this assistant."
    )
    model: str | None = strawberry.field(
        default=None, description="Replies written by this model (exact name)."
    )
    rating: Rating | None = strawberry.field(default=None, description="Only UP or only DOWN.")
    from_: datetime | None = strawberry.field(
        default=None, name="from", description="Rated at or after this instant (needs an offset)."
    )
    to: datetime | None = strawberry.field(
        default=None, description="Rated strictly before this instant (needs an offset)."
    )


@strawberry.type(description="What sendMessage stored; the reply streams on `threadEvents`.")
class SendMessagePayload:
    user_message: MessageType = strawberry.field(description="The message sent (COMPLETED).")
    assistant_message: MessageType = strawberry.field(
        description="The reply, IN_PROGRESS until its MessageCompleted, MessageFailed or "
        "MessageCancelled event."
    )
    after_sequence: int = strawberry.field(
        description="The thread's event number this exchange's events start after: "
        "`threadEvents(threadId:, afterSequence: afterSequence)` delivers them (its two "
        "MessageCreated, the deltas, the final event) even when subscribing after this "
        "answer arrived; once the reply has ended, its final event alone stands for its "
        "deltas (it carries the whole message)."
    )

    @classmethod
    def of(cls, sent: SentMessage) -> SendMessagePayload:
        return cls(
            user_message=MessageType.from_model(sent.user_message),
            assistant_message=MessageType.from_model(sent.assistant_message),
            after_sequence=sent.after_sequence,
        )


# -- search ----------------------------------------------------------------------------------


@strawberry.input(
    name="MessageSearchFilter",
    description="Narrows `searchMessages`; every condition given applies (AND). A project, "
    "thread or assistant the viewer may not see narrows to nothing (no error: ids do not leak "
    "existence).",
)
class MessageSearchFilter:
    project_id: strawberry.ID | None = strawberry.field(
        default=None, description="Only messages of this project's threads."
    )
    thread_id: strawberry.ID | None = strawberry.field(
        default=None, description="Only messages of this thread."
    )
    assistant_id: strawberry.ID | None = strawberry.field(
        default=None,
        description="Only messages of threads with this assistant (the users' messages too).",
    )
    role: MessageRole | None = strawberry.field(
        default=None, description="Only messages written by this role (e.g. ASSISTANT)."
    )
    from_: datetime | None = strawberry.field(
        default=None,
        name="from",
        description="Messages stored at or after this instant (needs an offset).",
    )
    to: datetime | None = strawberry.field(
        default=None, description="Messages stored strictly before this instant (needs an offset)."
    )


@strawberry.type(
    name="MessageSearchHit",
    description="A message that matched a search: the message, its thread, the matched words in "
    "context, and how well it matched.",
)
class MessageSearchHitType:
    message: MessageType = strawberry.field(description="The message that matched.")
    thread: ThreadType = strawberry.field(description="The thread the message belongs to.")
    snippet: str = strawberry.field(
        description="HTML: up to two fragments of the message's text around the matches "
        "(joined by ` … `), HTML-escaped, each matched word wrapped in `<mark>…</mark>` (the "
        "only markup it holds, so it may be set as innerHTML). Cut from the first 100,000 "
        "characters of the text, which are what is indexed."
    )
    rank: float = strawberry.field(
        description="Relevance (PostgreSQL `ts_rank`, normalised by the message's length): "
        "higher is better; comparable only between hits of the same search."
    )

    @classmethod
    def from_hit(cls, hit: SearchHit) -> MessageSearchHitType:
        return cls(
            message=MessageType.from_model(hit.message),
            thread=ThreadType.from_model(hit.thread),
            snippet=hit.snippet,
            rank=hit.rank,
        )


# -- thread events ---------------------------------------------------------------------------

_SEQUENCE = "Per thread, strictly increasing (numbers may skip, never repeat)."
_EVENT_ID = (
    "Stable and unique: the thread and the sequence (a global-ID-style string), so a "
    "normalised cache (Apollo, urql's graphcache) can key the event."
)
_MESSAGE_ID = "The ID of the message the event is about."


def event_id(thread_id: uuid.UUID, sequence: int) -> strawberry.ID:
    """An event's `id`: base64 of `ThreadEvent:<thread uuid>:<sequence>` (not a node)."""
    return strawberry.ID(encode_global_id("ThreadEvent", f"{thread_id}:{sequence}"))


@strawberry.interface(
    name="ThreadEvent",
    description="An event of a thread's live stream. Every event type implements it, so the "
    "common fields are selectable without fragments; `... on MessageDelta` etc. select the "
    "rest.",
)
class ThreadEventType:
    id: strawberry.ID = strawberry.field(description=_EVENT_ID)
    sequence: int = strawberry.field(description=_SEQUENCE)
    message_id: strawberry.ID = strawberry.field(description=_MESSAGE_ID)
    message: MessageType | None = strawberry.field(
        description="The message as of this event; null on MessageDelta (a delta carries only "
        "its text: append it to the message's `content`)."
    )


@strawberry.type(description="A message was added to the thread (the user's, then the reply).")
class MessageCreated(ThreadEventType):
    message: MessageType = strawberry.field(
        description="The new message (a reply: IN_PROGRESS, empty)."
    )


@strawberry.type(description="Text appended to a reply in progress; deltas join to its content.")
class MessageDelta(ThreadEventType):
    message: MessageType | None = strawberry.field(
        default=None, description="Always null: a delta carries only its text."
    )
    delta: str = strawberry.field(description="The text to append to the message's content.")


@strawberry.type(description="A reply finished (COMPLETED) with its full text and usage.")
class MessageCompleted(ThreadEventType):
    message: MessageType = strawberry.field(description="The reply, COMPLETED, with its text.")


@strawberry.type(
    description="A reply ended without completing: FAILED or INCOMPLETE (see "
    "`message.status`), with the partial text kept. A cancelled reply gets MessageCancelled."
)
class MessageFailed(ThreadEventType):
    message: MessageType = strawberry.field(
        description="The reply, FAILED or INCOMPLETE, with the text received."
    )
    error: str = strawberry.field(description="What went wrong, readable.")


@strawberry.type(
    description="A reply was stopped by cancelMessage: CANCELLED, with the text received before."
)
class MessageCancelled(ThreadEventType):
    message: MessageType = strawberry.field(
        description="The reply, CANCELLED, with the text received."
    )
    error: str = strawberry.field(description='Why it ended, readable ("The reply was stopped.").')


@strawberry.type(
    description="The thread itself changed: it got a title (after its first reply, or from "
    "generateThreadTitle). `messageId` is the reply the title was drawn from."
)
class ThreadUpdated(ThreadEventType):
    message: MessageType | None = strawberry.field(
        default=None, description="Always null: the event is about the thread (see `thread`)."
    )
    thread: ThreadType = strawberry.field(description="The thread as it is now (its `title`).")


@strawberry.type(
    description="A built-in tool started working for a reply in progress (show e.g. "
    '"searching files…"); its ToolCallCompleted follows, or the reply\'s final event.'
)
class ToolCallStarted(ThreadEventType):
    message: MessageType | None = strawberry.field(
        default=None, description="Always null: see `messageId`."
    )
    call_id: str = strawberry.field(
        description="The provider's id of the call, the same on its ToolCallCompleted."
    )
    tool: AssistantTool = strawberry.field(description="Which tool.")
    query: str | None = strawberry.field(
        description="What it searches for, when the provider says so at the start (usually "
        "only at the end: see ToolCallCompleted)."
    )


@strawberry.type(description="A built-in tool call of a reply in progress ended.")
class ToolCallCompleted(ThreadEventType):
    message: MessageType | None = strawberry.field(
        default=None, description="Always null: see `messageId`."
    )
    call_id: str = strawberry.field(description="The provider's id of the call.")
    tool: AssistantTool = strawberry.field(description="Which tool.")
    status: ToolCallStatus = strawberry.field(description="How it ended.")
    query: str | None = strawberry.field(
        description="What it searched for (several queries joined by `; `); null when the "
        "provider did not say."
    )
    result_count: int | None = strawberry.field(
        description="How many results it found (files' passages, web sources); null when "
        "the provider did not say."
    )


# Implementations of ThreadEvent that no field names: the schema lists them explicitly.
EVENT_TYPES: tuple[type, ...] = (
    MessageCreated,
    MessageDelta,
    ToolCallStarted,
    ToolCallCompleted,
    MessageCompleted,
    MessageFailed,
    MessageCancelled,
    ThreadUpdated,
)


def graph_event(event: events.ThreadEvent) -> ThreadEventType:
    """The GraphQL object of a typed event (events.py is the one source of their shapes)."""
    event_gid = event_id(event.thread_id, event.sequence)
    sequence = event.sequence
    message_gid = strawberry.ID(encode_global_id("Message", event.message_id))
    if isinstance(event, events.MessageDelta):
        return MessageDelta(
            id=event_gid, sequence=sequence, message_id=message_gid, delta=event.delta
        )
    if isinstance(event, events.ThreadUpdated):
        return ThreadUpdated(
            id=event_gid,
            sequence=sequence,
            message_id=message_gid,
            thread=ThreadType.from_model(event.thread.to_thread()),
        )
    if isinstance(event, events.ToolCallStarted):
        return ToolCallStarted(
            id=event_gid, sequence=sequence, message_id=message_gid,
            call_id=event.call_id, tool=event.tool, query=event.query,
        )  # fmt: skip
    if isinstance(event, events.ToolCallCompleted):
        return ToolCallCompleted(
            id=event_gid, sequence=sequence, message_id=message_gid,
            call_id=event.call_id, tool=event.tool, query=event.query,
            status=event.status, result_count=event.result_count,
        )  # fmt: skip
    message = MessageType.from_model(event.message)
    if isinstance(event, events.MessageCreated):
        return MessageCreated(
            id=event_gid, sequence=sequence, message_id=message_gid, message=message
        )
    if isinstance(event, events.MessageCompleted):
        return MessageCompleted(
            id=event_gid, sequence=sequence, message_id=message_gid, message=message
        )
    if isinstance(event, events.MessageCancelled):
        return MessageCancelled(
            id=event_gid,
            sequence=sequence,
            message_id=message_gid,
            message=message,
            error=event.error,
        )
    return MessageFailed(
        id=event_gid, sequence=sequence, message_id=message_gid, message=message, error=event.error
    )
