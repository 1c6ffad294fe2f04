"""The message tree's part of the graph (issue 15 part 1, docs/branches.md):
regenerateMessage, editMessage, selectBranch. Thin resolvers over `ai.branches`; the tree's
fields (`Message.parent`, `siblings`, `siblingIndex`, `Thread.activeLeaf`) are on the types
in ai/types.py. A piece of its own so ai/graph.py does not grow past its size note."""

from __future__ import annotations

import uuid
from typing import Annotated

import strawberry

from atlas_gql.ai import branches
from atlas_gql.ai.types import MessageType, SendMessagePayload, ThreadType
from atlas_gql.auth.models import PermissionName
from atlas_gql.auth.permissions import (
    permitted_mutation,
    signed_in_mutation,
)
from atlas_gql.graph.context import Info
from atlas_gql.ids import decode_id_of

_ERRORS = (
    "NOT_FOUND when the viewer may not see the message; FORBIDDEN below the MEMBER role of "
    "the thread's project; CONFLICT while a reply of the thread runs; RATE_LIMITED and "
    "QUOTA_EXCEEDED as sendMessage."
)


@strawberry.input(description="The reply to regenerate.")
class RegenerateMessageInput:
    message_id: strawberry.ID = strawberry.field(
        description="An ASSISTANT message; another kind is BAD_USER_INPUT."
    )


@strawberry.input(description="A user message to edit and send again.")
class EditMessageInput:
    message_id: strawberry.ID = strawberry.field(
        description="A USER message; another kind is BAD_USER_INPUT."
    )
    content: str = strawberry.field(
        description="The new text: 1 to ATLAS_MAX_MESSAGE_CHARS (default 32000) characters."
    )


@strawberry.input(description="The branch to show.")
class SelectBranchInput:
    message_id: strawberry.ID = strawberry.field(
        description="A message of the branch: the thread's active leaf becomes the newest "
        "leaf under it (itself when nothing follows it)."
    )


# The `input` arguments, described.
RegenerateMessage = Annotated[
    RegenerateMessageInput, strawberry.argument(description="The reply to regenerate.")
]
EditMessage = Annotated[
    EditMessageInput, strawberry.argument(description="The message and its new text.")
]
SelectBranch = Annotated[SelectBranchInput, strawberry.argument(description="The branch.")]


def _message_id(input: RegenerateMessageInput | EditMessageInput | SelectBranchInput) -> uuid.UUID:
    """The message every input of this piece names (BAD_USER_INPUT naming `messageId`)."""
    return decode_id_of(input.message_id, "Message", field="messageId")


@strawberry.type
class Mutation:
    @permitted_mutation(
        PermissionName.USE_AI,
        description="Ask again: a new reply to the question an ASSISTANT message answers, "
        "as that message's sibling (which stays). Returns the new reply IN_PROGRESS; it "
        "streams on `threadEvents` like any reply and becomes the thread's active leaf. " + _ERRORS,
    )
    async def regenerate_message(self, info: Info, input: RegenerateMessage) -> MessageType | None:
        sent = await branches.regenerate_message(
            **await info.context.ai_writing(), message_id=_message_id(input)
        )
        return MessageType.from_model(sent.assistant_message)

    @permitted_mutation(
        PermissionName.USE_AI,
        description="Edit and resend: a new USER message with the new text as the sibling of "
        "the one edited (whose branch stays), keeping its files, and a reply to it, which "
        "streams on `threadEvents` and becomes the thread's active leaf. " + _ERRORS,
    )
    async def edit_message(self, info: Info, input: EditMessage) -> SendMessagePayload | None:
        sent = await branches.edit_message(
            **await info.context.ai_writing(), message_id=_message_id(input), content=input.content
        )
        return SendMessagePayload.of(sent)

    @signed_in_mutation(
        description="Show another branch: the thread's active leaf (`activeLeaf`, the end of "
        "`messages`) becomes the newest leaf under the message given. Changes what everyone "
        "reading the thread is shown, so it needs the right to post there (FORBIDDEN below "
        "MEMBER); NOT_FOUND when the viewer may not see the message. Returns the thread."
    )
    async def select_branch(self, info: Info, input: SelectBranch) -> ThreadType | None:
        thread = await branches.select_branch(
            **await info.context.writing(), message_id=_message_id(input)
        )
        return ThreadType.from_model(thread)
