"""The AI part of the graph: assistants, threads, messages, files, and `threadEvents`.

Size: a little over 400 lines on purpose: the domain's one Query/Mutation/Subscription piece
(merged by `graph/schema.py`), resolvers of a few lines each; split by aggregate it would be
three pieces to merge with nothing to tell them apart."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from functools import partial
from typing import Annotated, Any, TypeVar, cast

import strawberry
from graphql import GraphQLResolveInfo
from strawberry.file_uploads import Upload

from atlas_gql import metrics
from atlas_gql.ai import assistants, events, feedback, files, messages, search, threads, titles
from atlas_gql.ai.broker import SubscriberTooSlow, SubscriptionControl
from atlas_gql.ai.models import Assistant, MessageRating, Thread
from atlas_gql.ai.types import (
    AssistantFilter,
    AssistantType,
    CreateAssistantInput,
    CreateThreadInput,
    FeedbackFilter,
    FeedbackType,
    FileType,
    GenerateThreadTitleInput,
    MessageSearchFilter,
    MessageSearchHitType,
    MessageType,
    RateMessageInput,
    SendMessageInput,
    SendMessagePayload,
    ThreadEventType,
    ThreadFilter,
    ThreadType,
    UpdateAssistantInput,
    UpdateThreadInput,
    event_id,
    graph_event,
)
from atlas_gql.ai.watch import Watch
from atlas_gql.auth.models import ApiKeyScope, PermissionName
from atlas_gql.auth.permissions import (
    AuthenticatedDirective,
    authenticated,
    permitted_mutation,
    signed_in_field,
    signed_in_mutation,
)
from atlas_gql.db.pagination import Page, PageRequest
from atlas_gql.errors import AtlasError, RateLimited
from atlas_gql.graph.context import Context, Info
from atlas_gql.graph.errors import as_graphql_error
from atlas_gql.graph.fanout import OperationSink, SharedEvent, Varying, current_sink
from atlas_gql.graph.inputs import (
    After,
    AssistantID,
    Changes,
    FileID,
    First,
    ThreadID,
    filter_fields,
    input_fields,
    optional_id,
    set_fields,
)
from atlas_gql.graph.paged import paged_field
from atlas_gql.graph.relay import (
    DELETED,
    REFUSED,
    Connection,
    ServiceGetter,
    global_id,
    register_service_node,
    requested_page,
    resolve_node_of,
    to_connection,
)
from atlas_gql.ids import decode_id_of, encode_global_id

Row = TypeVar("Row")
FilterT = TypeVar("FilterT")
# The optional `filter` of the `assistants` and `threads` lists.
ProjectNarrowing = Annotated[
    FilterT | None, strawberry.argument(description="Narrows the list (e.g. to one project).")
]

# -- node resolvers --------------------------------------------------------------------------

# How `node(id:)` reads each AI object for a viewer: the service's getter (NOT_FOUND when the
# viewer may not see it) and the GraphQL type.
NODE_GETTERS: dict[str, tuple[ServiceGetter, Callable[[Any], Any]]] = {
    "Assistant": (
        lambda db, viewer, id: assistants.get_assistant(db=db, viewer=viewer, assistant_id=id),
        AssistantType.from_model,
    ),
    "Thread": (
        lambda db, viewer, id: threads.get_thread(db=db, viewer=viewer, thread_id=id),
        ThreadType.from_model,
    ),
    "Message": (
        lambda db, viewer, id: messages.get_message(db=db, viewer=viewer, message_id=id),
        MessageType.from_model,
    ),
    "File": (
        lambda db, viewer, id: files.get_file(db=db, viewer=viewer, file_id=id),
        FileType.from_model,
    ),
    "Feedback": (
        lambda db, viewer, id: feedback.get_feedback(db=db, viewer=viewer, feedback_id=id),
        FeedbackType.from_model,
    ),
}


for _type_name, (_get, _convert) in NODE_GETTERS.items():
    register_service_node(_type_name, _get, _convert)


async def _listed(
    context: Context,
    list_visible: Callable[..., Awaitable[Page[Row]]],
    given: AssistantFilter | ThreadFilter,
    request: PageRequest,
    **narrowing: Any,
) -> Page[Row]:
    """The `assistants` and `threads` lists: one page of what the viewer may see (through
    `list_assistants` or `list_threads`), in one project when the filter names one;
    `narrowing`: the lister's other filter arguments."""
    project_id = optional_id(given.project_id, "Project", field="projectId")
    return await list_visible(
        **await context.reading(), request=request, project_id=project_id, **narrowing
    )


async def _assistants(
    context: Context, given: AssistantFilter, request: PageRequest
) -> Page[Assistant]:
    return await _listed(context, assistants.list_assistants, given, request)


async def _threads(context: Context, given: ThreadFilter, request: PageRequest) -> Page[Thread]:
    return await _listed(
        context,
        threads.list_threads,
        given,
        request,
        archived=given.archived,
        pinned=given.pinned,
    )


async def _feedback(
    context: Context, given: FeedbackFilter, request: PageRequest
) -> Page[MessageRating]:
    parsed = feedback.FeedbackFilter(
        **filter_fields(given, project_id="Project", assistant_id="Assistant")
    )
    return await feedback.list_feedback(**await context.reading(), filter=parsed, request=request)


# -- Query -----------------------------------------------------------------------------------


@strawberry.type
class Query:
    assistants = paged_field(
        AssistantType,
        filter=AssistantFilter,
        fetch=_assistants,
        filter_argument=ProjectNarrowing,
        description="Assistants the viewer may see (their own, their projects'), newest first.",
        extensions=authenticated(),
    )

    threads = paged_field(
        ThreadType,
        filter=ThreadFilter,
        fetch=_threads,
        filter_argument=ProjectNarrowing,
        description="Threads the viewer may see (their projects', their own), newest first; "
        "archived threads only with `filter: {archived: true}`.",
        extensions=authenticated(),
    )

    @signed_in_field(
        description="A thread by ID; null when it does not exist or the viewer may not see it "
        "(as every single-object lookup: `node`, `project`). A malformed ID, or one of another "
        "type, is BAD_USER_INPUT."
    )
    async def thread(self, info: Info, id: ThreadID) -> ThreadType | None:
        thread: ThreadType | None = await resolve_node_of(
            info.context, "Thread", decode_id_of(id, "Thread")
        )
        return thread

    feedback = paged_field(
        FeedbackType,
        filter=FeedbackFilter,
        fetch=_feedback,
        description="Ratings of replies with their comments, newest first, to see which "
        "assistants or models disappoint. ADMIN reads every rating; a project OWNER/MANAGER "
        "reads those of replies in their projects (with `filter.projectId` of a project they "
        "do not manage: NOT_FOUND or FORBIDDEN); anyone else is FORBIDDEN.",
        extensions=authenticated(),
    )

    @signed_in_field(
        description="Full-text search over the messages the viewer may read (the threads "
        "`threads` lists), most relevant first, then newest. Web search syntax: words (all "
        'must match; English stemming, so `deploy` finds `deployed`), `"a quoted phrase"`, '
        "`or` between alternatives, `-word` to exclude. A reply still streaming is found once "
        "it ends. BAD_USER_INPUT for an empty query, one over 200 characters, one without a "
        "word to look up (only common words such as `the`, punctuation or exclusions), a "
        "malformed cursor or filter. " + REFUSED
    )
    async def search_messages(
        self,
        info: Info,
        query: Annotated[
            str,
            strawberry.argument(
                description="What to find, 1 to 200 characters, in web search syntax (see the "
                "field)."
            ),
        ],
        first: First = None,
        after: After = None,
        filter: Annotated[
            MessageSearchFilter | None,
            strawberry.argument(description="Narrows the search; all given conditions apply."),
        ] = None,
    ) -> Connection[MessageSearchHitType] | None:
        given = filter or MessageSearchFilter()
        parsed = search.SearchFilter(
            **filter_fields(
                given, project_id="Project", thread_id="Thread", assistant_id="Assistant"
            )
        )
        page = await search.search_messages(
            **await info.context.reading(),
            text=query,
            filter=parsed,
            request=requested_page(info, first=first, after=after),
        )
        return to_connection(page, MessageSearchHitType.from_hit)


# -- Mutation --------------------------------------------------------------------------------


# The `input` arguments, described.
CreateAssistant = Annotated[
    CreateAssistantInput, strawberry.argument(description="The new assistant.")
]
CreateThread = Annotated[CreateThreadInput, strawberry.argument(description="The new thread.")]
GenerateThreadTitle = Annotated[
    GenerateThreadTitleInput, strawberry.argument(description="The thread to name.")
]
SendMessage = Annotated[
    SendMessageInput, strawberry.argument(description="The thread, the text and the files to send.")
]
RateMessage = Annotated[
    RateMessageInput, strawberry.argument(description="The reply and the rating.")
]


@strawberry.type
class Mutation:
    @permitted_mutation(
        PermissionName.USE_AI,
        description="Create an assistant, personal or shared with a project (MANAGER+).",
    )
    async def create_assistant(self, info: Info, input: CreateAssistant) -> AssistantType | None:
        context = info.context
        project_id = optional_id(input.project_id, "Project", field="projectId")
        data = assistants.AssistantCreate.model_validate(input_fields(input, project_id=project_id))
        assistant = await assistants.create_assistant(
            **await context.writing(), settings=context.settings, data=data
        )
        return AssistantType.from_model(assistant, instructions_visible=True)

    @signed_in_mutation(description="Change an assistant (its creator, a project MANAGER+, ADMIN).")
    async def update_assistant(
        self, info: Info, id: AssistantID, input: Changes[UpdateAssistantInput]
    ) -> AssistantType | None:
        context = info.context
        assistant = await assistants.update_assistant(
            **await context.writing(),
            settings=context.settings,
            assistant_id=decode_id_of(id, "Assistant"),
            data=assistants.AssistantUpdate.model_validate(set_fields(input)),
        )
        return AssistantType.from_model(assistant, instructions_visible=True)

    @signed_in_mutation(
        description="Delete an assistant; its threads stay, without an assistant (and its "
        "replies, without `assistant`). " + DELETED
    )
    async def delete_assistant(self, info: Info, id: AssistantID) -> strawberry.ID | None:
        assistant_id = decode_id_of(id, "Assistant")
        await assistants.delete_assistant(
            **await info.context.ai_writing(), assistant_id=assistant_id
        )
        return global_id("Assistant", assistant_id)

    @permitted_mutation(
        PermissionName.USE_AI,
        description="Start a thread with an assistant (project MEMBER+). Its OpenAI "
        "conversation is created with the first reply.",
    )
    async def create_thread(self, info: Info, input: CreateThread) -> ThreadType | None:
        data = threads.ThreadCreate.model_validate(
            input_fields(
                input,
                assistant_id=decode_id_of(input.assistant_id, "Assistant", field="assistantId"),
                project_id=optional_id(input.project_id, "Project", field="projectId"),
            )
        )
        thread = await threads.create_thread(**await info.context.writing(), data=data)
        return ThreadType.from_model(thread)

    @signed_in_mutation(
        description="Rename, pin or archive a thread (its creator, a project MANAGER+, ADMIN)."
    )
    async def update_thread(
        self, info: Info, id: ThreadID, input: Changes[UpdateThreadInput]
    ) -> ThreadType | None:
        thread = await threads.update_thread(
            **await info.context.writing(),
            thread_id=decode_id_of(id, "Thread"),
            data=threads.ThreadUpdate.model_validate(set_fields(input)),
        )
        return ThreadType.from_model(thread)

    @permitted_mutation(
        PermissionName.USE_AI,
        description="Name a thread again from its first exchange with ATLAS_TITLE_MODEL (a "
        "short model call, counted in usage with purpose TITLE and in the budgets) and answer "
        "it with its new title; subscribers get a ThreadUpdated event. Whoever may rename the "
        "thread. CONFLICT without a completed reply (or while it is being named); "
        "QUOTA_EXCEEDED past the project's or your monthly budget; UPSTREAM_ERROR when the "
        "call fails (the title stays as it was).",
    )
    async def generate_thread_title(
        self, info: Info, input: GenerateThreadTitle
    ) -> ThreadType | None:
        thread = await titles.generate_thread_title(
            titles=info.context.services.ai.titles,
            actor=await info.context.actor(),
            thread_id=decode_id_of(input.thread_id, "Thread", field="threadId"),
        )
        return ThreadType.from_model(thread)

    @signed_in_mutation(
        description="Delete a thread and its messages (its creator, a project MANAGER+, "
        "ADMIN). " + DELETED
    )
    async def delete_thread(self, info: Info, id: ThreadID) -> strawberry.ID | None:
        thread_id = decode_id_of(id, "Thread")
        await threads.delete_thread(**await info.context.ai_writing(), thread_id=thread_id)
        return global_id("Thread", thread_id)

    @permitted_mutation(
        PermissionName.USE_AI,
        description="Send a message (project MEMBER+): returns at once with the stored message "
        "and the IN_PROGRESS reply, which streams on `threadEvents`. CONFLICT while another "
        "reply of the thread runs, and in an archived thread. QUOTA_EXCEEDED "
        "(`extensions.budget`, `used`) when the project's tokens this month reached its "
        "`monthlyTokenBudget`, or would with its replies still running (each reckoned as its "
        "text so far, at least 1 token; `extensions.inProgress`).",
    )
    async def send_message(self, info: Info, input: SendMessage) -> SendMessagePayload | None:
        data = messages.MessageSend.model_validate(
            input_fields(
                input,
                thread_id=decode_id_of(input.thread_id, "Thread", field="threadId"),
                file_ids=tuple(decode_id_of(id, "File", field="fileIds") for id in input.file_ids),
            )
        )
        sent = await messages.send_message(**await info.context.ai_writing(), data=data)
        return SendMessagePayload.of(sent)

    @signed_in_mutation(
        description="Stop a reply in progress (its sender, a project MANAGER+, ADMIN): "
        "CANCELLED with the text received so far. An API key needs the USE_AI scope.",
        key_scope=ApiKeyScope.USE_AI,
    )
    async def cancel_message(
        self,
        info: Info,
        id: Annotated[
            strawberry.ID,
            strawberry.argument(
                description="The global ID of the reply (an ASSISTANT message IN_PROGRESS). "
                "One already CANCELLED is answered as it is; one that ended otherwise is "
                "CONFLICT."
            ),
        ],
    ) -> MessageType | None:
        message = await messages.cancel_message(
            **await info.context.ai_writing(), message_id=decode_id_of(id, "Message")
        )
        return MessageType.from_model(message)

    @signed_in_mutation(
        description="Rate a reply UP or DOWN, with an optional comment, or clear your rating "
        "(rating null): anyone who sees the thread. Returns the reply (`viewerRating`, "
        "`ratings`)."
    )
    async def rate_message(self, info: Info, input: RateMessage) -> MessageType | None:
        message_id = decode_id_of(input.message_id, "Message", field="messageId")
        data = feedback.RatingSet.model_validate(input_fields(input, message_id=message_id))
        message = await feedback.rate_message(**await info.context.writing(), data=data)
        return MessageType.from_model(message)

    @permitted_mutation(
        PermissionName.USE_AI,
        description="Upload a file (GraphQL multipart request; send an `Apollo-Require-"
        "Preflight` or `GraphQL-Preflight` header). Stored in OpenAI Files (purpose "
        "user_data); at most ATLAS_MAX_UPLOAD_BYTES.",
    )
    async def upload_file(
        self,
        info: Info,
        file: Annotated[
            Upload,
            strawberry.argument(
                description="The file part of a GraphQL multipart request (`map` points a "
                "form part at `variables.file`); BAD_USER_INPUT over ATLAS_MAX_UPLOAD_BYTES "
                "(default 20 MiB)."
            ),
        ],
        purpose: Annotated[
            str | None,
            strawberry.argument(
                description="The OpenAI Files purpose: `user_data` (when null), `assistants` "
                "or `vision`; another is BAD_USER_INPUT."
            ),
        ] = None,
    ) -> FileType | None:
        stored = await files.upload_file(
            ai=info.context.services.ai,
            actor=await info.context.actor(),
            data=files.FileUpload(upload=cast("files.UploadLike", file), purpose=purpose),
        )
        return FileType.from_model(stored)

    @signed_in_mutation(
        description="Attach a file to an Assistant, a Thread or a Message (one you may change)."
    )
    async def attach_file(
        self,
        info: Info,
        file_id: Annotated[
            strawberry.ID, strawberry.argument(description="The global ID of an uploaded File.")
        ],
        target_id: Annotated[
            strawberry.ID,
            strawberry.argument(
                description="The global ID of the Assistant, Thread or Message to attach it to; "
                "another type is BAD_USER_INPUT."
            ),
        ],
    ) -> FileType | None:
        file = await files.attach_file(
            **await info.context.ai_writing(),
            file_id=decode_id_of(file_id, "File", field="fileId"),
            target_id=str(target_id),
        )
        return FileType.from_model(file)

    @signed_in_mutation(
        description="Detach a file from an Assistant, a Thread or a Message (idempotent: "
        "detaching a file that is not attached there changes nothing); answers the file."
    )
    async def detach_file(
        self,
        info: Info,
        file_id: Annotated[
            strawberry.ID, strawberry.argument(description="The global ID of the File.")
        ],
        target_id: Annotated[
            strawberry.ID,
            strawberry.argument(
                description="The global ID of the Assistant, Thread or Message to detach it from."
            ),
        ],
    ) -> FileType | None:
        file = await files.detach_file(
            **await info.context.ai_writing(),
            file_id=decode_id_of(file_id, "File", field="fileId"),
            target_id=str(target_id),
        )
        return FileType.from_model(file)

    @signed_in_mutation(
        description="Delete a file you uploaded (and its attachments); ADMIN may delete any. "
        + DELETED
    )
    async def delete_file(self, info: Info, id: FileID) -> strawberry.ID | None:
        file_id = decode_id_of(id, "File")
        await files.delete_file(
            ai=info.context.services.ai, actor=await info.context.actor(), file_id=file_id
        )
        return global_id("File", file_id)


# -- Subscription ----------------------------------------------------------------------------


# Probe values of a delta (`delta_varying`): numbers, texts and message ids of different
# lengths and contents (JSON escapes included), unlike any a real delta is rendered with.
_PROBE_SEQUENCES = (2_111_111_111, 311_111_113, 41_111_117)
_PROBE_TEXTS = ("\ue000\u03940\ue001", '\ue000"\u03b4\\1\n\ue001', "\ue000zz2\ue001")
_PROBE_MESSAGES = (
    uuid.UUID("5e1f2a3b-4c5d-4e6f-8a7b-9c0d1e2f3a4b"),
    uuid.UUID("a0b1c2d3-e4f5-4a6b-9c7d-8e9f0a1b2c3d"),
    uuid.UUID("0f9e8d7c-6b5a-4948-b736-251403f2e1d0"),
)
# A group's deltas are one family, whatever their message (the message's id is one of the
# values): its template is made at the group's first delta and serves every reply after.
_DELTA_FAMILY = "MessageDelta"


def _json_inside(text: str) -> str:
    """`text` as it appears inside a JSON string of the rendered payload."""
    return json.dumps(text, ensure_ascii=False)[1:-1]


def delta_varying(event: events.MessageDelta) -> Varying:
    """A delta's rendering is its group's template (graph/fanout.py) with its number, id,
    message id and text in it: one graphql-core run per group (the probes) rather than per
    delta, or per reply."""
    thread_id = event.thread_id

    def probe(n: int) -> tuple[ThreadEventType, tuple[str, ...]]:
        sequence, text, message_id = _PROBE_SEQUENCES[n], _PROBE_TEXTS[n], _PROBE_MESSAGES[n]
        root = graph_event(
            events.delta_event(sequence, thread_id=thread_id, message_id=message_id, delta=text)
        )
        return root, (
            str(sequence), event_id(thread_id, sequence), _json_inside(text),
            encode_global_id("Message", message_id),
        )  # fmt: skip

    sequence = event.sequence
    values = (
        str(sequence), event_id(thread_id, sequence), _json_inside(event.delta),
        encode_global_id("Message", event.message_id),
    )  # fmt: skip
    return Varying(family=_DELTA_FAMILY, values=values, probe=probe)


def shared_delta(event: events.MessageDelta) -> SharedEvent:
    """A delta as a group renders it (graph/fanout.py): keyed by its number and text (a merged
    delta has its own text), its root and its `Varying` made only if the group renders it."""
    return SharedEvent(
        (event.sequence, event.delta), partial(graph_event, event), partial(delta_varying, event)
    )


def _direct_deltas(
    sink: OperationSink, info: GraphQLResolveInfo[Any], thread_id: uuid.UUID
) -> Callable[[events.ThreadEvent], bool] | None:
    """The subscription's write of a delta's shared frame at once, by its publisher, while
    its reader is idle (ai/broker.py, graph/fanout.py); None when the socket offers none."""
    if sink.writer is None:
        return None

    def direct(event: events.ThreadEvent) -> bool:
        if not isinstance(event, events.MessageDelta) or not sink.write_now(
            info, thread_id, shared_delta(event)
        ):
            return False
        metrics.DELTAS_DELIVERED.inc()
        return True

    return direct


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
        info: Info,
        thread_id: ThreadID,
        after_sequence: Annotated[
            int | None,
            strawberry.argument(
                description="Resume after this event number: the kept events numbered above "
                "it come first, then live ones. Pass `Thread.lastEventSequence` (read with "
                "`messages`) or `SendMessagePayload.afterSequence` to join without a gap or a "
                "repeat; on reconnect, the `sequence` of the last event received. Null or "
                "omitted: live events only. Events older than the kept window are not replayed "
                "(reload `thread { lastEventSequence messages }` then)."
            ),
        ] = None,
    ) -> AsyncGenerator[ThreadEventType, None]:
        context = info.context
        try:
            viewer = (await context.actor()).viewer_required
            thread_uuid = decode_id_of(thread_id, "Thread", field="threadId")
            # The socket's context lives as long as the connection: use a short session here.
            async with context.runtime.sessionmaker() as db:
                await threads.get_thread(db=db, viewer=viewer, thread_id=thread_uuid)
            # This frame lives as long as the subscription: it keeps no closed session (and
            # its SQLAlchemy Session, identity map, events) for that long.
            del db
        except AtlasError as error:
            # Subscription errors bypass the per-operation error mapping: map it here.
            raise as_graphql_error(error) from None
        finally:
            await context.close_db()
        ai = context.services.ai
        # On a WebSocket, deltas go out as frames rendered once for every subscriber of the
        # thread with the same document (graph/fanout.py); elsewhere, one by one.
        sink = current_sink()
        raw_info = info._raw_info
        control = SubscriptionControl(
            on_overflow=sink.too_slow if sink else None,
            direct=_direct_deltas(sink, raw_info, thread_uuid) if sink else None,
        )
        # Access is re-checked in batches for this worker's subscriptions, by session or by
        # API key (ai/watch.py): at each new exchange, and every ATLAS_SUBSCRIPTION_RECHECK
        # seconds.
        watch = ai.watches.add(Watch.of(viewer, thread_uuid, control))
        # The number of the last MessageCreated re-checked: an exchange's MessageCreated events
        # are numbered one after the other, so the next one right after it is the same
        # exchange, already checked (one check per exchange, not per message).
        checked: int | None = None
        try:
            with metrics.SUBSCRIPTIONS.track_inprogress():
                async for event in ai.broker.subscribe(
                    thread_uuid, after_sequence=after_sequence, control=control
                ):
                    if isinstance(event, events.MessageDelta):
                        metrics.DELTAS_DELIVERED.inc()
                        if sink is not None and await sink.send_shared(
                            raw_info, thread_uuid, shared_delta(event)
                        ):
                            continue
                    elif isinstance(event, events.MessageCreated):
                        # A new exchange: is the viewer's credential live, the thread visible?
                        if checked is None or event.sequence != checked + 1:
                            await ai.watches.check_exchange(thread_uuid, event.sequence)
                        checked = event.sequence
                        if control.error is not None:
                            raise control.error
                    # Rendered once for the group when the selection reads only what the
                    # event holds (graph/fanout.py `plain_selection`), else by Strawberry.
                    # The graph's type of an event is named as the event's class.
                    type_name = type(event).__name__
                    if (
                        sink is None
                        or isinstance(event, events.MessageDelta)
                        or not await sink.send_plain(
                            raw_info,
                            thread_uuid,
                            SharedEvent((event.sequence, type_name), partial(graph_event, event)),
                            type_name,
                        )
                    ):
                        yield graph_event(event)
                    # Between events, hold no connection and no cached rows.
                    context.reset_loaders()
                    await context.close_db()
        except AtlasError as error:
            raise as_graphql_error(error) from None
        except SubscriberTooSlow:
            # (Over HTTP: a WebSocket is closed with 1013 before this could be sent.)
            too_slow = RateLimited(
                "Too slow to keep up: subscribe again with afterSequence.", retry_after=1
            )
            raise as_graphql_error(too_slow) from None
        finally:
            ai.watches.remove(watch)
