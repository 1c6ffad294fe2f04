"""The compiled path answers exactly what the resolver path answers.

Every case runs one document for each viewer (ADMIN, the project OWNER / MANAGER / MEMBER /
VIEWER of "alpha", a user of another project, anonymous): where the resolver path answers
without errors, the compiled statement must give the same JSON, key order included; where the
resolver path answers with an error (UNAUTHENTICATED, FORBIDDEN, NOT_FOUND, BAD_USER_INPUT),
the compiled path must hand the request back (Fallback).

Size: a little over 400 lines on purpose: one table of cases, each a document read by every
viewer, kept in one place so the compiled path's coverage reads as one list."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from atlas_gql.graph.compiled import Answer, Fallback
from tests.graph.compiled.conftest import VIEWERS, Both, World

Case = Callable[[World], tuple[str, dict[str, Any] | None]]

ISSUE_QUERY = """
query Nested {
  projects(first: 20) { edges { node {
    id name
    createdBy { email }
    members(first: 10) { edges { node { role user { email name } } } }
    threads(first: 3) { edges { node { id title } } }
  } } }
}"""

PAGE_INFO = "pageInfo { hasNextPage hasPreviousPage startCursor endCursor __typename }"

PROJECTS_EVERYTHING = f"""
query {{
  projects {{
    __typename totalCount {PAGE_INFO}
    edges {{ __typename cursor node {{
      __typename id name description createdAt updatedAt viewerRole
      createdBy {{ id email name isActive createdAt }}
      settings {{ key value updatedAt __typename }}
      members(first: 5) {{ totalCount {PAGE_INFO}
        edges {{ cursor node {{ id role createdAt user {{ id email }} project {{ id name }} }} }}
        nodes {{ id }} }}
      threads {{ totalCount nodes {{ id title openaiThreadId createdAt updatedAt }} }}
    }} }}
    nodes {{ id }}
  }}
}}"""

THREAD_FIELDS = f"""
  id title openaiThreadId createdAt updatedAt __typename
  project {{ id name viewerRole settings {{ key }}
             members(first: 2) {{ totalCount nodes {{ role }} }} }}
  assistant {{ id name model instructions temperature description createdAt updatedAt
              project {{ name }} files {{ id filename }} }}
  createdBy {{ id email name }}
  files {{ id filename bytes mimeType purpose openaiFileId createdAt __typename }}
  recent: messages(last: 3) {{ totalCount {PAGE_INFO}
    edges {{ cursor node {{ id role content status openaiMessageId inputTokens outputTokens
                            error createdAt completedAt files {{ filename }} }} }} }}
  oldest: messages(first: 2) {{ {PAGE_INFO} nodes {{ content }} }}
"""


def issue_query(world: World) -> tuple[str, dict[str, Any] | None]:
    return ISSUE_QUERY, None


def projects_everything(world: World) -> tuple[str, dict[str, Any] | None]:
    return PROJECTS_EVERYTHING, None


def projects_first_page(world: World) -> tuple[str, dict[str, Any] | None]:
    query = f"""query ($n: Int) {{
      projects(first: $n) {{ totalCount {PAGE_INFO} edges {{ cursor node {{ name }} }} }}
    }}"""
    return query, {"n": 1}


def projects_empty_page(world: World) -> tuple[str, dict[str, Any] | None]:
    return (
        f"{{ projects(first: 0) {{ totalCount {PAGE_INFO} edges {{ cursor }} nodes {{ id }} }} }}",
        None,
    )


def projects_filters(world: World) -> tuple[str, dict[str, Any] | None]:
    query = """query ($role: ProjectRole, $search: String) {
      byRole: projects(filter: {role: $role}) { totalCount nodes { name viewerRole } }
      owned: projects(filter: {role: OWNER}) { nodes { name } }
      escaped: projects(filter: {search: $search}) { nodes { name } }
      blank: projects(filter: {search: "   "}) { totalCount }
      percent: projects(filter: {search: "0%"}) { nodes { name } }
    }"""
    return query, {"role": "VIEWER", "search": "A_100"}


def project_by_id(world: World) -> tuple[str, dict[str, Any] | None]:
    query = f"""query ($alpha: ID!, $beta: ID!, $gamma: ID!, $after: String) {{
      alpha: project(id: $alpha) {{ id name viewerRole
        members(first: 3, after: $after) {{
          totalCount {PAGE_INFO} edges {{ cursor node {{ role }} }} }} }}
      beta: project(id: $beta) {{ name settings {{ key value }} threads {{ nodes {{ title }} }} }}
      gamma: project(id: $gamma) {{ name }}
    }}"""
    return query, {
        "alpha": world.gid("Project", world.projects["alpha"].id),
        "beta": world.gid("Project", world.projects["beta"].id),
        "gamma": world.gid("Project", world.projects["gamma"].id),
        "after": None,
    }


NODE_FIELDS = """__typename id
  ... on User { email userName: name isActive roles { name } permissions }
  ... on Project { name viewerRole members(first: 1) { totalCount nodes { role } } }
  ... on ProjectMember { role createdAt memberUser: user { email }
                         memberProject: project { name settings { key }
                         members { totalCount } threads(first: 1) { totalCount } } }
  ... on Assistant { name instructions project { name } files { filename } }
  ... on Thread { title messages { totalCount } project { id } createdBy { email } }
  ... on Message { content messageRole: role status type: __typename }
  ... on File { filename bytes }
  ... on ActivityLog { action entityType entityId projectId ipAddress userAgent details
                       createdAt user { email } }
  ... on ErrorLog { requestId source errorType message stack operationName path
                    upstreamStatus upstreamRequestId details createdAt count lastSeenAt
                    user { email } }"""
# Aliases above where two types' fields differ in type (GraphQL forbids merging those).
NODE_QUERY = f"query ($id: ID!) {{ node(id: $id) {{ {NODE_FIELDS} }} }}"


def node_ids(world: World) -> dict[str, str]:
    return {
        "user": world.gid("User", world.users["member"].id),
        "other user": world.gid("User", world.users["outsider"].id),
        "project": world.gid("Project", world.projects["beta"].id),
        "member": world.gid("ProjectMember", world.members["alpha-viewer"].id),
        "assistant": world.gid("Assistant", world.assistants["personal"].id),
        "shared assistant": world.gid("Assistant", world.assistants["shared"].id),
        "thread": world.gid("Thread", world.threads["personal"].id),
        "message": world.gid("Message", world.messages[3].id),
        "file": world.gid("File", world.files["report"].id),
        "secret file": world.gid("File", world.files["secret"].id),
        "activity": world.gid("ActivityLog", world.activity[2].id),
        "error": world.gid("ErrorLog", world.errors[0].id),
        "missing project": world.gid("Project", world.users["member"].id),
        "unknown type": world.gid("Gadget", world.users["member"].id),
    }


def threads_list(world: World) -> tuple[str, dict[str, Any] | None]:
    query = f"""query ($project: ID) {{
      all: threads {{ totalCount {PAGE_INFO} edges {{ cursor node {{ {THREAD_FIELDS} }} }} }}
      ofAlpha: threads(first: 2, filter: {{projectId: $project}}) {{ totalCount nodes {{ title }} }}
    }}"""
    return query, {"project": world.gid("Project", world.projects["alpha"].id)}


def threads_archived_pinned(world: World) -> tuple[str, dict[str, Any] | None]:
    """Archived threads are hidden unless asked for; `pinned` narrows either way."""
    query = """query ($archived: Boolean, $pinned: Boolean, $filter: ThreadFilter) {
      default: threads { totalCount nodes { title pinned archivedAt } }
      archived: threads(filter: {archived: true}) { totalCount nodes { title archivedAt } }
      notArchived: threads(filter: {archived: false}) { nodes { title } }
      pinned: threads(filter: {pinned: true}) { nodes { title pinned } }
      unpinned: threads(filter: {pinned: false, archived: $archived}) { nodes { title } }
      byVariables: threads(filter: {archived: $archived, pinned: $pinned}) { nodes { title } }
      whole: threads(filter: $filter) { nodes { title } }
    }"""
    return query, {"archived": True, "pinned": None, "filter": {"pinned": True}}


def thread_by_id(world: World) -> tuple[str, dict[str, Any] | None]:
    query = f"query ($id: ID!) {{ thread(id: $id) {{ {THREAD_FIELDS} }} }}"
    return query, {"id": world.gid("Thread", world.threads["alpha-1"].id)}


def messages_pages(world: World) -> tuple[str, dict[str, Any] | None]:
    query = f"""query ($id: ID!, $first: Int, $last: Int) {{
      thread(id: $id) {{
        a: messages(first: $first) {{ {PAGE_INFO} edges {{ cursor node {{ content }} }} }}
        b: messages(last: $last) {{ {PAGE_INFO} edges {{ cursor node {{ content }} }} }}
        c: messages(last: 0) {{ {PAGE_INFO} totalCount }}
        d: messages(first: 100) {{ {PAGE_INFO} nodes {{ createdAt completedAt }} }}
      }}
    }}"""
    return query, {"id": world.gid("Thread", world.threads["alpha-1"].id), "first": 3, "last": 2}


def assistants_list(world: World) -> tuple[str, dict[str, Any] | None]:
    query = f"""query ($project: ID) {{
      assistants {{ totalCount {PAGE_INFO} edges {{ cursor node {{
        id name description model instructions temperature createdAt updatedAt
        project {{ id name }} files {{ id filename }} }} }} }}
      ofAlpha: assistants(filter: {{projectId: $project}}) {{ nodes {{ name }} }}
    }}"""
    return query, {"project": world.gid("Project", world.projects["alpha"].id)}


def me_and_roles(world: World) -> tuple[str, dict[str, Any] | None]:
    return (
        """{
      me { id email name isActive createdAt updatedAt permissions
           roles { __typename name description permissions } }
    }""",
        None,
    )


def roles_list(world: World) -> tuple[str, dict[str, Any] | None]:
    return "{ roles { name description permissions } }", None


def users_list(world: World) -> tuple[str, dict[str, Any] | None]:
    query = f"""query ($search: String, $active: Boolean) {{
      all: users(first: 5) {{ totalCount {PAGE_INFO} edges {{ cursor node {{ email name
        roles {{ name permissions }} permissions }} }} }}
      found: users(filter: {{search: $search}}) {{ totalCount nodes {{ email }} }}
      pms: users(filter: {{role: PROJECT_MANAGER}}) {{ nodes {{ email }} }}
      inactive: users(filter: {{isActive: $active}}) {{ nodes {{ email isActive }} }}
      escaped: users(filter: {{search: "_"}}) {{ totalCount }}
    }}"""
    return query, {"search": "compiled.EXAMPLE", "active": False}


def activity_logs(world: World) -> tuple[str, dict[str, Any] | None]:
    query = f"""query ($user: ID, $from: DateTime) {{
      activityLogs(first: 4) {{ totalCount {PAGE_INFO} edges {{ cursor node {{
        id action entityType entityId projectId ipAddress userAgent details createdAt
        user {{ email }} }} }} }}
      byUser: activityLogs(filter: {{userId: $user, action: "project.create", from: $from}}) {{
        totalCount nodes {{ action }} }}
    }}"""
    return query, {
        "user": world.gid("User", world.users["manager"].id),
        "from": "2026-03-01T13:20:00+00:00",
    }


def activity_of_project(world: World) -> tuple[str, dict[str, Any] | None]:
    query = """query ($project: ID) {
      activityLogs(filter: {projectId: $project, entityType: "Project"}) {
        totalCount nodes { action projectId } }
    }"""
    return query, {"project": world.gid("Project", world.projects["alpha"].id)}


def error_logs(world: World) -> tuple[str, dict[str, Any] | None]:
    query = f"""{{
      errorLogs {{ totalCount {PAGE_INFO} edges {{ cursor node {{ id requestId source errorType
        message stack operationName path upstreamStatus upstreamRequestId details createdAt
        count lastSeenAt user {{ email }} }} }} }}
      upstream: errorLogs(filter: {{source: UPSTREAM}}) {{ nodes {{ requestId }} }}
    }}"""
    return query, None


def fragments_aliases_directives(world: World) -> tuple[str, dict[str, Any] | None]:
    query = """
    query Shapes($with: Boolean!, $without: Boolean!) {
      __typename
      first: projects(first: 1) { ...Page }
      second: projects(first: 2) { edges { node { ...ProjectBits ... on Project { id } } } }
      me { ... on User { email } ...UserBits @include(if: $with) ...UserBits2 @skip(if: $with) }
      skipped: me @skip(if: $with) { email }
      included: me @include(if: $with) { name @skip(if: $without) email @include(if: $without) }
    }
    fragment Page on ProjectConnection { totalCount edges { cursor node { ...ProjectBits } } }
    fragment ProjectBits on Project {
      name
      members(first: 2) { edges { node { role } } }
      members(first: 2) { edges { node { user { email } } } }
      ... on Node { id }
      also: name
    }
    fragment UserBits on User { name createdAt }
    fragment UserBits2 on User { isActive }
    """
    return query, {"with": True, "without": False}


def directives_other_way(world: World) -> tuple[str, dict[str, Any] | None]:
    query, _ = fragments_aliases_directives(world)
    return query, {"with": False, "without": True}


CASES: dict[str, Case] = {
    "issue query": issue_query,
    "projects, every field": projects_everything,
    "projects, first page": projects_first_page,
    "projects, empty page": projects_empty_page,
    "projects, filters": projects_filters,
    "project by id": project_by_id,
    "threads": threads_list,
    "threads, archived and pinned": threads_archived_pinned,
    "thread by id": thread_by_id,
    "messages pages": messages_pages,
    "assistants": assistants_list,
    "me and roles": me_and_roles,
    "roles": roles_list,
    "users": users_list,
    "activity logs": activity_logs,
    "activity of a project": activity_of_project,
    "error logs": error_logs,
    "fragments, aliases, directives": fragments_aliases_directives,
    "directives the other way": directives_other_way,
}


@pytest.mark.parametrize("case", list(CASES))
async def test_both_paths_answer_the_same(both: Both, case: str) -> None:
    query, variables = CASES[case](both.world)
    answered = 0
    for viewer in VIEWERS:
        expected = await both.resolver(query, variables, viewer=viewer)
        compiled = await both.compiled(query, variables, viewer=viewer)
        if "errors" in expected:
            assert isinstance(compiled, Fallback), (viewer, expected["errors"], compiled)
            continue
        assert isinstance(compiled, Answer), (viewer, compiled)
        assert json.dumps(json.loads(compiled.data)) == json.dumps(expected["data"]), viewer
        answered += 1
    assert answered, "no viewer got an answer: the case tests nothing"


async def test_node_of_every_type(both: Both) -> None:
    """One document, one plan per type named by the id (the shape of `$id`)."""
    for name, node_id in node_ids(both.world).items():
        seen = []
        for viewer in VIEWERS:
            data = await both.same(NODE_QUERY, {"id": node_id}, viewer=viewer)
            seen.append(data["node"] is not None)
        # Each real object is hidden from someone and shown to someone.
        if name in ("missing project", "unknown type"):
            assert not any(seen), name
        else:
            assert any(seen), name
            assert not all(seen), name


async def test_cursors_walk_every_page_both_ways(both: Both) -> None:
    """Forward through alpha's members and backward through a thread's messages, two at a
    time, with each path's own cursors: the same pages, ending where the list ends."""
    world = both.world
    members = """query ($id: ID!, $after: String) {
      project(id: $id) { members(first: 2, after: $after) {
        totalCount pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
        edges { cursor node { user { email } } } } }
    }"""
    variables: dict[str, Any] = {"id": world.gid("Project", world.projects["alpha"].id)}
    pages = 0
    while True:
        data = await both.same(members, variables, viewer="viewer")
        connection = data["project"]["members"]
        pages += 1
        if not connection["pageInfo"]["hasNextPage"]:
            break
        variables["after"] = connection["pageInfo"]["endCursor"]
    assert pages == 7  # 13 members, 2 a page
    assert len(connection["edges"]) == 1

    messages = """query ($id: ID!, $before: String) {
      thread(id: $id) { messages(last: 2, before: $before) {
        pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
        edges { cursor node { content } } } }
    }"""
    variables = {"id": world.gid("Thread", world.threads["alpha-1"].id)}
    contents: list[str] = []
    while True:
        data = await both.same(messages, variables, viewer="member")
        connection = data["thread"]["messages"]
        contents[:0] = [edge["node"]["content"] for edge in connection["edges"]]
        if not connection["pageInfo"]["hasPreviousPage"]:
            break
        variables["before"] = connection["pageInfo"]["startCursor"]
    assert len(contents) == 7
    assert contents[0].startswith("Message 0")

    # Past the last item: an empty page that still says where it came from.
    after_last = """query ($id: ID!, $after: String) {
      thread(id: $id) { messages(first: 2, after: $after) {
        pageInfo { hasNextPage hasPreviousPage startCursor endCursor } edges { cursor } } }
    }"""
    last = await both.same(
        "query ($id: ID!) { thread(id: $id) { messages(last: 1) { pageInfo { endCursor } } } }",
        {"id": variables["id"]},
        viewer="member",
    )
    end = last["thread"]["messages"]["pageInfo"]["endCursor"]
    data = await both.same(after_last, {"id": variables["id"], "after": end}, viewer="member")
    assert data["thread"]["messages"] == {
        "pageInfo": {
            "hasNextPage": False, "hasPreviousPage": True, "startCursor": None, "endCursor": None
        },
        "edges": [],
    }  # fmt: skip


async def test_a_hidden_project_reached_through_a_membership_is_empty(both: Both) -> None:
    """ProjectMember.project is loaded without a check; its members, settings and threads
    check the viewer's access (the Row.checked=False branch of the compiler)."""
    world = both.world
    query = f"""query ($id: ID!) {{ node(id: $id) {{ ... on ProjectMember {{ project {{
      name members(first: 1, after: null) {{
        totalCount {PAGE_INFO} edges {{ cursor }} nodes {{ id }} }}
      settings {{ key }} threads {{ totalCount nodes {{ id }} }} }} }} }} }}"""
    member = world.gid("ProjectMember", world.members["alpha-owner"].id)
    for viewer in ("admin", "owner", "viewer"):
        data = await both.same(query, {"id": member}, viewer=viewer)
        assert data["node"]["project"]["members"]["totalCount"] == 13
    data = await both.same(query, {"id": member}, viewer="outsider")
    assert data == {"node": None}
