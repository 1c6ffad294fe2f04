"""The personal API keys' part of the graph (docs/api-keys.md): `ApiKey`, `apiKeys`,
`createApiKey`, `revokeApiKey`. A GraphQL piece of the auth domain, beside `auth/graph.py`
(which is long enough already). Resolvers parse, call one service, map."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

import strawberry

from atlas_gql.auth import apikeys, loaders
from atlas_gql.auth.graph import UserType
from atlas_gql.auth.models import ApiKey, ApiKeyScope
from atlas_gql.auth.permissions import signed_in_field, signed_in_mutation
from atlas_gql.errors import AtlasError
from atlas_gql.graph.context import Info
from atlas_gql.graph.enums import described_enum
from atlas_gql.graph.inputs import After, First, input_fields, optional_id
from atlas_gql.graph.relay import (
    REFUSED,
    Connection,
    Node,
    from_row,
    register_service_node,
    requested_page,
    to_connection,
)
from atlas_gql.ids import decode_id_of

ApiKeyScopeEnum = described_enum(
    ApiKeyScope,
    name="ApiKeyScope",
    description="What a personal API key may do, within what its user may do. Every key "
    "reads (READ); the others let through the user's own permissions.",
    values={
        "READ": "Queries and subscriptions: whatever the user may read. Every key has it.",
        "WRITE": "Mutations that change the workspace (projects, members, settings, "
        "assistants, threads, files), and the CREATE_PROJECT permission.",
        "USE_AI": "The USE_AI permission: create assistants and threads, upload files, send "
        "and cancel messages.",
        "ADMIN": "The ADMIN role and MANAGE_USERS (administrators only): without it, an "
        "administrator's key sees and does what a non-administrator would.",
    },
)


@strawberry.type(
    name="ApiKey",
    description="A personal API key: send its secret as `Authorization: Bearer atlas_sk_…` "
    "(WebSocket: in the `connection_init` payload) to act as its user, narrowed by its "
    "scopes. Only its prefix is kept readable; the secret was shown once, by createApiKey.",
)
class ApiKeyType(Node):
    db_id: strawberry.Private[uuid.UUID]
    user_db_id: strawberry.Private[uuid.UUID]
    name: str = strawberry.field(description="What the key is for, as its user named it.")
    prefix: str = strawberry.field(
        description="The secret's first characters (`atlas_sk_` and 8 more): enough to tell "
        "keys apart, never to use one."
    )
    scopes: list[ApiKeyScope] = strawberry.field(
        description="What the key may do (within what its user may do at the time of use)."
    )
    created_at: datetime = strawberry.field(description="When the key was created (UTC).")
    expires_at: datetime | None = strawberry.field(
        description="When the key stops working (UTC); null: never, until revoked."
    )
    last_used_at: datetime | None = strawberry.field(
        description="When the key last authenticated a request (UTC), to within a minute "
        "(ATLAS_API_KEY_LAST_USED_INTERVAL); null: never used."
    )
    revoked_at: datetime | None = strawberry.field(
        description="When the key was revoked (UTC); null while it is not."
    )

    @classmethod
    def from_model(cls, key: ApiKey) -> ApiKeyType:
        return from_row(cls, "ApiKey", key, scopes=[ApiKeyScope(scope) for scope in key.scopes])

    @strawberry.field(description="The user the key acts as.")
    async def user(self, info: Info) -> UserType:
        user = await info.context.loader(loaders.user_by_id).load(self.user_db_id)
        if user is None:
            raise AtlasError()  # a key's user cannot be deleted (users are deactivated)
        return UserType.from_model(user)


# A key is visible to its user and to holders of MANAGE_USERS (the service's getter says).
register_service_node(
    "ApiKey",
    lambda db, viewer, id: apikeys.get_api_key(db=db, viewer=viewer, key_id=id),
    ApiKeyType.from_model,
)


@strawberry.type(description="A new personal API key and its secret.")
class CreateApiKeyPayload:
    secret: str = strawberry.field(
        description="The key's secret, `atlas_sk_` and 43 characters: shown this once and "
        "never again (only its SHA-256 is stored). Keep it like a password."
    )
    api_key: ApiKeyType = strawberry.field(description="The key.")


@strawberry.input(description="A new personal API key.")
class CreateApiKeyInput:
    name: str = strawberry.field(description="What the key is for; 1 to 100 characters.")
    expires_at: datetime | None = strawberry.field(
        default=None,
        description="When the key stops working (with a time zone offset, in the future); "
        "null or omitted: never, until revoked.",
    )
    scopes: list[ApiKeyScope] | None = strawberry.field(
        default=None,
        description="What the key may do; READ is always added. Omitted or null: everything "
        "its user may do now (READ, WRITE, USE_AI, and ADMIN for an administrator). ADMIN "
        "asked by a non-administrator is FORBIDDEN.",
    )


CreateApiKey = Annotated[CreateApiKeyInput, strawberry.argument(description="The new key.")]


@strawberry.input(description="The key to revoke.")
class RevokeApiKeyInput:
    id: strawberry.ID = strawberry.field(description="The ApiKey's global ID.")


RevokeApiKey = Annotated[RevokeApiKeyInput, strawberry.argument(description="The key.")]


@strawberry.type
class Query:
    @signed_in_field(
        description="Personal API keys, newest first: the viewer's own, or with `userId` "
        "another user's (MANAGE_USERS; FORBIDDEN otherwise). " + REFUSED
    )
    async def api_keys(
        self,
        info: Info,
        first: First = None,
        after: After = None,
        user_id: Annotated[
            strawberry.ID | None,
            strawberry.argument(
                description="Whose keys (a User's global ID); omitted: the viewer's own."
            ),
        ] = None,
        include_revoked: Annotated[
            bool | None,
            strawberry.argument(description="true lists revoked keys too; default false."),
        ] = False,
    ) -> Connection[ApiKeyType] | None:
        page = await apikeys.list_api_keys(
            **await info.context.reading(),
            user_id=optional_id(user_id, "User", field="userId"),
            include_revoked=bool(include_revoked),
            request=requested_page(info, first=first, after=after),
        )
        return to_connection(page, ApiKeyType.from_model)


@strawberry.type
class Mutation:
    @signed_in_mutation(
        description="Create a personal API key for the viewer; its secret is in the answer, "
        "once. Needs a signed-in session (an API key cannot make keys: FORBIDDEN); CONFLICT "
        "past ATLAS_API_KEYS_PER_USER live keys; BAD_USER_INPUT for an empty name or a past "
        "expiry."
    )
    async def create_api_key(self, info: Info, input: CreateApiKey) -> CreateApiKeyPayload | None:
        context = info.context
        scopes = tuple(input.scopes) if input.scopes is not None else None
        data = apikeys.ApiKeyCreate.model_validate(input_fields(input, scopes=scopes))
        created = await apikeys.create_api_key(
            **await context.writing(), settings=context.settings, data=data
        )
        return CreateApiKeyPayload(
            secret=created.secret, api_key=ApiKeyType.from_model(created.api_key)
        )

    @signed_in_mutation(
        description="Revoke a personal API key (its user, or MANAGE_USERS for anyone's): it "
        "stops working at once, and open subscriptions made with it end at their next "
        "exchange. A revoked key is answered as it is. NOT_FOUND for a key the viewer may not "
        "see; needs a signed-in session (FORBIDDEN with an API key)."
    )
    async def revoke_api_key(self, info: Info, input: RevokeApiKey) -> ApiKeyType | None:
        key = await apikeys.revoke_api_key(
            **await info.context.writing(), key_id=decode_id_of(input.id, "ApiKey", field="id")
        )
        return ApiKeyType.from_model(key)
