"""Issue 15 part 6: exportThread (JSON, MARKDOWN), exportProject, importThreads (ATLAS,
ChatGPT's conversations.json with branches): round trips, malformed files, who may, one
transaction per thread, and a reply in an imported thread (its conversation made then)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import sqlalchemy as sa
from sqlmodel import col

from atlas_gql.ai.models import Message, MessageRole, Thread
from atlas_gql.ai.transfer_formats import markdown_sources
from tests.ai.conftest import AIServer, StartServer
from tests.ai.test_branches import BRANCH, contents, exchange
from tests.ai.test_files import PREFLIGHT, UPLOAD, upload
from tests.ai.test_replies import rows, uuid_of
from tests.conftest import error_codes

IMPORT = """
mutation($input: ImportThreadsInput!) {
  importThreads(input: $input) {
    importedCount failedCount
    results { index title messages error thread { id title openaiThreadId createdAt } }
  }
}"""
EXPORT_THREAD = (
    "query($id: ID!, $format: ThreadExportFormat!) { exportThread(id: $id, format: $format) }"
)
EXPORT_PROJECT = "query($id: ID!) { exportProject(id: $id) }"
T0 = 1_700_000_000.0


def node(
    node_id: str, parent: str | None, role: str | None, text: str | None, at: float | None,
    children: list[str], **metadata: Any,
) -> dict[str, Any]:  # fmt: skip
    message: dict[str, Any] | None = None
    if role is not None:
        message = {
            "id": node_id,
            "author": {"role": role, "name": None, "metadata": {}},
            "create_time": at,
            "content": {"content_type": "text", "parts": [text]},
            "status": "finished_successfully",
            "metadata": metadata,
        }
    return {"id": node_id, "message": message, "parent": parent, "children": children}


def chatgpt_export() -> list[dict[str, Any]]:
    """Two conversations as ChatGPT exports them: the first with a regenerated answer (a1b)
    and an edited question (u1b), its current node on the first branch."""
    mapping = {
        "root": node("root", None, None, None, None, ["sys"]),
        "sys": node("sys", "root", "system", "", None, ["u1", "u1b"],
                    is_visually_hidden_from_conversation=True),
        "u1": node("u1", "sys", "user", "What is ATLAS?", T0 + 1, ["a1", "a1b"]),
        "a1": node("a1", "u1", "assistant", "A GraphQL server.", T0 + 2, ["tool"],
                   model_slug="gpt-4o"),
        "tool": node("tool", "a1", "tool", "search results", T0 + 2.5, ["u2"]),
        "a1b": node("a1b", "u1", "assistant", "An AI workspace.", T0 + 3, []),
        "u2": node("u2", "tool", "user", "Tell me more", T0 + 4, ["a2"]),
        "a2": node("a2", "u2", "assistant", "It streams replies.", T0 + 5, []),
        "u1b": node("u1b", "sys", "user", "What is ATLAS, briefly?", T0 + 6, ["a3"]),
        "a3": node("a3", "u1b", "assistant", "A server.", T0 + 7, []),
    }  # fmt: skip
    simple = {
        "r": node("r", None, None, None, None, ["q"]),
        "q": node("q", "r", "user", "Hello", T0 + 100, ["a"]),
        "a": node("a", "q", "assistant", "Hi!", T0 + 101, []),
    }
    return [
        {"title": "About ATLAS", "create_time": T0, "update_time": T0 + 7,
         "mapping": mapping, "current_node": "a2", "id": "conv-1"},
        {"title": "Greeting", "create_time": T0 + 99, "mapping": simple, "current_node": "a"},
    ]  # fmt: skip


async def import_file(
    ai: AIServer, content: bytes, *, format: str, token: str | None = None, **input: Any
) -> dict[str, Any]:
    variables = {"input": {"file": None, "format": format, **input}}
    async with httpx.AsyncClient(base_url=ai.server.http_url, timeout=60) as client:
        response = await client.post(
            "/graphql",
            data={
                "operations": json.dumps({"query": IMPORT, "variables": variables}),
                "map": json.dumps({"0": ["variables.input.file"]}),
            },
            files={"0": ("conversations.json", content, "application/json")},
            headers={"Authorization": f"Bearer {token or ai.people.member}", **PREFLIGHT},
        )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def shape(document: str) -> list[dict[str, Any]]:
    """An export without its ids: each thread's title, active leaf and messages, with
    parents as positions; what a round trip must keep."""
    threads = []
    for thread in json.loads(document)["threads"]:
        position = {message["id"]: index for index, message in enumerate(thread["messages"])}
        threads.append(
            {
                "title": thread["title"],
                "createdAt": thread["createdAt"],
                "activeLeaf": position.get(thread["activeLeafId"]),
                "messages": [
                    {
                        **{k: v for k, v in message.items() if k not in ("id", "parentId")},
                        "parent": position.get(message["parentId"]),
                    }
                    for message in thread["messages"]
                ],
            }
        )
    return threads


async def export(ai: AIServer, thread_id: str, format: str = "JSON") -> str:
    data = await ai.client.data(
        EXPORT_THREAD, {"id": thread_id, "format": format}, token=ai.people.member
    )
    text: str = data["exportThread"]
    return text


async def test_chatgpt_branches_import_as_a_tree_and_round_trip(ai: AIServer) -> None:
    body = await import_file(
        ai, json.dumps(chatgpt_export()).encode(), format="CHATGPT",
        projectId=ai.people.project_id, assistantId=ai.people.assistant_id,
    )  # fmt: skip
    assert "errors" not in body, body
    payload = body["data"]["importThreads"]
    assert (payload["importedCount"], payload["failedCount"]) == (2, 0)
    first = payload["results"][0]
    assert (first["title"], first["messages"], first["error"]) == ("About ATLAS", 7, None)
    thread = first["thread"]
    assert thread["openaiThreadId"] is None
    assert thread["createdAt"] == "2023-11-14T22:13:20+00:00"

    # The branch shown is ChatGPT's current node's; the others are one arrow away.
    shown = await ai.client.data(BRANCH, {"id": thread["id"]}, token=ai.people.member)
    branch = shown["thread"]
    assert contents(branch) == [
        "What is ATLAS?", "A GraphQL server.", "Tell me more", "It streams replies.",
    ]  # fmt: skip
    nodes = [edge["node"] for edge in branch["messages"]["edges"]]
    assert [node["role"] for node in nodes] == ["USER", "ASSISTANT", "USER", "ASSISTANT"]
    assert nodes[0]["parent"] is None
    assert len(nodes[0]["siblings"]) == 2  # the edited question
    assert len(nodes[1]["siblings"]) == 2  # the regenerated answer
    assert nodes[2]["parent"]["id"] == nodes[1]["id"]  # the tool message left out

    exported = await export(ai, thread["id"])
    document = json.loads(exported)
    assert (document["format"], document["version"]) == ("atlas.threads", 1)
    [tree] = shape(exported)
    assert [m["content"] for m in tree["messages"]] == [
        "What is ATLAS?", "A GraphQL server.", "An AI workspace.", "Tell me more",
        "It streams replies.", "What is ATLAS, briefly?", "A server.",
    ]  # fmt: skip
    assert [m["parent"] for m in tree["messages"]] == [None, 0, 0, 1, 3, None, 5]
    assert tree["messages"][0]["createdAt"] == "2023-11-14T22:13:21+00:00"
    assert tree["messages"][1]["model"] == "gpt-4o"
    assert tree["activeLeaf"] == 4

    # ATLAS's own format back in: the same tree, exported again to the same document.
    again = await import_file(
        ai, exported.encode(), format="ATLAS", projectId=ai.people.project_id,
        assistantId=ai.people.assistant_id,
    )  # fmt: skip
    assert "errors" not in again, again
    copy = again["data"]["importThreads"]["results"][0]["thread"]
    assert copy["id"] != thread["id"]
    assert shape(await export(ai, copy["id"])) == [tree]

    # Someone replies: the conversation is made then, seeded with the branch shown.
    await exchange(ai, copy["id"], "And now?")
    [conversation] = ai.fake.calls("/v1/conversations")
    assert [item["content"] for item in conversation.body["items"]] == contents(branch)
    assert ai.fake.model_inputs[-1][-1] == ("user", "And now?")
    assert len(ai.fake.model_inputs[-1]) == 5


async def test_markdown_is_the_branch_shown_and_project_export_holds_all(ai: AIServer) -> None:
    thread_id = await ai.new_thread(title="Notes")
    await exchange(ai, thread_id, "First")
    markdown = await export(ai, thread_id, "MARKDOWN")
    assert markdown.startswith("# Notes\n")
    assert "## User · " in markdown
    assert "## Assistant (gpt-4o-mini) · " in markdown
    assert "First" in markdown
    assert "Hello, this is ATLAS." in markdown

    document = await ai.client.data(
        EXPORT_PROJECT, {"id": ai.people.project_id}, token=ai.people.manager
    )
    threads = json.loads(document["exportProject"])["threads"]
    assert thread_id in [thread["id"] for thread in threads]
    # The seeded sample thread too: every thread of the project.
    assert len(threads) >= 2


async def test_malformed_files_are_refused_naming_the_problem(ai: AIServer) -> None:
    before = len(await rows(ai, sa.select(Thread)))
    target = {"projectId": ai.people.project_id, "assistantId": ai.people.assistant_id}
    conversations = chatgpt_export()
    conversations[1]["mapping"]["a"]["parent"] = "nowhere"
    bad_role = {"format": "atlas.threads", "version": 1, "threads": [
        {"title": "x", "messages": [{"id": "m1", "role": "ROBOT", "content": "hi",
                                     "createdAt": "2024-01-01T00:00:00Z"}]}]}  # fmt: skip
    cycle = {"format": "atlas.threads", "version": 1, "threads": [
        {"title": "x", "messages": [
            {"id": "a", "parentId": "b", "role": "USER", "content": "1", "createdAt": 1},
            {"id": "b", "parentId": "a", "role": "USER", "content": "2", "createdAt": 2},
        ]}]}  # fmt: skip
    cases = [
        (b"{not json", "CHATGPT", "not JSON"),
        (b"\xff\xfe", "ATLAS", "not UTF-8"),
        (json.dumps({"format": "atlas.threads", "version": 9}).encode(), "ATLAS", "version"),
        (json.dumps(chatgpt_export()).encode(), "ATLAS", "format"),
        (json.dumps(conversations).encode(), "CHATGPT", "conversations[1].mapping['a'].parent"),
        (json.dumps(bad_role).encode(), "ATLAS", "threads[0].messages[0].role"),
        (json.dumps(cycle).encode(), "ATLAS", "cycle"),
        (json.dumps([]).encode(), "CHATGPT", "no thread"),
    ]
    for content, format, named in cases:
        body = await import_file(ai, content, format=format, **target)
        assert error_codes(body) == ["BAD_USER_INPUT"], (named, body)
        assert named in body["errors"][0]["message"], (named, body)
    assert len(await rows(ai, sa.select(Thread))) == before


async def test_a_file_that_is_not_a_file_part_is_refused(ai: AIServer) -> None:
    """Over JSON (no multipart request) a client can put any value where the file goes: each
    is BAD_USER_INPUT naming `file`, for importThreads as for uploadFile."""
    not_files: list[Any] = ["", "conversations.json", 0, 1.5, True, {}, {"filename": "x"}, []]
    for value in not_files:
        imported = await ai.client.gql(
            IMPORT, {"input": {"file": value, "format": "CHATGPT"}}, token=ai.people.member
        )
        uploaded = await ai.client.gql(
            UPLOAD, {"file": value, "purpose": None}, token=ai.people.member
        )
        for body in (imported, uploaded):
            assert error_codes(body) == ["BAD_USER_INPUT"], (value, body)
            assert "file part" in body["errors"][0]["message"], (value, body)


async def test_a_file_over_the_upload_limit_is_refused(start_ai_server: StartServer) -> None:
    ai = await start_ai_server(atlas_max_upload_bytes=1024)
    body = await import_file(
        ai, json.dumps(chatgpt_export()).encode(), format="CHATGPT",
        projectId=ai.people.project_id, assistantId=ai.people.assistant_id,
    )  # fmt: skip
    assert error_codes(body) == ["BAD_USER_INPUT"]
    assert "larger than 1024 bytes" in body["errors"][0]["message"]


async def test_each_thread_is_its_own_transaction(ai: AIServer) -> None:
    document = {"format": "atlas.threads", "version": 1, "threads": [
        {"title": "Kept", "messages": [
            {"id": "a", "role": "USER", "content": "Stays", "createdAt": "2024-01-01T00:00:00Z"}]},
        {"title": "   ", "messages": [
            {"id": "b", "role": "USER", "content": "Refused", "createdAt": 2}]},
    ]}  # fmt: skip
    body = await import_file(
        ai, json.dumps(document).encode(), format="ATLAS", projectId=ai.people.project_id,
        assistantId=ai.people.assistant_id,
    )  # fmt: skip
    assert "errors" not in body, body
    payload = body["data"]["importThreads"]
    assert (payload["importedCount"], payload["failedCount"]) == (1, 1)
    kept, refused = payload["results"]
    assert kept["thread"]["title"] == "Kept"
    assert refused["thread"] is None
    assert "title" in refused["error"]
    # Nothing of the refused thread was stored.
    stored = await rows(ai, sa.select(col(Thread.title)).where(col(Thread.title) == "   "))
    assert stored == []


async def test_who_may_import_and_export(ai: AIServer) -> None:
    people = ai.people
    thread_id = await ai.new_thread()
    content = json.dumps(chatgpt_export()).encode()
    target = {"projectId": people.project_id, "assistantId": people.assistant_id}
    outsider = await import_file(ai, content, format="CHATGPT", token=people.outsider, **target)
    assert error_codes(outsider) == ["NOT_FOUND"]
    viewer = await import_file(ai, content, format="CHATGPT", token=people.viewer, **target)
    assert error_codes(viewer) == ["FORBIDDEN"]
    no_assistant = await import_file(ai, content, format="CHATGPT", projectId=people.project_id)
    assert error_codes(no_assistant) == ["BAD_USER_INPUT"]
    assert "assistantId" in no_assistant["errors"][0]["message"]

    hidden = await ai.client.gql(
        EXPORT_THREAD, {"id": thread_id, "format": "JSON"}, token=people.outsider
    )
    assert hidden["data"] == {"exportThread": None}
    assert error_codes(hidden) == ["NOT_FOUND"]
    for token, code in ((people.member, "FORBIDDEN"), (people.outsider, "NOT_FOUND")):
        body = await ai.client.gql(EXPORT_PROJECT, {"id": people.project_id}, token=token)
        assert error_codes(body) == [code]
    admin = await ai.client.data(EXPORT_PROJECT, {"id": people.project_id}, token=people.admin)
    assert json.loads(admin["exportProject"])["threads"]


CITED = """query($id: ID!) { thread(id: $id) { messages { nodes {
  role citations { kind file { id } url title quote startIndex endIndex } } } } }"""


async def _cited(ai: AIServer, thread_id: str, token: str) -> list[dict[str, Any]]:
    data = await ai.client.data(CITED, {"id": thread_id}, token=token)
    nodes = data["thread"]["messages"]["nodes"]
    [citations] = [node["citations"] for node in nodes if node["role"] == "ASSISTANT"]
    return list(citations)


def _exported_reply(document: str) -> dict[str, Any]:
    """The one reply of an exported thread."""
    messages = json.loads(document)["threads"][0]["messages"]
    [reply] = [message for message in messages if message["role"] == "ASSISTANT"]
    return dict(reply)


async def _stored_reply(ai: AIServer, thread_id: str) -> Message:
    [stored] = await rows(
        ai,
        sa.select(Message).where(
            col(Message.thread_id) == uuid_of(thread_id),
            col(Message.role) == MessageRole.ASSISTANT,
        ),
    )
    assert isinstance(stored, Message)
    return stored


async def test_citations_are_exported_and_imported(ai: AIServer) -> None:
    """A reply's citations travel in the ATLAS format: a cited file by its global id, linked
    again on import for an importer who may see it; for one who may not, the citation keeps
    its title, quote and place but names no file."""
    people = ai.people
    thread_id = await ai.new_thread(title="Cited")
    reply_id = (await exchange(ai, thread_id, "What do my notes say?"))["assistantMessage"]["id"]
    uploaded = await upload(ai, b"falcons fly fast", token=people.member, filename="f.txt")
    file = uploaded.json()["data"]["uploadFile"]
    file_citation = {
        "kind": "FILE", "fileId": str(uuid_of(file["id"])), "openaiFileId": file["openaiFileId"],
        "url": None, "title": "f.txt", "quote": "falcons fly fast", "startIndex": 5,
        "endIndex": 5,
    }  # fmt: skip
    url_citation = {
        "kind": "URL", "fileId": None, "openaiFileId": None, "url": "https://example.com/a",
        "title": "A page", "quote": "Hello", "startIndex": 0, "endIndex": 5,
    }  # fmt: skip
    async with ai.server.app.state.atlas["runtime"].sessionmaker() as db:
        await db.execute(
            sa.update(Message)
            .where(col(Message.id) == uuid_of(reply_id))
            .values(citations=[file_citation, url_citation])
        )
        await db.commit()

    document = await export(ai, thread_id)
    reply = _exported_reply(document)
    as_exported = [
        {"kind": "FILE", "fileId": file["id"], "url": None, "title": "f.txt",
         "quote": "falcons fly fast", "startIndex": 5, "endIndex": 5},
        {"kind": "URL", "fileId": None, "url": "https://example.com/a", "title": "A page",
         "quote": "Hello", "startIndex": 0, "endIndex": 5},
    ]  # fmt: skip
    assert reply["citations"] == as_exported  # no upstream file id in the document
    # The Markdown export lists them under the reply, without the upstream file id either.
    markdown = await export(ai, thread_id, "MARKDOWN")
    assert markdown.endswith(
        "Hello, this is ATLAS.\n\nSources:\n\n1. f.txt — “falcons fly fast”\n"
        "2. [A page](<https://example.com/a>) — “Hello”\n"
    )
    assert file["openaiFileId"] not in markdown
    as_read: list[dict[str, Any]] = [
        {"kind": "FILE", "file": {"id": file["id"]}, "url": None, "title": "f.txt",
         "quote": "falcons fly fast", "startIndex": 5, "endIndex": 5},
        {"kind": "URL", "file": None, "url": "https://example.com/a", "title": "A page",
         "quote": "Hello", "startIndex": 0, "endIndex": 5},
    ]  # fmt: skip
    assert await _cited(ai, thread_id, people.member) == as_read

    # The uploader imports it: the file is linked again (its upstream id with it).
    target = {"projectId": people.project_id, "assistantId": people.assistant_id}
    body = await import_file(ai, document.encode(), format="ATLAS", **target)
    mine = body["data"]["importThreads"]["results"][0]["thread"]["id"]
    assert await _cited(ai, mine, people.member) == as_read
    stored = await _stored_reply(ai, mine)
    assert stored.citations[0]["openaiFileId"] == file["openaiFileId"]
    # A round trip gives the same document (but for the ids).
    assert shape(await export(ai, mine)) == shape(document)

    # A manager of the project cannot see the member's file: it is not named in their
    # export, and their import of the member's document links no file (title-only).
    managed = await ai.client.data(
        EXPORT_THREAD, {"id": thread_id, "format": "JSON"}, token=people.manager
    )
    assert _exported_reply(managed["exportThread"])["citations"][0]["fileId"] is None
    body = await import_file(ai, document.encode(), format="ATLAS", token=people.manager, **target)
    theirs = body["data"]["importThreads"]["results"][0]["thread"]["id"]
    title_only = [{**as_read[0], "file": None}, as_read[1]]
    assert await _cited(ai, theirs, people.manager) == title_only
    # Not even the uploader, reading the manager's thread, sees the file linked there.
    assert await _cited(ai, theirs, people.member) == title_only
    stored = await _stored_reply(ai, theirs)
    assert (stored.citations[0]["fileId"], stored.citations[0]["openaiFileId"]) == (None, None)

    # Malformed citations are refused, naming where.
    parsed = json.loads(document)
    for bad, named in (
        ("many", "threads[0].messages[1].citations: must be a list"),
        ([{"kind": "PDF"}], "threads[0].messages[1].citations[0].kind"),
        ([{"kind": "URL", "startIndex": -1}], "threads[0].messages[1].citations[0].startIndex"),
        ([{"kind": "FILE", "fileId": 7}], "threads[0].messages[1].citations[0].fileId"),
    ):
        parsed["threads"][0]["messages"][1]["citations"] = bad
        body = await import_file(ai, json.dumps(parsed).encode(), format="ATLAS", **target)
        assert error_codes(body) == ["BAD_USER_INPUT"], body
        assert named in body["errors"][0]["message"], body


def test_markdown_sources_escape_what_markdown_would_read_and_list_each_once() -> None:
    odd_page = {
        "kind": "URL", "url": "https://example.com/a b<c>", "title": "*Bold* [x]_y_\n`z`",
        "quote": "  two\n lines ",
    }  # fmt: skip
    untitled_page = {"kind": "URL", "url": "https://example.com/[1]", "title": None}
    untitled_file = {"kind": "FILE", "fileId": None, "title": None, "quote": None}
    assert markdown_sources([odd_page, untitled_page, odd_page, untitled_file]) == [
        r"1. [\*Bold\* \[x\]\_y\_ \`z\`](<https://example.com/a%20b%3Cc%3E>) — “two lines”",
        r"2. [https://example.com/\[1\]](<https://example.com/[1]>)",
        "3. A file",
    ]
    # Nothing stored (or not a list): no list.
    assert markdown_sources(None) == []
    assert markdown_sources({"kind": "URL"}) == []


async def test_chatgpt_web_citations_are_imported_and_odd_ones_left_out(ai: AIServer) -> None:
    text = "Falcons dive fast【3†source】. Owls fly at night."
    marker = text.index("【")
    cited = {
        "start_ix": marker, "end_ix": marker + 10, "citation_format_type": "tether_og",
        "metadata": {"type": "webpage", "title": "Falcons", "url": "https://birds.example/f",
                     "text": "The falcon dives at 300 km/h.", "extra": None},
    }  # fmt: skip
    odd = [
        {"start_ix": 0, "end_ix": 999, "metadata": {"url": "https://birds.example/far"}},
        {"start_ix": 1, "end_ix": 2, "metadata": {"title": "No address"}},
        "not an object",
        {"metadata": None},
    ]
    referenced = {
        "matched_text": "", "start_idx": 5, "end_idx": 6, "type": "grouped_webpages",
        "items": [{"title": "Owls", "url": "https://birds.example/o", "snippet": "Owls hunt."},
                  {"title": "Nothing to link"}],
    }  # fmt: skip
    mapping = {
        "r": node("r", None, None, None, None, ["q1"]),
        "q1": node("q1", "r", "user", "Birds?", T0 + 1, ["a1"]),
        "a1": node("a1", "q1", "assistant", text, T0 + 2, ["q2"], citations=[cited, *odd]),
        "q2": node("q2", "a1", "user", "Owls?", T0 + 3, ["a2"]),
        "a2": node("a2", "q2", "assistant", text, T0 + 4, ["q3"],
                   citations="not a list", content_references=[referenced, 7]),
        "q3": node("q3", "a2", "user", "And?", T0 + 5, ["a3"]),
        "a3": node("a3", "q3", "assistant", "Nothing cited.", T0 + 6, [],
                   content_references=[{"type": "sources_footnote", "sources": []}]),
    }  # fmt: skip
    conversation = {"title": "Birds", "create_time": T0, "mapping": mapping, "current_node": "a3"}
    body = await import_file(
        ai, json.dumps([conversation]).encode(), format="CHATGPT",
        projectId=ai.people.project_id, assistantId=ai.people.assistant_id,
    )  # fmt: skip
    assert "errors" not in body, body
    [result] = body["data"]["importThreads"]["results"]
    assert (result["messages"], result["error"]) == (6, None)
    data = await ai.client.data(CITED, {"id": result["thread"]["id"]}, token=ai.people.member)
    replies = [
        node["citations"]
        for node in data["thread"]["messages"]["nodes"]
        if node["role"] == "ASSISTANT"
    ]
    assert replies == [
        [
            {"kind": "URL", "file": None, "url": "https://birds.example/f", "title": "Falcons",
             "quote": "The falcon dives at 300 km/h.", "startIndex": marker,
             "endIndex": marker + 10},
            # Its place lies outside the text: kept without one.
            {"kind": "URL", "file": None, "url": "https://birds.example/far", "title": None,
             "quote": None, "startIndex": None, "endIndex": None},
        ],
        [{"kind": "URL", "file": None, "url": "https://birds.example/o", "title": "Owls",
          "quote": "Owls hunt.", "startIndex": 5, "endIndex": 6}],
        [],
    ]  # fmt: skip
