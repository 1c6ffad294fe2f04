"""Assistants: a model, instructions and settings, personal to their creator or shared with a
project.

Visible to the members of their project (a personal one to its creator) and ADMIN (NOT_FOUND
otherwise, so ids do not leak). Changed and deleted by ADMIN, a personal one's creator, or a
MANAGER+ of its project: being its creator gives no right in a project once demoted below
MANAGER or removed (FORBIDDEN for viewers who only see it). The rules: `ai.rules`."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Annotated, Any

import sqlalchemy as sa
from pydantic import AfterValidator
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from atlas_gql.ai import knowledge, rules
from atlas_gql.ai.attachments import attached_to, delete_attachments
from atlas_gql.ai.models import Assistant, AssistantTool, AssociableType
from atlas_gql.ai.pricing import allowed_models
from atlas_gql.auth.actor import Actor
from atlas_gql.auth.models import PermissionName
from atlas_gql.auth.rules import viewer_literals
from atlas_gql.auth.viewer import Viewer
from atlas_gql.config import TEXT_LIMITS, OpenAIApi, Settings
from atlas_gql.db.inputs import Command, PartialUpdate, check_length
from atlas_gql.db.pagination import Ordering, Page, PageRequest
from atlas_gql.db.session import ReadSession, stored
from atlas_gql.errors import BadInput, Forbidden, NotFound
from atlas_gql.projects.access import require_project_role
from atlas_gql.projects.models import ProjectRole

ASSISTANT_ORDERING = Ordering(sort=col(Assistant.created_at), id=col(Assistant.id), descending=True)


def clean_text(value: str, *, field: str, limit: int) -> str:
    """`value` trimmed, 1 to `limit` characters (BAD_USER_INPUT naming `field` otherwise)."""
    cleaned = value.strip()
    if not cleaned:
        raise BadInput(f"`{field}` must not be empty.", field=field)
    if len(cleaned) > limit:
        raise BadInput(f"`{field}` must be at most {limit} characters.", field=field)
    return cleaned


def _name(name: str) -> str:
    return clean_text(name, field="name", limit=TEXT_LIMITS.name)


def _temperature(temperature: float | None) -> float | None:
    if temperature is not None and not 0 <= temperature <= 2:
        raise BadInput("`temperature` must be between 0 and 2.", field="temperature")
    return temperature


def _instructions(instructions: str | None) -> str | None:
    # The most any server accepts (OpenAI's own former limit); ATLAS_MAX_INSTRUCTIONS_CHARS
    # (default 32,000, about 8,000 tokens sent with every reply) is what this one accepts.
    limit = TEXT_LIMITS.instructions_ceiling
    return check_length(instructions, field="instructions", limit=limit)


def _description(description: str | None) -> str | None:
    limit = TEXT_LIMITS.assistant_description
    return check_length(description, field="description", limit=limit)


def _model(model: str | None) -> str | None:
    return check_length(model, field="model", limit=TEXT_LIMITS.model)


def _tools(tools: Sequence[AssistantTool] | None) -> list[AssistantTool]:
    """Each tool once, in the enum's order (null: none)."""
    given = set(tools or ())
    return [tool for tool in AssistantTool if tool in given]


AssistantName = Annotated[str, AfterValidator(_name)]
Tools = Annotated[list[AssistantTool] | None, AfterValidator(_tools)]
Temperature = Annotated[float | None, AfterValidator(_temperature)]
Instructions = Annotated[str | None, AfterValidator(_instructions)]
Description = Annotated[str | None, AfterValidator(_description)]
ModelName = Annotated[str | None, AfterValidator(_model)]


class AssistantCreate(Command):
    name: AssistantName
    # One of the allowed models; the default model when None.
    model: ModelName = None
    instructions: Instructions = None
    temperature: Temperature = None
    description: Description = None
    # Built-in tools the assistant may use (file search, web search).
    tools: Tools = None
    # Shared with this project (MANAGER+); personal when None.
    project_id: uuid.UUID | None = None


class AssistantUpdate(PartialUpdate):
    not_null = frozenset({"name", "model"})
    name: AssistantName | None = None
    model: ModelName = None
    instructions: Instructions = None
    temperature: Temperature = None
    description: Description = None
    # Null clears (no tools).
    tools: Tools = None


CHAT_TOOLS_REFUSED = (
    "This server's AI adapter (Chat Completions, ATLAS_OPENAI_API=chat) has no built-in tools; "
    "`tools` must be empty."
)


def check_tools(settings: Settings, tools: Sequence[AssistantTool] | None) -> None:
    """Tools the configured adapter cannot serve are refused (the chat adapter has none)."""
    if tools and settings.atlas_openai_api is OpenAIApi.CHAT:
        raise BadInput(CHAT_TOOLS_REFUSED, field="tools")


def check_instructions(settings: Settings, instructions: str | None) -> None:
    """Instructions go to the model with every reply: at most ATLAS_MAX_INSTRUCTIONS_CHARS."""
    limit = settings.atlas_max_instructions_chars
    if instructions is not None and len(instructions) > limit:
        raise BadInput(f"`instructions` must be at most {limit} characters.", field="instructions")


def check_model(settings: Settings, model: str) -> str:
    models = allowed_models(settings)
    if model not in models:
        raise BadInput(f"Unknown model {model!r}; allowed: {', '.join(models)}.", field="model")
    return model


def assistant_visible_to(viewer: Viewer) -> Any:
    """The assistants `viewer` may see, as a SQL condition: the shared rule (`ai.rules`)."""
    return rules.assistant_visible(viewer_literals(viewer), rules.assistants)


async def list_assistants(
    *, db: ReadSession, actor: Actor, request: PageRequest, project_id: uuid.UUID | None = None
) -> Page[Assistant]:
    """The assistants the viewer may see, newest first."""
    visible = assistant_visible_to(actor.viewer_required)
    return await rules.visible_page(
        db, Assistant, visible, project_id=project_id, ordering=ASSISTANT_ORDERING, request=request
    )


async def get_assistant(
    *, db: ReadSession, viewer: Viewer, assistant_id: uuid.UUID, field: str | None = None
) -> Assistant:
    """An assistant the viewer may see; NOT_FOUND (naming `field`, if given) otherwise."""
    assistant = (
        await db.execute(
            sa.select(Assistant).where(
                col(Assistant.id) == assistant_id, assistant_visible_to(viewer)
            )
        )
    ).scalar_one_or_none()
    if assistant is None:
        raise NotFound("Assistant not found.", **({"field": field} if field else {}))
    return assistant


async def managed_assistant(
    db: ReadSession, viewer: Viewer, assistant_id: uuid.UUID, *, action: str
) -> Assistant:
    """An assistant the viewer may see and change; FORBIDDEN when they only see it."""
    assistant = await get_assistant(db=db, viewer=viewer, assistant_id=assistant_id)
    manageable = rules.assistant_manageable
    if not await rules.holds(db, manageable, viewer, rules.assistants, assistant.id):
        raise Forbidden(
            f"Only a manager of its project (its creator, for a personal one) may {action} this "
            "assistant."
        )
    return assistant


async def create_assistant(
    *, db: AsyncSession, actor: Actor, settings: Settings, data: AssistantCreate
) -> Assistant:
    """A new assistant, personal or (for a MANAGER+ of the project) shared with a project."""
    actor.require(PermissionName.USE_AI)
    viewer, project_id = actor.viewer_required, data.project_id
    if project_id is not None:
        action = "configure the project's assistants"
        await require_project_role(db, viewer, project_id, ProjectRole.MANAGER, action=action)
    check_instructions(settings, data.instructions)
    check_tools(settings, data.tools)
    assistant = Assistant(
        name=data.name,
        description=data.description,
        model=check_model(settings, data.model or settings.atlas_default_model),
        instructions=data.instructions,
        temperature=data.temperature,
        tools=list(data.tools or []),
        project_id=data.project_id,
        created_by_id=viewer.user_id,
    )
    return await actor.created(
        db, "assistant.create", assistant, project_id=data.project_id,
        details={"name": assistant.name, "model": assistant.model, "tools": assistant.tools},
    )  # fmt: skip


async def update_assistant(
    *,
    db: AsyncSession,
    actor: Actor,
    settings: Settings,
    assistant_id: uuid.UUID,
    data: AssistantUpdate,
) -> Assistant:
    """Change what was set of an assistant's name, model, instructions, temperature,
    description or tools (a personal one's creator, a project MANAGER+, ADMIN)."""
    assistant = await managed_assistant(db, actor.viewer_required, assistant_id, action="change")
    if data.model is not None:
        check_model(settings, data.model)
    check_instructions(settings, data.instructions)
    check_tools(settings, data.tools)
    data.apply(assistant)
    actor.record(
        db, "assistant.update", assistant, project_id=assistant.project_id,
        details={"fields": sorted(data.model_fields_set)},
    )  # fmt: skip
    return await stored(db, assistant)


async def delete_assistant(
    *, db: AsyncSession, actor: Actor, ai: knowledge.KnowledgeRuntime, assistant_id: uuid.UUID
) -> bool:
    """Delete an assistant; its threads stay (without an assistant); its vector store is
    deleted upstream once this commits."""
    assistant = await managed_assistant(db, actor.viewer_required, assistant_id, action="delete")
    await delete_attachments(db, attached_to(AssociableType.ASSISTANT, [assistant.id]))
    knowledge.after_owner_delete(db, ai, assistant.vector_store_id)
    actor.record(db, "assistant.delete", assistant, project_id=assistant.project_id)
    await db.delete(assistant)
    await db.flush()
    return True
