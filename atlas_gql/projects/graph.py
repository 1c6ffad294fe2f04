"""The projects part of the graph: Project, ProjectMember, ProjectSetting, `projects`,
`project`, and the project, member and setting mutations. Resolvers stay thin: relations
resolve through per-request DataLoaders, rules live in `service`.

Size: a little over 400 lines on purpose: three small types and the domain's one
Query/Mutation piece, thin resolvers side by side, as the other domains' graph modules."""

from __future__ import annotations

import uuid
from datetime import datetime
from functools import partial
from typing import Annotated, TypeVar

import strawberry
from strawberry.scalars import JSON

from atlas_gql.ai import loaders as ai_loaders
from atlas_gql.ai.types import ThreadType
from atlas_gql.auth import loaders as auth_loaders
from atlas_gql.auth.graph import UserType
from atlas_gql.auth.models import PermissionName, User
from atlas_gql.auth.permissions import (
    authenticated,
    permitted_mutation,
    signed_in_field,
    signed_in_mutation,
)
from atlas_gql.db.loaders import LoaderFactory, PageKey
from atlas_gql.db.pagination import Page, PageRequest, empty_page
from atlas_gql.errors import NotFound
from atlas_gql.graph.context import Context, Info, Writing
from atlas_gql.graph.enums import described_enum
from atlas_gql.graph.inputs import After, Changes, First, ProjectID, input_fields, set_fields
from atlas_gql.graph.paged import paged_field
from atlas_gql.graph.relay import (
    DELETED,
    REFUSED,
    Connection,
    Node,
    from_attributes,
    from_row,
    global_id,
    register_node,
    requested_page,
    to_connection,
)
from atlas_gql.ids import decode_id_of
from atlas_gql.logs.graph import UsageSummaryType, project_usage_this_month
from atlas_gql.logs.usage import UsageTotals
from atlas_gql.projects import loaders, members, projects, settings
from atlas_gql.projects.access import can_see_project
from atlas_gql.projects.models import Project, ProjectMember, ProjectRole, ProjectSetting

RowT = TypeVar("RowT")

ProjectRoleEnum = described_enum(
    ProjectRole,
    name="ProjectRole",
    description="A member's role in a project: OWNER (everything, incl. deleting the project "
    "and granting OWNER), MANAGER (the project, its settings, threads, and members other "
    "than OWNERs), MEMBER (uses the threads), VIEWER (read only).",
    values={
        "OWNER": "Everything a MANAGER may, and deleting the project, granting and changing "
        "OWNER. A project keeps at least one.",
        "MANAGER": "Renames the project, sets its settings, shares assistants with it, "
        "manages threads and members other than OWNERs.",
        "MEMBER": "Starts threads and sends messages in the project.",
        "VIEWER": "Reads the project, its threads and messages; writes nothing.",
    },
)


async def _viewer_sees(context: Context, project_id: uuid.UUID) -> bool:
    viewer = await context.viewer()
    if viewer is None:
        return False
    role = (
        None
        if viewer.is_admin
        else await context.viewer_loader(loaders.viewer_role_by_project).load(project_id)
    )
    return can_see_project(viewer, role)


async def _load_user(context: Context, user_id: uuid.UUID) -> UserType:
    user = await context.loader(auth_loaders.user_by_id).load(user_id)
    if user is None:
        raise NotFound("User not found.")
    return UserType.from_model(user)


async def _load_project(context: Context, project_id: uuid.UUID) -> ProjectType:
    """The project a setting or a membership belongs to (visible with them)."""
    project = await context.loader(loaders.project_by_id).load(project_id)
    if project is None:
        raise NotFound("Project not found.")
    return ProjectType.from_model(project)


@strawberry.type(name="ProjectSetting", description="One JSON setting of a project.")
class ProjectSettingType:
    key: str = strawberry.field(description="The setting's name, e.g. `monthlyTokenBudget`.")
    value: JSON = strawberry.field(description="Any JSON value (at most 64 KiB).")
    updated_at: datetime = strawberry.field(description="When the value last changed.")
    project_db_id: strawberry.Private[uuid.UUID]

    @classmethod
    def from_model(cls, setting: ProjectSetting) -> ProjectSettingType:
        return from_attributes(cls, setting, key=setting.setting_key)

    @strawberry.field(
        description="The project the setting belongs to (select its `settings` in "
        "`setProjectSetting` so a normalised cache updates the list)."
    )
    async def project(self, info: Info) -> ProjectType:
        return await _load_project(info.context, self.project_db_id)


@strawberry.type(name="ProjectMember", description="A user's membership of a project, with a role.")
class ProjectMemberType(Node):
    db_id: strawberry.Private[uuid.UUID]
    project_db_id: strawberry.Private[uuid.UUID]
    user_db_id: strawberry.Private[uuid.UUID]
    role: ProjectRole = strawberry.field(description="The member's role in the project.")
    created_at: datetime = strawberry.field(description="When the user joined the project.")
    # Set when a page of members loaded its users in one batch (saves a resolver per member).
    loaded_user: strawberry.Private[UserType | None] = None

    @classmethod
    def from_model(cls, member: ProjectMember, *, user: User | None = None) -> ProjectMemberType:
        return from_row(
            cls,
            "ProjectMember",
            member,
            loaded_user=UserType.from_model(user) if user is not None else None,
        )

    @strawberry.field(description="The member.")
    def user(self, info: Info) -> UserType:
        if self.loaded_user is not None:
            return self.loaded_user
        # Not preloaded (node(id), mutations): an awaitable, which the executor awaits.
        return _load_user(info.context, self.user_db_id)  # type: ignore[return-value]

    @strawberry.field(description="The project.")
    async def project(self, info: Info) -> ProjectType:
        return await _load_project(info.context, self.project_db_id)


@strawberry.type(
    name="Project",
    description="A workspace shared by its members, holding assistants and threads. Visible "
    "to its members (and to ADMIN); to anyone else it does not exist.",
)
class ProjectType(Node):
    db_id: strawberry.Private[uuid.UUID]
    created_by_db_id: strawberry.Private[uuid.UUID]
    name: str = strawberry.field(description="The project's name (1 to 200 characters).")
    description: str | None = strawberry.field(description="What the project is about.")
    created_at: datetime = strawberry.field(description="When the project was created.")
    updated_at: datetime = strawberry.field(description="When the project last changed.")
    # True when whoever built this object already checked that the viewer may see the
    # project; otherwise its relation fields check (other domains build it from a model).
    visibility_checked: strawberry.Private[bool] = False

    @classmethod
    def from_model(cls, project: Project, *, visibility_checked: bool = False) -> ProjectType:
        return from_row(cls, "Project", project, visibility_checked=visibility_checked)

    async def _visible(self, context: Context) -> bool:
        return self.visibility_checked or await _viewer_sees(context, self.db_id)

    async def _page(
        self,
        info: Info,
        pages: LoaderFactory[PageKey, Page[RowT]],
        *,
        first: int | None,
        after: str | None,
    ) -> Page[RowT]:
        """A page of the project's members or threads; empty for a viewer who may not see
        the project."""
        request = requested_page(info, first=first, after=after)
        if not await self._visible(info.context):
            return empty_page()
        return await info.context.loader(pages).load((self.db_id, request))

    @strawberry.field(description="Who created the project.")
    async def created_by(self, info: Info) -> UserType:
        return await _load_user(info.context, self.created_by_db_id)

    @strawberry.field(description="The members, oldest first (Relay connection). " + REFUSED)
    async def members(
        self, info: Info, first: First = None, after: After = None
    ) -> Connection[ProjectMemberType] | None:
        page = await self._page(info, loaders.members_page, first=first, after=after)
        users = await info.context.loader(auth_loaders.user_by_id).load_many(
            [member.user_id for member in page.items]
        )
        user_of = {member.id: user for member, user in zip(page.items, users, strict=True)}
        return to_connection(
            page, lambda member: ProjectMemberType.from_model(member, user=user_of[member.id])
        )

    @strawberry.field(description="The project's settings, ordered by key.")
    async def settings(self, info: Info) -> list[ProjectSettingType]:
        if not await self._visible(info.context):
            return []
        settings = await info.context.loader(loaders.settings_by_project).load(self.db_id)
        return [ProjectSettingType.from_model(setting) for setting in settings]

    @strawberry.field(
        description="The project's threads, newest first (Relay connection). " + REFUSED
    )
    async def threads(
        self, info: Info, first: First = None, after: After = None
    ) -> Connection[ThreadType] | None:
        page = await self._page(info, ai_loaders.threads_page, first=first, after=after)
        return to_connection(page, ThreadType.from_model)

    @strawberry.field(
        description="The signed-in viewer's role in the project; null when they are not a "
        "member (an ADMIN looking in).",
    )
    async def viewer_role(self, info: Info) -> ProjectRole | None:
        return await info.context.viewer_loader(loaders.viewer_role_by_project).load(self.db_id)

    @strawberry.field(
        description="AI tokens and cost of the current calendar month (UTC), what the "
        "monthlyTokenBudget setting counts; zeros for a viewer who may not see the project.",
    )
    async def usage_this_month(self, info: Info) -> UsageSummaryType:
        if not await self._visible(info.context):
            return UsageSummaryType.from_totals(UsageTotals())
        return await project_usage_this_month(info, self.db_id)


async def resolve_visible_project(context: Context, project_id: uuid.UUID) -> ProjectType | None:
    """The project when the viewer may see it, else None (for `project`, `node`)."""
    if await context.viewer() is None:
        return None
    project = await context.loader(loaders.project_by_id).load(project_id)
    if project is None or not await _viewer_sees(context, project_id):
        return None
    return ProjectType.from_model(project, visibility_checked=True)


async def _resolve_member_node(context: Context, member_id: uuid.UUID) -> ProjectMemberType | None:
    if await context.viewer() is None:
        return None
    member = await context.loader(loaders.member_by_id).load(member_id)
    if member is None or not await _viewer_sees(context, member.project_id):
        return None
    return ProjectMemberType.from_model(member)


register_node("Project", resolve_visible_project)
register_node("ProjectMember", _resolve_member_node)


@strawberry.input(description="Narrows `projects`.")
class ProjectFilter:
    search: str | None = strawberry.field(
        default=None, description="Keeps projects whose name contains this (any case)."
    )
    role: ProjectRole | None = strawberry.field(
        default=None, description="Keeps projects where the viewer has this role."
    )


@strawberry.input(description="A new project.")
class CreateProjectInput:
    name: str = strawberry.field(description="1 to 200 characters (trimmed).")
    description: str | None = strawberry.field(default=None, description="Optional.")


CreateProject = Annotated[CreateProjectInput, strawberry.argument(description="The new project.")]


@strawberry.input(description="Changes to a project; omitted fields stay as they are.")
class UpdateProjectInput:
    name: strawberry.Maybe[str | None] = strawberry.field(
        description="1 to 200 characters (trimmed); null is refused."
    )
    description: strawberry.Maybe[str | None] = strawberry.field(
        description="Null or blank clears it."
    )


async def _projects(context: Context, given: ProjectFilter, request: PageRequest) -> Page[Project]:
    page = await projects.list_projects(
        **await context.reading(),
        request=request,
        filter=projects.ProjectFilter.model_validate(input_fields(given)),
    )
    context.loader(loaders.project_by_id).prime_many(
        {project.id: project for project in page.items}
    )
    return page


@strawberry.type
class Query:
    projects = paged_field(
        ProjectType,
        filter=ProjectFilter,
        fetch=_projects,
        convert=partial(ProjectType.from_model, visibility_checked=True),
        description="The projects the viewer belongs to (every project for ADMIN), newest first.",
        extensions=authenticated(),
    )

    @signed_in_field(
        description="A project by ID; null when it does not exist or the viewer is not a member."
    )
    async def project(self, info: Info, id: ProjectID) -> ProjectType | None:
        return await resolve_visible_project(info.context, decode_id_of(id, "Project"))


# The `userId` naming a member of the project (updateProjectMember, removeProjectMember).
MemberUserID = Annotated[
    strawberry.ID,
    strawberry.argument(description="The member's user global ID; NOT_FOUND when not a member."),
]


class InProject(Writing):
    """`Writing` and the project a mutation changes, as the project services take them."""

    project_id: uuid.UUID


def _project_id(value: strawberry.ID, field: str = "projectId") -> uuid.UUID:
    return decode_id_of(value, "Project", field=field)


async def _in_project(info: Info, value: strawberry.ID, field: str = "projectId") -> InProject:
    """What a mutation of one project hands its service: `writing()` and the project's id
    (BAD_USER_INPUT naming `field`)."""
    return InProject(**await info.context.writing(), project_id=_project_id(value, field))


def _user_id(value: strawberry.ID) -> uuid.UUID:
    return decode_id_of(value, "User", field="userId")


@strawberry.type
class Mutation:
    @permitted_mutation(
        PermissionName.CREATE_PROJECT, description="Create a project; the viewer becomes its OWNER."
    )
    async def create_project(self, info: Info, input: CreateProject) -> ProjectType | None:
        project = await projects.create_project(
            **await info.context.writing(),
            data=projects.ProjectCreate(name=input.name, description=input.description),
        )
        return ProjectType.from_model(project, visibility_checked=True)

    @signed_in_mutation(description="Rename or re-describe a project (MANAGER+).")
    async def update_project(
        self, info: Info, id: ProjectID, input: Changes[UpdateProjectInput]
    ) -> ProjectType | None:
        project = await projects.update_project(
            **await _in_project(info, id, "id"),
            data=projects.ProjectUpdate.model_validate(set_fields(input)),
        )
        return ProjectType.from_model(project, visibility_checked=True)

    @signed_in_mutation(
        description="Delete a project (OWNER or ADMIN) with its members, settings, assistants, "
        "threads and messages. " + DELETED
    )
    async def delete_project(self, info: Info, id: ProjectID) -> strawberry.ID | None:
        project_id = _project_id(id, "id")
        await projects.delete_project(**await info.context.writing(), project_id=project_id)
        return global_id("Project", project_id)

    @signed_in_mutation(
        description="Add a user to a project (MANAGER+; only an OWNER grants OWNER). "
        "CONFLICT when they already are a member."
    )
    async def add_project_member(
        self,
        info: Info,
        project_id: ProjectID,
        user_id: Annotated[
            strawberry.ID, strawberry.argument(description="The global ID of the user to add.")
        ],
        role: Annotated[ProjectRole, strawberry.argument(description="Their role in the project.")],
    ) -> ProjectMemberType | None:
        member = await members.add_member(
            **await _in_project(info, project_id),
            data=members.MemberAdd(user_id=_user_id(user_id), role=role),
        )
        return ProjectMemberType.from_model(member)

    @signed_in_mutation(
        description="Change a member's role (MANAGER+; OWNER granted or changed only by an "
        "OWNER, which is how ownership is transferred). The last OWNER cannot be demoted."
    )
    async def update_project_member(
        self,
        info: Info,
        project_id: ProjectID,
        user_id: MemberUserID,
        role: Annotated[ProjectRole, strawberry.argument(description="Their new role.")],
    ) -> ProjectMemberType | None:
        member = await members.update_member(
            **await _in_project(info, project_id),
            user_id=_user_id(user_id),
            data=members.MemberUpdate(role=role),
        )
        return ProjectMemberType.from_model(member)

    @signed_in_mutation(
        description="Remove a member (MANAGER+; OWNERs only by an OWNER); any member may "
        "remove themself. The last OWNER cannot be removed. Answers the removed membership's "
        "ID (a ProjectMember; evict it from a normalised cache, e.g. Apollo's `cache.evict`); "
        "null, with an error, when refused."
    )
    async def remove_project_member(
        self, info: Info, project_id: ProjectID, user_id: MemberUserID
    ) -> strawberry.ID | None:
        member = await members.remove_member(
            **await _in_project(info, project_id),
            user_id=_user_id(user_id),
        )
        return global_id("ProjectMember", member.id)

    @signed_in_mutation(
        description="Set a JSON setting (MANAGER+), replacing any value the key had. Keys: "
        "`^[a-zA-Z][a-zA-Z0-9_.-]{0,63}$`; values: any JSON up to 64 KiB. Known keys: "
        "`defaultAssistantId` (the ID of an Assistant of the project), `monthlyTokenBudget` "
        "(a non-negative integer)."
    )
    async def set_project_setting(
        self,
        info: Info,
        project_id: ProjectID,
        key: Annotated[
            str,
            strawberry.argument(
                description="The setting's key: a letter, then up to 63 letters, digits, `_`, `.` "
                "or `-`."
            ),
        ],
        value: Annotated[
            JSON,
            strawberry.argument(
                description="Any JSON value up to 64 KiB (known keys check theirs)."
            ),
        ],
    ) -> ProjectSettingType | None:
        setting = await settings.set_setting(
            **await _in_project(info, project_id),
            data=settings.SettingSet(key=key, value=value),
        )
        return ProjectSettingType.from_model(setting)

    @signed_in_mutation(
        description="Remove a setting (MANAGER+; idempotent: a key that is not set changes "
        "nothing). Answers the project, whose `settings` changed."
    )
    async def delete_project_setting(
        self,
        info: Info,
        project_id: ProjectID,
        key: Annotated[str, strawberry.argument(description="The key of the setting to remove.")],
    ) -> ProjectType | None:
        project = await settings.delete_setting(**await _in_project(info, project_id), key=key)
        return ProjectType.from_model(project, visibility_checked=True)
