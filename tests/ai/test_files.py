"""Files: multipart upload to OpenAI Files, attachments, input files sent with a message."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.ai.conftest import AIServer, StartServer
from tests.conftest import error_codes

UPLOAD = """
mutation($file: Upload!, $purpose: String) {
  uploadFile(file: $file, purpose: $purpose) { id filename bytes mimeType openaiFileId }
}"""
PREFLIGHT = {"GraphQL-Preflight": "1"}


async def upload(
    ai: AIServer,
    content: bytes,
    *,
    token: str,
    filename: str = "notes.txt",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    operations = {"query": UPLOAD, "variables": {"file": None, "purpose": None}}
    async with httpx.AsyncClient(base_url=ai.server.http_url, timeout=30) as client:
        return await client.post(
            "/graphql",
            data={
                "operations": json.dumps(operations),
                "map": json.dumps({"0": ["variables.file"]}),
            },
            files={"0": (filename, content, "text/plain")},
            headers={
                "Authorization": f"Bearer {token}",
                **(PREFLIGHT if headers is None else headers),
            },
        )


async def test_upload_needs_a_preflight_header(ai: AIServer) -> None:
    response = await upload(ai, b"hello", token=ai.people.member, headers={})
    assert response.status_code == 400
    assert "Preflight" in response.json()["errors"][0]["message"]
    assert ai.fake.calls("/v1/files") == []


async def test_uploaded_file_goes_to_the_model_with_a_message(ai: AIServer) -> None:
    content = b"Quarterly numbers: 42\n" * 100
    response = await upload(ai, content, token=ai.people.member)
    assert response.status_code == 200, response.text
    file = response.json()["data"]["uploadFile"]
    assert file["filename"] == "notes.txt"
    assert file["bytes"] == len(content)
    assert file["mimeType"] == "text/plain"
    assert file["openaiFileId"].startswith("file-")
    [stored] = ai.fake.calls("/v1/files")
    assert stored.body["bytes"] == len(content)
    assert stored.body["purpose"] == "user_data"
    assert stored.headers["authorization"].endswith("sk-fake-upstream-key-for-tests")

    thread_id = await ai.new_thread()
    async with ai.client.subscribe(ai.people.member, thread_id) as subscription:
        body = await ai.send(thread_id, "Summarise the file", fileIds=[file["id"]])
        assert "errors" not in body, body
        await subscription.until_final()
    [call] = ai.fake.calls("/v1/responses")
    parts = call.body["input"][0]["content"]
    assert {"type": "input_file", "file_id": file["openaiFileId"]} in parts

    messages = await ai.client.data(
        "query($id: ID!) { thread(id: $id) { messages { edges { node { role files { id bytes } } } "
        "} } }",
        {"id": thread_id},
        token=ai.people.member,
    )
    nodes = [edge["node"] for edge in messages["thread"]["messages"]["edges"]]
    assert nodes[0]["role"] == "USER"
    assert nodes[0]["files"] == [{"id": file["id"], "bytes": len(content)}]


async def test_someone_elses_file_cannot_be_sent(ai: AIServer) -> None:
    response = await upload(ai, b"private", token=ai.people.manager)
    file_id = response.json()["data"]["uploadFile"]["id"]
    thread_id = await ai.new_thread()
    body = await ai.send(thread_id, "use it", fileIds=[file_id])
    assert error_codes(body) == ["NOT_FOUND"]
    assert ai.fake.calls("/v1/responses") == []


async def test_attach_detach_and_delete(ai: AIServer) -> None:
    file = (await upload(ai, b"attach me", token=ai.people.member)).json()["data"]["uploadFile"]
    thread_id = await ai.new_thread()
    attach = "mutation($f: ID!, $t: ID!) { attachFile(fileId: $f, targetId: $t) { id } }"
    detach = "mutation($f: ID!, $t: ID!) { detachFile(fileId: $f, targetId: $t) { id } }"
    thread_files = "query($id: ID!) { thread(id: $id) { files { id filename } } }"

    data = await ai.client.data(attach, {"f": file["id"], "t": thread_id}, token=ai.people.member)
    assert data["attachFile"]["id"] == file["id"]
    # Attaching twice keeps one attachment.
    await ai.client.data(attach, {"f": file["id"], "t": thread_id}, token=ai.people.member)
    listed = await ai.client.data(thread_files, {"id": thread_id}, token=ai.people.viewer)
    assert listed["thread"]["files"] == [{"id": file["id"], "filename": "notes.txt"}]
    # Other members can see the attached file, outsiders cannot.
    node = "query($id: ID!) { node(id: $id) { id } }"
    seen = await ai.client.data(node, {"id": file["id"]}, token=ai.people.viewer)
    assert seen["node"] == {"id": file["id"]}
    hidden = await ai.client.data(node, {"id": file["id"]}, token=ai.people.outsider)
    assert hidden["node"] is None
    body = await ai.client.gql(attach, {"f": file["id"], "t": thread_id}, token=ai.people.outsider)
    assert error_codes(body) == ["NOT_FOUND"]
    body = await ai.client.gql(attach, {"f": file["id"], "t": file["id"]}, token=ai.people.member)
    assert error_codes(body) == ["BAD_USER_INPUT"]

    # The file answers, whether it was attached there or not (idempotent).
    for _ in range(2):
        detached = await ai.client.data(
            detach, {"f": file["id"], "t": thread_id}, token=ai.people.member
        )
        assert detached["detachFile"] == {"id": file["id"]}
    listed = await ai.client.data(thread_files, {"id": thread_id}, token=ai.people.member)
    assert listed["thread"]["files"] == []

    delete = "mutation($id: ID!) { deleteFile(id: $id) }"
    assert error_codes(await ai.client.gql(delete, {"id": file["id"]}, token=ai.people.viewer)) == [
        "NOT_FOUND"
    ]
    deleted_id = await ai.client.data(delete, {"id": file["id"]}, token=ai.people.member)
    assert deleted_id == {"deleteFile": file["id"]}
    [deleted] = ai.fake.calls(f"/v1/files/{file['openaiFileId']}")
    assert deleted.method == "DELETE"


async def test_upload_size_limit(start_ai_server: StartServer) -> None:
    ai = await start_ai_server(atlas_max_upload_bytes=1000)
    response = await upload(ai, b"x" * 1001, token=ai.people.member)
    body: dict[str, Any] = response.json()
    assert error_codes(body) == ["BAD_USER_INPUT"]
    assert body["errors"][0]["extensions"]["field"] == "file"
    assert ai.fake.calls("/v1/files") == []
    ok = await upload(ai, b"x" * 1000, token=ai.people.member)
    assert ok.json()["data"]["uploadFile"]["bytes"] == 1000


async def test_unstorable_text_in_an_upload_is_refused_before_anything_is_sent(
    ai: AIServer,
) -> None:
    """The multipart headers (file name, written raw: httpx would escape it) and the
    operations' variables of an upload."""
    operations = json.dumps({"query": UPLOAD, "variables": {"file": None, "purpose": None}})
    for filename in (b"bad\x00name.txt", b"x\x00"):
        boundary = b"atlas-boundary"
        parts = [
            (b'name="operations"', operations.encode()),
            (b'name="map"', b'{"0": ["variables.file"]}'),
            (b'name="0"; filename="' + filename + b'"\r\nContent-Type: text/plain', b"hello"),
        ]
        raw = (
            b"".join(
                b"--"
                + boundary
                + b"\r\nContent-Disposition: form-data; "
                + head
                + b"\r\n\r\n"
                + content
                + b"\r\n"
                for head, content in parts
            )
            + b"--"
            + boundary
            + b"--\r\n"
        )
        async with httpx.AsyncClient(base_url=ai.server.http_url, timeout=30) as client:
            response = await client.post(
                "/graphql",
                content=raw,
                headers={
                    "Content-Type": "multipart/form-data; boundary=atlas-boundary",
                    "Authorization": f"Bearer {ai.people.member}",
                    **PREFLIGHT,
                },
            )
        body: dict[str, Any] = response.json()
        assert error_codes(body) == ["BAD_USER_INPUT"], body
        assert body["errors"][0]["extensions"]["field"] == "file"
    tainted = {"query": UPLOAD, "variables": {"file": None, "purpose": "user\x00data"}}
    async with httpx.AsyncClient(base_url=ai.server.http_url, timeout=30) as client:
        response = await client.post(
            "/graphql",
            data={
                "operations": json.dumps(tainted),
                "map": json.dumps({"0": ["variables.file"]}),
            },
            files={"0": ("notes.txt", b"hello", "text/plain")},
            headers={"Authorization": f"Bearer {ai.people.member}", **PREFLIGHT},
        )
    body = response.json()
    assert error_codes(body) == ["BAD_USER_INPUT"], body
    assert body["errors"][0]["extensions"]["field"] == "$purpose"
    assert ai.fake.calls("/v1/files") == []
