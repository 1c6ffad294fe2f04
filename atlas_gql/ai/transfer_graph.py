"""Import and export's part of the graph (issue 15 part 6, docs/import-export.md):
`exportThread`, `exportProject`, `importThreads`. Thin resolvers over `ai.transfer`."""

from __future__ import annotations

from typing import Annotated, cast

import strawberry
from strawberry.file_uploads import Upload

from atlas_gql.ai import transfer
from atlas_gql.ai.files import UploadLike
from atlas_gql.ai.types import ThreadType
from atlas_gql.auth.models import PermissionName
from atlas_gql.auth.permissions import permitted_mutation, signed_in_field
from atlas_gql.graph.context import Info
from atlas_gql.graph.enums import described_enum
from atlas_gql.graph.inputs import ProjectID, ThreadID, optional_id
from atlas_gql.ids import decode_id_of

# The domain's enums, described for the schema (fields are annotated with the enums
# themselves, as ai/types.py does).
ThreadExportFormat = described_enum(
    transfer.ExportFormat,
    name="ThreadExportFormat",
    description="The document `exportThread` writes.",
    values={
        "JSON": "The ATLAS JSON format (`atlas.threads`, version 1): the whole tree of "
        "messages, every branch, with ids, parents, roles, statuses and timestamps.",
        "MARKDOWN": "The branch shown (root to `activeLeaf`) as Markdown, for reading.",
    },
)
ThreadImportFormat = described_enum(
    transfer.ImportFormat,
    name="ThreadImportFormat",
    description="The kind of file `importThreads` reads.",
    values={
        "ATLAS": "An ATLAS export (`exportThread(format: JSON)` or `exportProject`).",
        "CHATGPT": "ChatGPT's `conversations.json` (from its data export): each "
        "conversation's `mapping` tree becomes a thread's branches.",
    },
)


@strawberry.input(description="A file of threads to import.")
class ImportThreadsInput:
    file: Upload = strawberry.field(
        description="The file part of a GraphQL multipart request (as `uploadFile`); at most "
        "ATLAS_MAX_UPLOAD_BYTES (default 20 MiB), 500 threads, 5000 messages a thread."
    )
    format: transfer.ImportFormat = strawberry.field(description="What the file is.")
    project_id: strawberry.ID | None = strawberry.field(
        default=None,
        description="The project to import into (MEMBER+); personal threads when null.",
    )
    assistant_id: strawberry.ID | None = strawberry.field(
        default=None,
        description="The assistant of the imported threads (one the viewer sees, of that "
        "project or personal); when null, the project's `defaultAssistantId` setting.",
    )


ImportThreads = Annotated[
    ImportThreadsInput, strawberry.argument(description="The file and where it goes.")
]


@strawberry.type(description="What became of one thread of an imported file.")
class ThreadImportResult:
    index: int = strawberry.field(description="Its place in the file (from 0).")
    title: str | None = strawberry.field(description="Its title in the file.")
    messages: int = strawberry.field(description="How many messages it has in the file.")
    thread: ThreadType | None = strawberry.field(
        description="The thread created; null when it could not be stored (see `error`)."
    )
    error: str | None = strawberry.field(
        description="Why it was not stored (nothing of it was); null when it was."
    )


@strawberry.type(description="What importThreads stored: each thread in its own transaction.")
class ImportThreadsPayload:
    results: list[ThreadImportResult] = strawberry.field(
        description="One entry per thread of the file, in file order."
    )
    imported_count: int = strawberry.field(description="How many threads were stored.")
    failed_count: int = strawberry.field(description="How many could not be stored.")


@strawberry.type
class Query:
    @signed_in_field(
        description="A thread as a document (text): JSON, its whole tree in the versioned ATLAS "
        "format, or MARKDOWN, the branch shown. Null (with NOT_FOUND) when the viewer may not "
        "see it."
    )
    async def export_thread(
        self,
        info: Info,
        id: ThreadID,
        format: Annotated[
            transfer.ExportFormat, strawberry.argument(description="The document to write.")
        ] = transfer.ExportFormat.JSON,
    ) -> str | None:
        return await transfer.export_thread(
            **await info.context.ai_reading(), thread_id=decode_id_of(id, "Thread"), format=format
        )

    @signed_in_field(
        description="Every thread of a project (all branches) in the ATLAS JSON format: for "
        "the project's MANAGER+ and ADMIN (FORBIDDEN below MANAGER, NOT_FOUND outside it). "
        "At most 50000 messages in one document (BAD_USER_INPUT beyond)."
    )
    async def export_project(self, info: Info, id: ProjectID) -> str | None:
        return await transfer.export_project(
            **await info.context.ai_reading(), project_id=decode_id_of(id, "Project")
        )


@strawberry.type
class Mutation:
    @permitted_mutation(
        PermissionName.USE_AI,
        description="Import threads from an ATLAS export or ChatGPT's `conversations.json` "
        "(GraphQL multipart request). The file is checked whole first: a malformed one is "
        "BAD_USER_INPUT naming the problem, and nothing is stored. Then each thread is stored "
        "in its own transaction with its messages' text, roles, order, branches and "
        "timestamps; `results` says which were. An imported thread gets an OpenAI "
        "conversation when someone first replies in it.",
    )
    async def import_threads(self, info: Info, input: ImportThreads) -> ImportThreadsPayload | None:
        results = await transfer.import_threads(
            ai=info.context.services.ai,
            actor=await info.context.actor(),
            data=transfer.ThreadImport(
                upload=cast("UploadLike", input.file),
                format=input.format,
                project_id=optional_id(input.project_id, "Project", field="projectId"),
                assistant_id=optional_id(input.assistant_id, "Assistant", field="assistantId"),
            ),
        )
        return ImportThreadsPayload(
            results=[
                ThreadImportResult(
                    index=result.index,
                    title=result.title,
                    messages=result.messages,
                    thread=ThreadType.from_model(result.thread) if result.thread else None,
                    error=result.error,
                )
                for result in results
            ],
            imported_count=sum(1 for result in results if result.thread is not None),
            failed_count=sum(1 for result in results if result.thread is None),
        )
