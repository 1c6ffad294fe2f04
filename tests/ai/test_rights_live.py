"""Rights follow membership, with replies that run (live server, fake OpenAI): a sender demoted
below MEMBER can no longer stop their running reply, post or attach files; one who keeps
MEMBER+ goes on as before. See test_rights_follow_membership.py for the whole role matrix."""

from __future__ import annotations

import asyncio

from atlas_gql.ids import encode_global_id
from tests.ai.conftest import AIServer, signing_in_user
from tests.ai.fake_openai import Behaviour
from tests.ai.test_files import upload
from tests.conftest import error_codes

ADD = (
    "mutation($p: ID!, $u: ID!, $r: ProjectRole!) "
    "{ addProjectMember(projectId: $p, userId: $u, role: $r) { role } }"
)
UPDATE = (
    "mutation($p: ID!, $u: ID!, $r: ProjectRole!) "
    "{ updateProjectMember(projectId: $p, userId: $u, role: $r) { role } }"
)
REMOVE = "mutation($p: ID!, $u: ID!) { removeProjectMember(projectId: $p, userId: $u) }"
CANCEL = "mutation($id: ID!) { cancelMessage(id: $id) { status } }"
ATTACH = "mutation($f: ID!, $t: ID!) { attachFile(fileId: $f, targetId: $t) { id } }"


async def new_member(ai: AIServer, role: str) -> tuple[str, str]:
    """(token, global id) of a new USER the sample project's MANAGER adds with `role`."""
    runtime = ai.server.app.state.atlas["runtime"]
    async with runtime.sessionmaker() as db:
        user = await signing_in_user(db, "live")
        await db.commit()
    user_id = encode_global_id("User", user.id)
    project = ai.people.project_id
    await ai.client.data(ADD, {"p": project, "u": user_id, "r": role}, token=ai.people.manager)
    return await ai.server.sign_in(user.email), user_id


async def change_role(ai: AIServer, user_id: str, role: str | None) -> None:
    project = ai.people.project_id
    if role is None:
        await ai.client.data(REMOVE, {"p": project, "u": user_id}, token=ai.people.manager)
    else:
        change = {"p": project, "u": user_id, "r": role}
        await ai.client.data(UPDATE, change, token=ai.people.manager)


async def test_a_sender_demoted_to_viewer_cannot_stop_post_or_attach(ai: AIServer) -> None:
    creator, creator_id = await new_member(ai, "MEMBER")
    thread = await ai.new_thread(creator)
    file = (await upload(ai, b"mine", token=creator)).json()["data"]["uploadFile"]
    # The reply streams its text, then waits for the gate before it completes.
    ai.fake.gates["complete"] = asyncio.Event()
    ai.fake.then(Behaviour())
    try:
        sent = (await ai.send(thread, token=creator))["data"]["sendMessage"]
        reply, asked = sent["assistantMessage"]["id"], sent["userMessage"]["id"]

        await change_role(ai, creator_id, "VIEWER")

        assert error_codes(await ai.client.gql(CANCEL, {"id": reply}, token=creator)) == [
            "FORBIDDEN"
        ]
        assert error_codes(await ai.send(thread, token=creator)) == ["FORBIDDEN"]
        for target in (thread, asked):
            attached = await ai.client.gql(ATTACH, {"f": file["id"], "t": target}, token=creator)
            assert error_codes(attached) == ["FORBIDDEN"]
        # The project's managers still can.
        stopped = await ai.client.data(CANCEL, {"id": reply}, token=ai.people.manager)
        assert stopped["cancelMessage"]["status"] == "CANCELLED"
    finally:
        ai.fake.gates["complete"].set()
    # Only the one upstream call of the first send was made.
    assert len(ai.fake.calls("/v1/responses")) == 1

    await change_role(ai, creator_id, None)
    assert error_codes(await ai.client.gql(CANCEL, {"id": reply}, token=creator)) == ["NOT_FOUND"]
    assert error_codes(await ai.send(thread, token=creator)) == ["NOT_FOUND"]


async def test_a_sender_who_keeps_member_rights_goes_on(ai: AIServer) -> None:
    creator, creator_id = await new_member(ai, "MANAGER")
    thread = await ai.new_thread(creator)
    await change_role(ai, creator_id, "MEMBER")
    async with ai.client.subscribe(creator, thread) as subscription:
        sent = await ai.send(thread, token=creator)
        assert "errors" not in sent, sent
        events = await subscription.until_final()
    assert events[-1]["__typename"] == "MessageCompleted"
    file = (await upload(ai, b"mine", token=creator)).json()["data"]["uploadFile"]
    attached = await ai.client.data(ATTACH, {"f": file["id"], "t": thread}, token=creator)
    assert attached["attachFile"]["id"] == file["id"]
