"""The auth part of the graph: User, Role, AuthPayload; `me`, `users`, `roles`; sign-in,
sessions and user administration mutations. Resolvers parse, call one service, map.

Size: over 400 lines on purpose: the domain's GraphQL types and its one Query/Mutation
piece (merged by graph/schema.py), thin resolvers side by side, as the other domains' graph
modules; most of the length is schema descriptions."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, TypeAlias, TypeVar

import strawberry

from atlas_gql.auth import account, admin, loaders
from atlas_gql.auth.models import PermissionName, Role, RoleName, User
from atlas_gql.auth.permissions import (
    permitted_mutation,
    requires,
    signed_in_field,
    signed_in_mutation,
)
from atlas_gql.auth.rules import user_grants_visible_to
from atlas_gql.db.loaders import LoaderFactory
from atlas_gql.db.pagination import Page, PageRequest
from atlas_gql.graph.context import Context, Info
from atlas_gql.graph.inputs import Changes, UserID, input_fields, set_fields
from atlas_gql.graph.paged import paged_field
from atlas_gql.graph.relay import (
    Node,
    from_row,
    register_node,
)
from atlas_gql.ids import decode_id_of
from atlas_gql.logs.loaders import usage_this_month_by_user

GrantT = TypeVar("GrantT")

# An `admin` service that changes one user (update_user, assign_role...).
UserChange: TypeAlias = Callable[..., Awaitable[User]]


@strawberry.type(name="Role", description="A global role granting a set of permissions.")
class RoleType:
    name: RoleName = strawberry.field(description="The role's name.")
    description: str | None = strawberry.field(
        description="What the role is for; null when not set."
    )
    permissions: list[PermissionName] = strawberry.field(
        description="The permissions the role grants."
    )


@strawberry.type(
    name="UserLimits",
    description="What a user may spend upstream and how fast they may send: their own "
    "limits where an administrator set them, else the server's defaults.",
)
class UserLimitsType:
    monthly_token_budget: int | None = strawberry.field(
        description="Tokens (input + output) the user's replies may use per UTC calendar "
        "month, in every project and personal thread; null: no limit."
    )
    monthly_token_budget_override: int | None = strawberry.field(
        description="The user's own budget, set by an administrator; null: the server's "
        "default (ATLAS_USER_MONTHLY_TOKENS) applies."
    )
    tokens_used_this_month: int = strawberry.field(
        description="Tokens the user's replies used this UTC calendar month."
    )
    messages_per_minute: int = strawberry.field(
        description="Messages the user may send per minute (a burst of this many, refilled "
        "over a minute)."
    )
    messages_per_minute_override: int | None = strawberry.field(
        description="The user's own rate, set by an administrator; null: the server's default "
        "(ATLAS_USER_MESSAGES_PER_MINUTE) applies."
    )


@strawberry.type(name="User", description="A person with an account.")
class UserType(Node):
    db_id: strawberry.Private[uuid.UUID]
    email: str = strawberry.field(
        description="The sign-in email, as registered (unique in any letter case)."
    )
    name: str | None = strawberry.field(description="The display name; null when not given.")
    is_active: bool = strawberry.field(
        description="False once deactivated by an administrator: the user cannot sign in and their "
        "sessions have ended."
    )
    created_at: datetime = strawberry.field(description="When the account was created (UTC).")
    updated_at: datetime = strawberry.field(description="When the account was last changed (UTC).")
    approved: strawberry.Private[datetime | None] = None
    own_budget: strawberry.Private[int | None] = None
    own_rate: strawberry.Private[int | None] = None

    # True when the object is known to be the viewer's own account (AuthPayload.user, read
    # before the new session's token exists); None: ask `rules.user_grants_visible_to`.
    grants_visible: strawberry.Private[bool | None] = None

    @classmethod
    def from_model(cls, user: User, *, grants_visible: bool | None = None) -> UserType:
        return from_row(
            cls,
            "User",
            user,
            grants_visible=grants_visible,
            approved=user.approved_at,
            own_budget=user.monthly_token_budget,
            own_rate=user.messages_per_minute,
        )

    async def _shows_grants(self, context: Context) -> bool:
        """Roles, permissions, approval and limits: the user's and MANAGE_USERS holders'."""
        if self.grants_visible is not None:
            return self.grants_visible
        return user_grants_visible_to(await context.viewer(), self.db_id)

    async def _grants(
        self, context: Context, by_user: LoaderFactory[uuid.UUID, list[GrantT]]
    ) -> list[GrantT]:
        """The user's roles or permissions (`by_user`); empty for a viewer who may not see
        them (`_shows_grants`)."""
        if not await self._shows_grants(context):
            return []
        return await context.loader(by_user).load(self.db_id)

    @strawberry.field(
        description="When the account was approved (created approved, `approveUser`, or a "
        "role granted); null while a registration awaits approval "
        "(ATLAS_REGISTRATION=approval): until then it holds no role and may not use AI. "
        "Shown to the user and to MANAGE_USERS holders; null for others."
    )
    async def approved_at(self, info: Info) -> datetime | None:
        return self.approved if await self._shows_grants(info.context) else None

    @strawberry.field(
        description="The user's spending and message limits and this month's use. Shown to "
        "the user and to MANAGE_USERS holders; null for others."
    )
    async def limits(self, info: Info) -> UserLimitsType | None:
        if not await self._shows_grants(info.context):
            return None
        settings = info.context.settings
        used = await info.context.loader(usage_this_month_by_user).load(self.db_id)
        default_budget = settings.atlas_user_monthly_tokens
        return UserLimitsType(
            monthly_token_budget=(
                self.own_budget if self.own_budget is not None else default_budget
            ),
            monthly_token_budget_override=self.own_budget,
            tokens_used_this_month=used.total_tokens,
            messages_per_minute=self.own_rate or settings.atlas_user_messages_per_minute,
            messages_per_minute_override=self.own_rate,
        )

    @strawberry.field(
        description="The user's global roles. Shown to the user and to holders of "
        "MANAGE_USERS; empty for anyone else."
    )
    async def roles(self, info: Info) -> list[RoleType]:
        roles = await self._grants(info.context, loaders.roles_by_user)
        return await role_types(info.context, roles)

    @strawberry.field(
        description="The permissions the user holds through their roles. Shown to the user "
        "and to holders of MANAGE_USERS; empty for anyone else."
    )
    async def permissions(self, info: Info) -> list[PermissionName]:
        return await self._grants(info.context, loaders.permissions_by_user)


async def role_type(context: Context, role: Role) -> RoleType:
    permissions = await context.loader(loaders.permissions_by_role).load(role.id)
    return RoleType(name=role.name, description=role.description, permissions=permissions)


async def role_types(context: Context, roles: list[Role]) -> list[RoleType]:
    """All at once, so every role's permissions load in the same batch (awaiting them one by
    one would make a user's second role a batch of its own)."""
    return list(await asyncio.gather(*(role_type(context, role) for role in roles)))


async def _resolve_user_node(context: Context, user_id: uuid.UUID) -> UserType | None:
    """A user is visible to themselves and to holders of MANAGE_USERS."""
    viewer = await context.viewer()
    if viewer is None:
        return None
    if viewer.user_id != user_id and not viewer.has_permission(PermissionName.MANAGE_USERS):
        return None
    user = await context.loader(loaders.user_by_id).load(user_id)
    return UserType.from_model(user) if user else None


register_node("User", _resolve_user_node)


@strawberry.type(description="The tokens of a session just opened or refreshed, and its user.")
class AuthPayload:
    access_token: str = strawberry.field(
        description="Short-lived JWT (ATLAS_ACCESS_TOKEN_TTL, default 15 minutes); send it as "
        "`Authorization: Bearer <token>` (WebSocket: in the `connection_init` payload). A "
        "refused token answers UNAUTHENTICATED with `extensions.reason`: TOKEN_EXPIRED (call "
        "`refreshSession`), TOKEN_INVALID (malformed, wrong signature or kind: sign in again) "
        "or SESSION_ENDED (logged out, revoked, or the user deactivated: sign in again)."
    )
    refresh_token: str = strawberry.field(
        description="Opaque, single-use: trade it for new tokens with `refreshSession`. "
        "Presenting it a second time ends the session."
    )
    access_token_expires_at: datetime = strawberry.field(
        description="When the access token stops working (UTC): refresh shortly before."
    )
    user: UserType = strawberry.field(description="The signed-in user.")

    @classmethod
    def from_signed_in(cls, signed_in: account.SignedIn) -> AuthPayload:
        return cls(
            access_token=signed_in.tokens.access_token,
            refresh_token=signed_in.tokens.refresh_token,
            access_token_expires_at=signed_in.tokens.access_token_expires_at,
            user=UserType.from_model(signed_in.user, grants_visible=True),
        )


@strawberry.input
class _NewAccount:
    """The fields `register` and `createUser` share (not in the schema by itself)."""

    email: str = strawberry.field(
        description="The sign-in email; CONFLICT when taken in any letter case."
    )
    password: str = strawberry.field(description="8 characters at least, 72 bytes (UTF-8) at most.")
    name: str | None = strawberry.field(description="The display name; optional.", default=None)


@strawberry.input(description="A new account.")
class RegisterInput(_NewAccount):
    pass


Register = Annotated[RegisterInput, strawberry.argument(description="The new account.")]


@strawberry.input(description="Credentials to sign in with.")
class LoginInput:
    email: str = strawberry.field(description="The account's email (any letter case).")
    password: str = strawberry.field(description="The account's password.")


Login = Annotated[LoginInput, strawberry.argument(description="The email and password.")]


@strawberry.input(description="The current password and its replacement.")
class ChangePasswordInput:
    current_password: str = strawberry.field(
        description="The password in use; a wrong one is UNAUTHENTICATED and counts toward "
        "RATE_LIMITED."
    )
    new_password: str = strawberry.field(
        description="8 characters at least, 72 bytes (UTF-8) at most."
    )


ChangePassword = Annotated[
    ChangePasswordInput, strawberry.argument(description="The current password and the new one.")
]


@strawberry.input(description="An account created by an administrator.")
class CreateUserInput(_NewAccount):
    roles: list[RoleName] | None = strawberry.field(
        default=None, description="Global roles; USER when omitted."
    )


CreateUser = Annotated[CreateUserInput, strawberry.argument(description="The new account.")]


@strawberry.input(description="Changes to a user; omitted fields stay as they are.")
class UpdateUserInput:
    name: strawberry.Maybe[str | None] = strawberry.field(
        description="New display name; null or an empty string clears it."
    )
    is_active: strawberry.Maybe[bool | None] = strawberry.field(
        description="false deactivates the account: its sessions end at once and it cannot "
        "sign in; true reactivates it. Null is refused."
    )


@strawberry.input(description="Narrows the `users` list; all given conditions apply.")
class UserFilter:
    search: str | None = strawberry.field(
        default=None, description="A substring of the email or the name (case-insensitive)."
    )
    role: RoleName | None = strawberry.field(
        default=None, description="Only users holding this global role."
    )
    is_active: bool | None = strawberry.field(
        description="true: active users only; false: deactivated ones only; omitted: both.",
        default=None,
    )
    awaiting_approval: bool | None = strawberry.field(
        default=None,
        description="true: only registrations awaiting approval; false: only approved accounts.",
    )


@strawberry.input(description="A user's own limits; omitted fields stay as they are.")
class UserLimitsInput:
    monthly_token_budget: strawberry.Maybe[int | None] = strawberry.field(
        description="Tokens (input + output) per UTC calendar month, 0 or more; null returns "
        "the user to the server's default (ATLAS_USER_MONTHLY_TOKENS)."
    )
    messages_per_minute: strawberry.Maybe[int | None] = strawberry.field(
        description="Messages per minute, 1 to 10000; null returns the user to the server's "
        "default (ATLAS_USER_MESSAGES_PER_MINUTE)."
    )


UserLimits = Annotated[
    UserLimitsInput, strawberry.argument(description="The limits to change (omitted = unchanged).")
]
RoleToAssign = Annotated[
    RoleName,
    strawberry.argument(description="The role to grant (granting one held changes nothing)."),
]
RoleToRevoke = Annotated[
    RoleName,
    strawberry.argument(
        description="The role to withdraw (withdrawing one not held changes nothing)."
    ),
]


async def _users(context: Context, given: UserFilter, request: PageRequest) -> Page[User]:
    return await admin.list_users(
        **await context.reading(),
        request=request,
        filter=admin.UserFilter.model_validate(input_fields(given)),
    )


@strawberry.type
class Query:
    @strawberry.field(
        description="The signed-in user; null without a token. A refused token is "
        "UNAUTHENTICATED with `extensions.reason` (TOKEN_EXPIRED, TOKEN_INVALID, "
        "SESSION_ENDED; see `AuthPayload.accessToken`)."
    )
    async def me(self, info: Info) -> UserType | None:
        viewer = await info.context.viewer()
        if viewer is None:
            return None
        user = await info.context.loader(loaders.user_by_id).load(viewer.user_id)
        return UserType.from_model(user) if user else None

    users = paged_field(
        UserType,
        filter=UserFilter,
        fetch=_users,
        description="Every user, oldest first, keyset-paginated (MANAGE_USERS).",
        extensions=requires(PermissionName.MANAGE_USERS),
    )

    @signed_in_field(description="Every global role and its permissions.")
    async def roles(self, info: Info) -> list[RoleType] | None:
        roles = await info.context.loader(loaders.all_roles).load(None)
        return await role_types(info.context, roles)


@strawberry.type
class Mutation:
    @strawberry.mutation(
        description="Create an account and sign it in. With ATLAS_REGISTRATION=open it gets the "
        "USER role; with `approval` no role (no AI) until an administrator approves it "
        "(`approveUser`); with `closed` registration is FORBIDDEN. CONFLICT when the email is "
        "taken in any letter case; BAD_USER_INPUT for a malformed email or an unfit password; "
        "RATE_LIMITED (`extensions.retryAfter` seconds) past the registrations allowed per "
        "address and per hour."
    )
    async def register(self, info: Info, input: Register) -> AuthPayload | None:
        context = info.context
        data = account.Registration(email=input.email, password=input.password, name=input.name)
        signed_in = await account.register(**await context.signing_in(), db=context.db, data=data)
        return AuthPayload.from_signed_in(signed_in)

    @strawberry.mutation(
        description="Sign in. A wrong email or password answers UNAUTHENTICATED (the same "
        "either way); repeated failures per account or address answer RATE_LIMITED with "
        "`extensions.retryAfter` seconds."
    )
    async def login(self, info: Info, input: Login) -> AuthPayload | None:
        context = info.context
        signed_in = await account.login(
            **await context.signing_in(),
            db=context.db,
            limiter=context.services.login_limiter,
            data=account.Credentials(email=input.email, password=input.password),
        )
        return AuthPayload.from_signed_in(signed_in)

    @strawberry.mutation(
        description="Trade a refresh token for new tokens of the same session. Each refresh "
        "token works once; presenting a used one ends its session (UNAUTHENTICATED)."
    )
    async def refresh_session(
        self,
        info: Info,
        refresh_token: Annotated[
            str,
            strawberry.argument(
                description="The `refreshToken` of the last AuthPayload of the session; an "
                "unknown, expired or used one is UNAUTHENTICATED."
            ),
        ],
    ) -> AuthPayload | None:
        signed_in = await account.refresh(
            **await info.context.signing_in(), refresh_token=refresh_token
        )
        return AuthPayload.from_signed_in(signed_in)

    @signed_in_mutation(
        description="End the current session (or the viewer's session of `refreshToken`), or "
        "all of the viewer's sessions with `allSessions: true`; their tokens stop working."
    )
    async def logout(
        self,
        info: Info,
        refresh_token: Annotated[
            str | None,
            strawberry.argument(
                description="End the session of this refresh token (one of the viewer's) "
                "instead of the one the access token belongs to."
            ),
        ] = None,
        all_sessions: Annotated[
            bool | None, strawberry.argument(description="true ends every session of the viewer.")
        ] = False,
    ) -> bool | None:
        return await account.logout(
            **await info.context.writing(),
            refresh_token=refresh_token,
            all_sessions=bool(all_sessions),
        )

    @signed_in_mutation(
        description="Replace the viewer's password; every other session of theirs ends."
    )
    async def change_password(self, info: Info, input: ChangePassword) -> bool | None:
        context = info.context
        return await account.change_password(
            **await context.signing_in(),
            db=context.db,
            limiter=context.services.login_limiter,
            data=account.PasswordChange(
                current_password=input.current_password, new_password=input.new_password
            ),
        )

    @permitted_mutation(
        PermissionName.MANAGE_USERS, description="Create an account (MANAGE_USERS)."
    )
    async def create_user(self, info: Info, input: CreateUser) -> UserType | None:
        context = info.context
        roles = tuple(input.roles) if input.roles is not None else None
        data = admin.UserCreate.model_validate(input_fields(input, roles=roles))
        user = await admin.create_user(
            **await context.writing(), settings=context.settings, data=data
        )
        return UserType.from_model(user)

    @permitted_mutation(
        PermissionName.MANAGE_USERS,
        description="Rename, deactivate or reactivate a user (MANAGE_USERS). Deactivation ends "
        "their sessions at once; deactivating yourself is a CONFLICT.",
    )
    async def update_user(
        self, info: Info, id: UserID, input: Changes[UpdateUserInput]
    ) -> UserType | None:
        data = admin.UserUpdate.model_validate(set_fields(input))
        return await _changed_user(info, admin.update_user, id, field="id", data=data)

    @permitted_mutation(
        PermissionName.MANAGE_USERS, description="Grant a global role (MANAGE_USERS)."
    )
    async def assign_role(self, info: Info, user_id: UserID, role: RoleToAssign) -> UserType | None:
        return await _changed_user(info, admin.assign_role, user_id, field="userId", role=role)

    @permitted_mutation(
        PermissionName.MANAGE_USERS,
        description="Withdraw a global role (MANAGE_USERS); withdrawing your own ADMIN role "
        "is a CONFLICT.",
    )
    async def revoke_role(self, info: Info, user_id: UserID, role: RoleToRevoke) -> UserType | None:
        return await _changed_user(info, admin.revoke_role, user_id, field="userId", role=role)

    @permitted_mutation(
        PermissionName.MANAGE_USERS,
        description="Approve a registration awaiting approval (MANAGE_USERS): the account gets "
        "the USER role and may use AI from its next request. Approving an approved account "
        "changes nothing.",
    )
    async def approve_user(
        self,
        info: Info,
        id: Annotated[
            strawberry.ID, strawberry.argument(description="The global ID of the user to approve.")
        ],
    ) -> UserType | None:
        return await _changed_user(info, admin.approve_user, id, field="id")

    @permitted_mutation(
        PermissionName.MANAGE_USERS,
        description="Set or clear a user's own monthly token budget and message rate "
        "(MANAGE_USERS); see `User.limits`. They apply from the user's next message.",
    )
    async def set_user_limits(
        self, info: Info, user_id: UserID, input: UserLimits
    ) -> UserType | None:
        data = admin.UserLimitsUpdate.model_validate(set_fields(input))
        return await _changed_user(info, admin.set_user_limits, user_id, field="userId", data=data)


async def _changed_user(
    info: Info, change: UserChange, user_id: strawberry.ID, *, field: str, **arguments: Any
) -> UserType:
    """The mutations of one user (updateUser, setUserLimits, approveUser, assignRole,
    revokeRole): its ID decoded (BAD_USER_INPUT naming `field`), one `admin` service call
    with `arguments`, the user as it is now."""
    user = await change(
        **await info.context.writing(),
        user_id=decode_id_of(user_id, "User", field=field),
        **arguments,
    )
    return UserType.from_model(user)
