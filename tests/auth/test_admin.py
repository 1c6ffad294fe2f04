"""User administration (MANAGE_USERS) and the permission directives.

Size: a little over 400 lines on purpose: one test per administration mutation and
directive, sharing the documents at the top."""

from __future__ import annotations

import re
import uuid
from typing import Any

import sqlalchemy as sa
from graphql import FieldDefinitionNode, parse, print_ast
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from atlas_gql.auth.account import create_user_account
from atlas_gql.auth.models import RoleName
from atlas_gql.graph.schema import export_sdl
from atlas_gql.ids import encode_global_id
from tests.auth.conftest import ME, REFRESH, login, signed_in
from tests.conftest import SEED_PASSWORD, GraphQLClient, counting_statements, error_codes

USERS = """
query Users($first: Int, $after: String, $filter: UserFilter) {
  users(first: $first, after: $after, filter: $filter) {
    totalCount
    pageInfo { hasNextPage endCursor }
    edges { cursor node { id email isActive roles { name } } }
  }
}
"""

CREATE_USER = """
mutation Create($input: CreateUserInput!) {
  createUser(input: $input) { id email name isActive roles { name } permissions }
}
"""

UPDATE_USER = """
mutation Update($id: ID!, $input: UpdateUserInput!) {
  updateUser(id: $id, input: $input) { id name isActive }
}
"""

ASSIGN = """
mutation Assign($id: ID!, $role: RoleName!) {
  assignRole(userId: $id, role: $role) { roles { name } permissions }
}
"""

REVOKE = """
mutation Revoke($id: ID!, $role: RoleName!) {
  revokeRole(userId: $id, role: $role) { roles { name } permissions }
}
"""


def fresh_email(prefix: str = "staff") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}@example.com"


async def create_user(gql: GraphQLClient, token: str, **input: Any) -> dict[str, Any]:
    body = await gql(CREATE_USER, {"input": input}, token=token)
    assert "errors" not in body, body
    user: dict[str, Any] = body["data"]["createUser"]
    return user


async def user_global_id(db: AsyncSession, email: str) -> str:
    user_id = (
        await db.execute(sa.text("SELECT id FROM users WHERE email = :e"), {"e": email})
    ).scalar_one()
    return encode_global_id("User", user_id)


def _field_signatures(sdl: str) -> str:
    """Every field of the SDL as one line, `name(args): Type @directives`, descriptions left
    out (they spread a field's arguments over several lines)."""
    lines = []
    for definition in parse(sdl).definitions:
        for field in getattr(definition, "fields", None) or ():
            if not isinstance(field, FieldDefinitionNode):
                continue
            args = ", ".join(
                f"{arg.name.value}: {print_ast(arg.type)}"
                + (f" = {print_ast(arg.default_value)}" if arg.default_value else "")
                for arg in field.arguments or ()
            )
            directives = "".join(f" {print_ast(d)}" for d in field.directives or ())
            params = f"({args})" if args else ""
            lines.append(f"{field.name.value}{params}: {print_ast(field.type)}{directives}")
    return "\n".join(lines)


def test_directives_are_visible_in_the_sdl() -> None:
    sdl = _field_signatures(export_sdl())
    expected = [
        "@hasPermission(permission: MANAGE_USERS)",
        "roles: [Role!] @authenticated",
        "changePassword(input: ChangePasswordInput!): Boolean @authenticated",
        "createUser(input: CreateUserInput!): User @hasPermission(permission: MANAGE_USERS)",
        "updateUser(id: ID!, input: UpdateUserInput!): User "
        "@hasPermission(permission: MANAGE_USERS)",
        "assignRole(userId: ID!, role: RoleName!): User @hasPermission(permission: MANAGE_USERS)",
        "revokeRole(userId: ID!, role: RoleName!): User @hasPermission(permission: MANAGE_USERS)",
    ]
    for fragment in expected:
        assert fragment in sdl, fragment
    assert re.search(
        r"\busers\(.*?\): UserConnection @hasPermission\(permission: MANAGE_USERS\)", sdl, re.S
    )
    logout_line = next(line for line in sdl.splitlines() if line.strip().startswith("logout("))
    assert logout_line.endswith("Boolean @authenticated")
    assert "directive @authenticated on FIELD_DEFINITION" in export_sdl()
    for name in ("register(", "login(", "refreshSession("):
        line = next(line for line in sdl.splitlines() if line.strip().startswith(name))
        assert "@" not in line, line


async def test_guarded_fields_without_a_token_are_unauthenticated(gql: GraphQLClient) -> None:
    for document in (
        "{ users { totalCount } }",
        "{ roles { name } }",
        'mutation { assignRole(userId: "x", role: ADMIN) { id } }',
    ):
        body = await gql(document)
        assert error_codes(body) == ["UNAUTHENTICATED"], document


async def test_a_user_is_forbidden_users_and_create_project(
    gql: GraphQLClient, sign_in: Any, db: AsyncSession
) -> None:
    token = await sign_in("user@example.com")
    body = await gql("{ users { totalCount } }", token=token)
    assert error_codes(body) == ["FORBIDDEN"]
    assert body["data"] == {"users": None}
    created = await gql('mutation { createProject(input: {name: "Nope"}) { id } }', token=token)
    assert error_codes(created) == ["FORBIDDEN"]
    body = await gql(
        CREATE_USER,
        {"input": {"email": fresh_email(), "password": "a-good-password"}},
        token=token,
    )
    assert error_codes(body) == ["FORBIDDEN"]
    target = await user_global_id(db, "pm@example.com")
    for document, variables in (
        (UPDATE_USER, {"id": target, "input": {"isActive": False}}),
        (ASSIGN, {"id": target, "role": "ADMIN"}),
        (REVOKE, {"id": target, "role": "PROJECT_MANAGER"}),
    ):
        assert error_codes(await gql(document, variables, token=token)) == ["FORBIDDEN"]
    # Roles are readable by anyone signed in.
    roles = (await gql("{ roles { name permissions } }", token=token))["data"]["roles"]
    assert {role["name"] for role in roles} == {"ADMIN", "USER", "PROJECT_MANAGER"}
    pm = await signed_in(gql, "pm@example.com", SEED_PASSWORD)
    assert (await gql(ME, token=pm["accessToken"]))["data"]["me"]["roles"] == [
        {"name": "PROJECT_MANAGER"}
    ]


async def test_admin_creates_promotes_and_deactivates_a_user(
    gql: GraphQLClient, sign_in: Any, db: AsyncSession
) -> None:
    admin = await sign_in("admin@example.com")
    email = fresh_email()
    created = await create_user(gql, admin, email=email, password="first-password-1", name="Grace")
    assert created["email"] == email
    assert created["isActive"] is True
    assert [role["name"] for role in created["roles"]] == ["USER"]
    session = await signed_in(gql, email, "first-password-1")
    assigned = await gql(ASSIGN, {"id": created["id"], "role": "PROJECT_MANAGER"}, token=admin)
    names = {role["name"] for role in assigned["data"]["assignRole"]["roles"]}
    assert names == {"USER", "PROJECT_MANAGER"}
    # Takes effect on the user's very next request.
    me = (await gql(ME, token=session["accessToken"]))["data"]["me"]
    assert sorted(me["permissions"]) == ["CREATE_PROJECT", "USE_AI"]

    deactivated = await gql(
        UPDATE_USER, {"id": created["id"], "input": {"isActive": False}}, token=admin
    )
    assert deactivated["data"]["updateUser"]["isActive"] is False
    assert error_codes(await gql(ME, token=session["accessToken"])) == ["UNAUTHENTICATED"]
    refreshed = await gql(REFRESH, {"token": session["refreshToken"]})
    assert error_codes(refreshed) == ["UNAUTHENTICATED"]
    refused = await login(gql, email, "first-password-1")
    assert error_codes(refused) == ["UNAUTHENTICATED"]
    assert refused["errors"][0]["message"] == "Invalid email or password."
    revoked = (
        await db.execute(
            sa.text(
                "SELECT count(*) FROM sessions s JOIN users u ON u.id = s.user_id "
                "WHERE u.email = :e AND s.revoked_reason = 'user_deactivated'"
            ),
            {"e": email},
        )
    ).scalar_one()
    assert revoked == 1

    rows = (
        await db.execute(
            sa.text(
                "SELECT a.action, a.entity_id, a.details, a.ip_address, u.email AS actor "
                "FROM activity_logs a JOIN users u ON u.id = a.user_id "
                "WHERE a.action IN ('user.create', 'role.assign', 'user.deactivate') "
                "ORDER BY a.action"
            )
        )
    ).all()
    assert [row.action for row in rows] == ["role.assign", "user.create", "user.deactivate"]
    for row in rows:
        assert row.actor == "admin@example.com"
        assert encode_global_id("User", row.entity_id) == created["id"]
        assert row.ip_address == "203.0.113.7"
    assert rows[0].details == {"role": "PROJECT_MANAGER"}
    assert "first-password-1" not in str([row.details for row in rows])

    reactivated = await gql(
        UPDATE_USER, {"id": created["id"], "input": {"isActive": True, "name": ""}}, token=admin
    )
    assert reactivated["data"]["updateUser"] == {
        "id": created["id"],
        "name": None,
        "isActive": True,
    }
    assert await signed_in(gql, email, "first-password-1")


async def test_create_user_with_roles_and_bad_input(gql: GraphQLClient, sign_in: Any) -> None:
    admin = await sign_in("admin@example.com")
    manager = await create_user(
        gql, admin, email=fresh_email(), password="a-good-password", roles=["PROJECT_MANAGER"]
    )
    assert [role["name"] for role in manager["roles"]] == ["PROJECT_MANAGER"]
    nobody = await create_user(
        gql, admin, email=fresh_email(), password="a-good-password", roles=[]
    )
    assert nobody["roles"] == []
    assert nobody["permissions"] == []
    for bad, field in (
        ({"email": "nope", "password": "a-good-password"}, "email"),
        ({"email": fresh_email(), "password": "short"}, "password"),
        ({"email": "USER@example.com", "password": "a-good-password"}, "email"),
    ):
        body = await gql(CREATE_USER, {"input": bad}, token=admin)
        assert error_codes(body) in (["BAD_USER_INPUT"], ["CONFLICT"])
        assert body["errors"][0]["extensions"]["field"] == field
    unknown_role = await gql(
        CREATE_USER,
        {"input": {"email": fresh_email(), "password": "a-good-password", "roles": ["ROOT"]}},
        token=admin,
    )
    assert unknown_role["errors"]
    assert unknown_role.get("data") is None


async def test_unknown_role_name_fails_enum_validation(
    gql: GraphQLClient, sign_in: Any, db: AsyncSession
) -> None:
    admin = await sign_in("admin@example.com")
    target = await user_global_id(db, "user@example.com")
    literal = await gql(
        f'mutation {{ assignRole(userId: "{target}", role: SUPERUSER) {{ id }} }}', token=admin
    )
    assert error_codes(literal) == ["GRAPHQL_VALIDATION_FAILED"]
    assert "SUPERUSER" in literal["errors"][0]["message"]
    variable = await gql(ASSIGN, {"id": target, "role": "SUPERUSER"}, token=admin)
    assert variable["errors"]
    assert variable.get("data") is None
    count = await db.execute(
        sa.text("SELECT count(*) FROM activity_logs WHERE action LIKE 'role.%'")
    )
    assert count.scalar_one() == 0


async def test_malformed_wrong_type_and_unknown_ids(
    gql: GraphQLClient, sign_in: Any, db: AsyncSession
) -> None:
    admin = await sign_in("admin@example.com")
    malformed = await gql(UPDATE_USER, {"id": "not-an-id", "input": {"name": "x"}}, token=admin)
    assert error_codes(malformed) == ["BAD_USER_INPUT"]
    assert malformed["errors"][0]["extensions"]["field"] == "id"
    project_id = encode_global_id("Project", uuid.uuid4())
    wrong_type = await gql(ASSIGN, {"id": project_id, "role": "ADMIN"}, token=admin)
    assert error_codes(wrong_type) == ["BAD_USER_INPUT"]
    assert wrong_type["errors"][0]["extensions"]["field"] == "userId"
    unknown = encode_global_id("User", uuid.uuid4())
    for document, variables in (
        (UPDATE_USER, {"id": unknown, "input": {"isActive": False}}),
        (ASSIGN, {"id": unknown, "role": "ADMIN"}),
        (REVOKE, {"id": unknown, "role": "ADMIN"}),
    ):
        assert error_codes(await gql(document, variables, token=admin)) == ["NOT_FOUND"]


async def test_admin_cannot_lock_themself_out(
    gql: GraphQLClient, sign_in: Any, db: AsyncSession
) -> None:
    admin = await sign_in("admin@example.com")
    me = await user_global_id(db, "admin@example.com")
    deactivate = await gql(UPDATE_USER, {"id": me, "input": {"isActive": False}}, token=admin)
    assert error_codes(deactivate) == ["CONFLICT"]
    revoke = await gql(REVOKE, {"id": me, "role": "ADMIN"}, token=admin)
    assert error_codes(revoke) == ["CONFLICT"]
    body = await gql(ME, token=admin)
    assert body["data"]["me"]["roles"] == [{"name": "ADMIN"}]
    # Renaming yourself is fine.
    renamed = await gql(UPDATE_USER, {"id": me, "input": {"name": "Root"}}, token=admin)
    assert renamed["data"]["updateUser"]["name"] == "Root"


async def test_revoke_role_takes_effect_at_once_and_is_logged(
    gql: GraphQLClient, sign_in: Any, db: AsyncSession
) -> None:
    admin = await sign_in("admin@example.com")
    pm_token = await sign_in("pm@example.com")
    target = await user_global_id(db, "pm@example.com")
    body = await gql(REVOKE, {"id": target, "role": "PROJECT_MANAGER"}, token=admin)
    assert body["data"]["revokeRole"] == {"roles": [], "permissions": []}
    created = await gql('mutation { createProject(input: {name: "P"}) { id } }', token=pm_token)
    assert error_codes(created) == ["FORBIDDEN"]
    again = await gql(REVOKE, {"id": target, "role": "PROJECT_MANAGER"}, token=admin)
    assert again["data"]["revokeRole"]["roles"] == []
    rows = (
        await db.execute(sa.text("SELECT details FROM activity_logs WHERE action = 'role.revoke'"))
    ).all()
    assert [row.details for row in rows] == [{"role": "PROJECT_MANAGER"}]


async def test_users_lists_filters_and_paginates(gql: GraphQLClient, sign_in: Any) -> None:
    admin = await sign_in("admin@example.com")
    marker = uuid.uuid4().hex[:8]
    emails = [f"list-{marker}-{index}@example.com" for index in range(3)]
    for email in emails:
        await create_user(gql, admin, email=email, password="a-good-password", name=f"L {marker}")
    everyone = (await gql(USERS, {"first": 100}, token=admin))["data"]["users"]
    assert everyone["totalCount"] >= 6
    listed = [edge["node"]["email"] for edge in everyone["edges"]]
    assert {"admin@example.com", "user@example.com", "pm@example.com", *emails} <= set(listed)

    search = {"search": marker.upper()}
    first = (await gql(USERS, {"first": 2, "filter": search}, token=admin))["data"]["users"]
    assert first["totalCount"] == 3
    assert first["pageInfo"]["hasNextPage"] is True
    rest = (
        await gql(
            USERS,
            {"first": 2, "after": first["pageInfo"]["endCursor"], "filter": search},
            token=admin,
        )
    )["data"]["users"]
    assert rest["pageInfo"]["hasNextPage"] is False
    paged = [edge["node"]["email"] for edge in first["edges"] + rest["edges"]]
    assert sorted(paged) == sorted(emails)
    assert len(set(paged)) == 3

    managers = (await gql(USERS, {"filter": {"role": "PROJECT_MANAGER"}}, token=admin))["data"][
        "users"
    ]
    assert [edge["node"]["email"] for edge in managers["edges"]] == ["pm@example.com"]

    await gql(
        UPDATE_USER,
        {"id": rest["edges"][0]["node"]["id"], "input": {"isActive": False}},
        token=admin,
    )
    inactive = (await gql(USERS, {"filter": {"isActive": False, "search": marker}}, token=admin))[
        "data"
    ]["users"]
    assert [edge["node"]["email"] for edge in inactive["edges"]] == [
        rest["edges"][0]["node"]["email"]
    ]

    wildcard = (await gql(USERS, {"filter": {"search": "%"}}, token=admin))["data"]["users"]
    assert wildcard["totalCount"] == 0
    bad_cursor = await gql(USERS, {"after": "garbage"}, token=admin)
    assert error_codes(bad_cursor) == ["BAD_USER_INPUT"]
    too_many = await gql(USERS, {"first": 1000}, token=admin)
    assert error_codes(too_many) == ["BAD_USER_INPUT"]


async def test_user_node_is_visible_to_self_and_admins_only(
    gql: GraphQLClient, sign_in: Any, db: AsyncSession
) -> None:
    pm_id = await user_global_id(db, "pm@example.com")
    query = "query($id: ID!) { node(id: $id) { ... on User { email } } }"
    admin = await sign_in("admin@example.com")
    pm = await sign_in("pm@example.com")
    user = await sign_in("user@example.com")
    assert (await gql(query, {"id": pm_id}, token=admin))["data"]["node"][
        "email"
    ] == "pm@example.com"
    assert (await gql(query, {"id": pm_id}, token=pm))["data"]["node"]["email"] == "pm@example.com"
    assert (await gql(query, {"id": pm_id}, token=user))["data"]["node"] is None


async def test_users_page_costs_the_same_statements_for_2_or_20(
    gql: GraphQLClient, sign_in: Any, db: AsyncSession, engine: AsyncEngine
) -> None:
    marker = uuid.uuid4().hex[:8]
    for index in range(20):
        await create_user_account(
            db=db,
            email=f"count-{marker}-{index:02d}@example.com",
            password="a-good-password",
            roles=[RoleName.USER, RoleName.PROJECT_MANAGER][: 1 + index % 2],
            bcrypt_rounds=4,
        )
    await db.commit()
    admin = await sign_in("admin@example.com")
    query = """
    query($first: Int!, $search: String!) {
      users(first: $first, filter: {search: $search}) {
        totalCount edges { node { email roles { name permissions } permissions } }
      }
    }"""
    counts = []
    for first in (2, 20):
        with counting_statements(engine) as statements:
            body = await gql(query, {"first": first, "search": marker}, token=admin)
        assert len(body["data"]["users"]["edges"]) == first
        counts.append(len(statements))
    assert counts[0] == counts[1], counts
