"""The logs part of the graph: `activityLogs`, `apiUsage`, `errorLogs`, and the types
ActivityLog, ErrorLog, UsageBucket and UsageSummary (Project.usageThisMonth).

Size: a little over 400 lines on purpose: the three log readers share their filter and
time-window arguments and their types; a split would separate each query from its type."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import strawberry
from strawberry.scalars import JSON

from atlas_gql.auth import loaders as auth_loaders
from atlas_gql.auth.graph import UserType
from atlas_gql.auth.permissions import authenticated, signed_in_field
from atlas_gql.db.pagination import Page, PageRequest
from atlas_gql.graph.context import Context, Info
from atlas_gql.graph.enums import described_enum
from atlas_gql.graph.inputs import filter_fields
from atlas_gql.graph.paged import paged_field
from atlas_gql.graph.relay import Node, from_attributes, from_row, register_node
from atlas_gql.ids import encode_global_id
from atlas_gql.logs import loaders, service
from atlas_gql.logs.models import ActivityLog, ErrorLog, ErrorSource, UsagePurpose
from atlas_gql.logs.usage import UsageTotals

UsageGroupByEnum = described_enum(
    service.UsageGroup,
    name="UsageGroupBy",
    description="How apiUsage groups AI calls: DAY (YYYY-MM-DD in UTC), USER (user ID), "
    "PROJECT (project ID), MODEL (model name), PURPOSE (REPLY or TITLE) or API_KEY (API key "
    "ID).",
    values={
        "DAY": "One bucket per calendar day (UTC); key `YYYY-MM-DD`.",
        "USER": "One bucket per user who sent the messages; key the User's global ID.",
        "PROJECT": "One bucket per project; key the Project's global ID.",
        "MODEL": "One bucket per model; key the model name.",
        "PURPOSE": "One bucket per purpose of the calls; key `REPLY` or `TITLE`.",
        "API_KEY": "One bucket per personal API key the messages were sent with; key the "
        "ApiKey's global ID, `session` for calls made while signed in (no key).",
    },
)
UsagePurposeEnum = described_enum(
    UsagePurpose,
    name="UsagePurpose",
    description="What an AI call was for.",
    values={
        "REPLY": "A reply to a message (sendMessage and the like).",
        "TITLE": "A thread's title (after its first reply, or generateThreadTitle).",
        "STORAGE": "A day of vector-store storage behind file search (`atlas-gql "
        "meter-storage`): no tokens, a cost.",
    },
)
ErrorSourceEnum = described_enum(
    ErrorSource,
    name="ErrorSource",
    description="Where an error happened: GRAPHQL (a masked resolver error), UPSTREAM (the "
    "AI provider), DATABASE, BACKGROUND (work after the response).",
    values={
        "GRAPHQL": "An unexpected error in an operation, masked as INTERNAL_SERVER_ERROR.",
        "UPSTREAM": "The AI provider failed (status, timeout, cut stream).",
        "DATABASE": "The database failed or was unreachable.",
        "BACKGROUND": "Work after the response failed (a background reply, recovery).",
    },
)


async def _user_of(info: Info, user_id: uuid.UUID | None) -> UserType | None:
    if user_id is None:
        return None
    user = await info.context.loader(auth_loaders.user_by_id).load(user_id)
    return UserType.from_model(user) if user else None


@strawberry.type(
    name="ActivityLog",
    description="Who did what, when: one row per state change (and per failed login).",
)
class ActivityLogType(Node):
    user_db_id: strawberry.Private[uuid.UUID | None]
    action: str = strawberry.field(
        description="A stable dotted name, e.g. project.create, member.add, auth.login."
    )
    entity_type: str | None = strawberry.field(description="The kind of object changed.")
    entity_id: str | None = strawberry.field(description="The changed object's database id.")
    project_id: strawberry.ID | None = strawberry.field(
        description="The global ID of the project the change belongs to, if any."
    )
    ip_address: str | None = strawberry.field(description="The client's address.")
    user_agent: str | None = strawberry.field(description="The client's User-Agent.")
    details: JSON | None = strawberry.field(description="A small JSON of details (no secrets).")
    created_at: datetime = strawberry.field(description="When it happened (UTC).")

    @classmethod
    def from_model(cls, row: ActivityLog) -> ActivityLogType:
        project = encode_global_id("Project", row.project_id) if row.project_id else None
        return from_row(
            cls, "ActivityLog", row, project_id=strawberry.ID(project) if project else None
        )

    @strawberry.field(description="Who did it; null for an anonymous action or a deleted user.")
    async def user(self, info: Info) -> UserType | None:
        return await _user_of(info, self.user_db_id)


@strawberry.type(
    name="ErrorLog",
    description="An error an administrator can look up by the requestId a client saw.",
)
class ErrorLogType(Node):
    user_db_id: strawberry.Private[uuid.UUID | None]
    request_id: str = strawberry.field(description="The `extensions.requestId` the client saw.")
    source: ErrorSource = strawberry.field(description="Where the error happened.")
    error_type: str = strawberry.field(description="The exception's qualified class name.")
    message: str = strawberry.field(description="The error's message (secrets redacted).")
    stack: str | None = strawberry.field(description="The traceback (secrets redacted).")
    operation_name: str | None = strawberry.field(
        description="The GraphQL operation name of the failed request; null when unnamed or not a "
        "request."
    )
    path: str | None = strawberry.field(description="The GraphQL path of the failed field.")
    upstream_status: int | None = strawberry.field(description="HTTP status of the AI provider.")
    upstream_request_id: str | None = strawberry.field(
        description="The AI provider's request id (for its support)."
    )
    details: JSON | None = strawberry.field(
        description="A small JSON of context (no secrets); null when none."
    )
    created_at: datetime = strawberry.field(
        description="When it first happened in its window (UTC)."
    )
    count: int = strawberry.field(
        description="How many times this error (same source, code, path and exception type) "
        "happened in its window (ATLAS_ERROR_LOG_WINDOW_SECONDS); the row keeps the first "
        "occurrence's request id and details. An overflow row (errorType "
        "`atlas.ErrorLogOverflow`) counts a source's errors beyond "
        "ATLAS_ERROR_LOG_ROWS_PER_WINDOW kinds."
    )
    last_seen_at: datetime = strawberry.field(
        description="When it last happened in its window (UTC); equals createdAt when count is 1."
    )

    @classmethod
    def from_model(cls, row: ErrorLog) -> ErrorLogType:
        return from_row(cls, "ErrorLog", row)

    @strawberry.field(description="The signed-in user of the failed request, if any.")
    async def user(self, info: Info) -> UserType | None:
        return await _user_of(info, self.user_db_id)


@strawberry.type(name="UsageBucket", description="AI calls of one group (see UsageGroupBy).")
class UsageBucketType:
    key: str = strawberry.field(
        description="YYYY-MM-DD (UTC) for DAY, a User ID for USER, a Project ID for PROJECT, the "
        "model name for MODEL, REPLY or TITLE for PURPOSE; `unknown` for calls whose user or "
        "project was deleted."
    )
    requests: int = strawberry.field(description="How many model calls (one per reply attempt).")
    input_tokens: int = strawberry.field(description="Tokens the model read, summed.")
    output_tokens: int = strawberry.field(description="Tokens the model wrote, summed.")
    cost_usd: float = strawberry.field(
        description="Cost in US dollars: tokens plus built-in tool calls (`toolCostUsd`)."
    )
    file_search_calls: int = strawberry.field(
        description="File search tool calls, summed (priced per call)."
    )
    web_search_calls: int = strawberry.field(
        description="Web search tool calls, summed (priced per call)."
    )
    tool_cost_usd: float = strawberry.field(
        description="The part of `costUsd` that tool calls cost (ATLAS_FILE_SEARCH_CALL_USD, "
        "ATLAS_WEB_SEARCH_CALL_USD per call)."
    )


@strawberry.type(
    name="UsageSummary", description="AI usage of a project in the current calendar month (UTC)."
)
class UsageSummaryType:
    input_tokens: int = strawberry.field(description="Tokens the model read this month.")
    output_tokens: int = strawberry.field(description="Tokens the model wrote this month.")
    total_tokens: int = strawberry.field(
        description="Input + output tokens: what monthlyTokenBudget counts."
    )
    cost_usd: float = strawberry.field(description="Cost in US dollars.")
    requests: int = strawberry.field(description="How many model calls this month.")

    @classmethod
    def from_totals(cls, totals: UsageTotals) -> UsageSummaryType:
        return from_attributes(cls, totals, cost_usd=float(totals.cost_usd))


async def project_usage_this_month(info: Info, project_id: uuid.UUID) -> UsageSummaryType:
    """Project.usageThisMonth (the Project type calls this; its visibility gates the field)."""
    totals = await info.context.loader(loaders.usage_this_month_by_project).load(project_id)
    return UsageSummaryType.from_totals(totals)


# The time window every log filter ends with (`from`, `to`).
def _window_start() -> Any:
    return strawberry.field(
        default=None, name="from", description="At or after this instant (needs an offset)."
    )


def _window_end() -> Any:
    return strawberry.field(
        default=None, description="Strictly before this instant (needs an offset)."
    )


@strawberry.input(description="Narrows activityLogs; all conditions combine (AND).")
class ActivityLogFilter:
    user_id: strawberry.ID | None = strawberry.field(default=None, description="Done by user.")
    project_id: strawberry.ID | None = strawberry.field(
        default=None, description="In this project (you must own or manage it)."
    )
    action: str | None = strawberry.field(default=None, description="Exact action name.")
    entity_type: str | None = strawberry.field(
        description="Exact kind of object changed (e.g. `Project`, `Thread`).", default=None
    )
    from_: datetime | None = _window_start()
    to: datetime | None = _window_end()


@strawberry.input(description="Narrows apiUsage; all conditions combine (AND).")
class ApiUsageFilter:
    user_id: strawberry.ID | None = strawberry.field(
        default=None, description="Calls of this user (yourself unless ADMIN or with projectId)."
    )
    project_id: strawberry.ID | None = strawberry.field(
        default=None, description="Calls in this project (you must own or manage it)."
    )
    model: str | None = strawberry.field(default=None, description="Exact model name.")
    purpose: UsagePurpose | None = strawberry.field(
        default=None, description="Only calls made for this purpose (replies or titles)."
    )
    api_key_id: strawberry.ID | None = strawberry.field(
        default=None, description="Calls made with this personal API key (its global ID)."
    )
    from_: datetime | None = _window_start()
    to: datetime | None = _window_end()


@strawberry.input(description="Narrows errorLogs; all conditions combine (AND).")
class ErrorLogFilter:
    source: ErrorSource | None = strawberry.field(
        description="Only errors of this source.", default=None
    )
    from_: datetime | None = _window_start()
    to: datetime | None = _window_end()


def _usage_key(bucket: service.UsageBucket, group_by: service.UsageGroup) -> str:
    if bucket.key == service.UNKNOWN_KEY:
        return bucket.key
    if group_by is service.UsageGroup.USER:
        return encode_global_id("User", bucket.key)
    if group_by is service.UsageGroup.PROJECT:
        return encode_global_id("Project", bucket.key)
    if group_by is service.UsageGroup.API_KEY and bucket.key != service.NO_API_KEY:
        return encode_global_id("ApiKey", bucket.key)
    return bucket.key


async def _activity_logs(
    context: Context, given: ActivityLogFilter, request: PageRequest
) -> Page[ActivityLog]:
    parsed = service.ActivityFilter(**filter_fields(given, user_id="User", project_id="Project"))
    return await service.list_activity_logs(
        **await context.reading(), filter=parsed, request=request
    )


async def _error_logs(
    context: Context, given: ErrorLogFilter, request: PageRequest
) -> Page[ErrorLog]:
    return await service.list_error_logs(
        **await context.reading(),
        window=service.time_window(start=given.from_, end=given.to),
        source=ErrorSource(given.source) if given.source is not None else None,
        request=request,
    )


@strawberry.type
class Query:
    activity_logs = paged_field(
        ActivityLogType,
        filter=ActivityLogFilter,
        fetch=_activity_logs,
        description="Who did what, when; newest first. ADMIN reads everything; a project OWNER "
        "or MANAGER reads the rows of their projects; anyone else gets FORBIDDEN.",
        extensions=authenticated(),
    )

    @signed_in_field(
        description="AI calls summed per group (requests, tokens, cost), sorted by key. ADMIN "
        "reads everything; with filter.projectId a project OWNER/MANAGER reads that project; "
        "otherwise you read your own usage (another user's: FORBIDDEN)."
    )
    async def api_usage(
        self,
        info: Info,
        filter: Annotated[
            ApiUsageFilter | None,
            strawberry.argument(
                description="Which calls to count; all given conditions apply (default: your own, "
                "all time)."
            ),
        ] = None,
        *,
        group_by: Annotated[
            service.UsageGroup,
            strawberry.argument(
                description="What one bucket sums: a day, a user, a project, a model, a "
                "purpose or an API key."
            ),
        ],
    ) -> list[UsageBucketType] | None:
        given = filter or ApiUsageFilter()
        group = service.UsageGroup(group_by)
        parsed = service.UsageFilter(
            **filter_fields(given, user_id="User", project_id="Project", api_key_id="ApiKey")
        )
        buckets = await service.api_usage(
            **await info.context.reading(), filter=parsed, group_by=group
        )
        answer = [
            from_attributes(
                UsageBucketType,
                bucket,
                key=_usage_key(bucket, group),
                cost_usd=float(bucket.cost_usd),
                tool_cost_usd=float(bucket.tool_cost_usd),
            )
            for bucket in buckets
        ]
        return sorted(answer, key=lambda bucket: bucket.key)

    error_logs = paged_field(
        ErrorLogType,
        filter=ErrorLogFilter,
        fetch=_error_logs,
        description="Errors newest first: masked internal errors, AI provider and database "
        "errors. ADMIN only (FORBIDDEN otherwise).",
        extensions=authenticated(),
    )


async def _resolve_activity_node(context: Context, row_id: uuid.UUID) -> ActivityLogType | None:
    viewer = await context.viewer()
    if viewer is None:
        return None
    row = await context.loader(loaders.activity_log_by_id).load(row_id)
    if row is None or not await service.activity_log_visible(
        db=context.read_session(), viewer=viewer, row=row
    ):
        return None
    return ActivityLogType.from_model(row)


async def _resolve_error_node(context: Context, row_id: uuid.UUID) -> ErrorLogType | None:
    viewer = await context.viewer()
    if viewer is None or not viewer.is_admin:
        return None
    row = await context.loader(loaders.error_log_by_id).load(row_id)
    return ErrorLogType.from_model(row) if row else None


register_node("ActivityLog", _resolve_activity_node)
register_node("ErrorLog", _resolve_error_node)
