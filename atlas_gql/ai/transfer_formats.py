"""The documents of import and export (docs/import-export.md), without the database: the
versioned ATLAS JSON format (written and read), ChatGPT's `conversations.json` (read), and
the Markdown of a branch (written). Every problem of a file is a BAD_USER_INPUT naming where
it is (`threads[2].messages[5].role: ...`), found before anything is stored.

A thread read from a file is a list of messages whose parents come before them (so they can
be inserted in order), each with a timestamp later than its parent's (ATLAS's tree rule:
a path read by time is in tree order), and the leaf of the branch to show.

Size: over 400 lines on purpose: the ATLAS format's writer and reader (messages and their
citations) read side by side, so what is written is what is read back."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterable, Sequence, Set
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from atlas_gql.ai.models import Message, MessageRole, MessageStatus, Thread
from atlas_gql.ai.tool_items import CitationKind
from atlas_gql.errors import BadInput
from atlas_gql.ids import encode_global_id

FORMAT_NAME = "atlas.threads"
FORMAT_VERSION = 1
# What one import may hold (the file's bytes are bounded by ATLAS_MAX_UPLOAD_BYTES first).
MAX_IMPORT_THREADS = 500
MAX_THREAD_MESSAGES = 5_000
TITLE_MAX = 300
ONE_MICROSECOND = timedelta(microseconds=1)
# A ChatGPT node's text is in `content.parts` for these content types; others (code output,
# browsing results, images alone) carry no text a thread shows.
CHATGPT_TEXT_TYPES = frozenset({"text", "multimodal_text"})
CHATGPT_ROLES = {"user": MessageRole.USER, "assistant": MessageRole.ASSISTANT}
# An imported reply cannot be running: what was in progress ended where the file ends.
IMPORTED_STATUS = {MessageStatus.IN_PROGRESS: MessageStatus.INCOMPLETE}
ASSISTANT = MessageRole.ASSISTANT
# Citations one imported message may carry (a reply cites a few dozen sources at most).
MAX_MESSAGE_CITATIONS = 1_000
CITATION_KINDS = frozenset(CitationKind)


@dataclass
class ImportedCitation:
    """A citation read from a file; `file_key` is the file's id as the file names it (the
    importer resolves it to a file it may see, or drops it)."""

    kind: str
    file_key: str | None
    url: str | None
    title: str | None
    quote: str | None
    start_index: int | None
    end_index: int | None


@dataclass
class ImportedMessage:
    key: str
    parent_key: str | None
    role: MessageRole
    content: str
    created_at: datetime
    status: MessageStatus = MessageStatus.COMPLETED
    completed_at: datetime | None = None
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    error: str | None = None
    citations: list[ImportedCitation] = field(default_factory=list)


@dataclass
class ImportedThread:
    title: str | None
    created_at: datetime | None
    # Parents before children.
    messages: list[ImportedMessage] = field(default_factory=list)
    active_leaf_key: str | None = None


def _bad(where: str, problem: str) -> BadInput:
    return BadInput(f"The file is not valid: {where}: {problem}", field="file")


def _object(value: Any, where: str, problem: str = "must be an object") -> dict[str, Any]:
    """`value` when it is a JSON object; else the file is refused at `where`."""
    if not isinstance(value, dict):
        raise _bad(where, problem)
    return value


def _list(value: Any, where: str) -> list[Any]:
    """`value` when it is a JSON array; else the file is refused at `where`."""
    if not isinstance(value, list):
        raise _bad(where, "must be a list")
    return value


# -- ATLAS JSON (write) -------------------------------------------------------------------------


def _time(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def exported_citations(stored: Any, visible_files: Set[uuid.UUID]) -> list[dict[str, Any]]:
    """A message's stored citations (ai/citations.py) as the ATLAS format writes them: a cited
    file by its global id when the exporter may see it (null otherwise, as `Citation.file`
    answers them), never its upstream id."""
    exported = []
    for item in stored if isinstance(stored, list) else ():
        file_id = uuid.UUID(item["fileId"]) if item.get("fileId") else None
        shown = file_id if file_id is not None and file_id in visible_files else None
        exported.append(
            {
                "kind": item.get("kind"),
                "fileId": encode_global_id("File", shown) if shown is not None else None,
                "url": item.get("url"),
                "title": item.get("title"),
                "quote": item.get("quote"),
                "startIndex": item.get("startIndex"),
                "endIndex": item.get("endIndex"),
            }
        )
    return exported


def cited_file_ids(messages: Iterable[Message]) -> set[uuid.UUID]:
    """The ATLAS files the messages' stored citations name."""
    return {
        uuid.UUID(item["fileId"])
        for message in messages
        if isinstance(message.citations, list)
        for item in message.citations
        if item.get("fileId")
    }


def thread_document(
    thread: Thread, messages: Sequence[Message], *, visible_files: Set[uuid.UUID] = frozenset()
) -> dict[str, Any]:
    """One thread of the ATLAS format: its whole tree, oldest first. `visible_files`: the
    cited files the exporter may see (`exported_citations`)."""
    return {
        "id": encode_global_id("Thread", thread.id),
        "title": thread.title,
        "createdAt": _time(thread.created_at),
        "activeLeafId": (
            encode_global_id("Message", thread.active_leaf_id) if thread.active_leaf_id else None
        ),
        "messages": [
            {
                "id": encode_global_id("Message", message.id),
                "parentId": (
                    encode_global_id("Message", message.parent_id) if message.parent_id else None
                ),
                "role": message.role.value,
                "content": message.content,
                "status": message.status.value,
                "createdAt": _time(message.created_at),
                "completedAt": _time(message.completed_at),
                "model": message.model,
                "inputTokens": message.input_tokens,
                "outputTokens": message.output_tokens,
                "error": message.error,
                "citations": exported_citations(message.citations, visible_files),
            }
            for message in messages
        ],
    }


def atlas_document(threads: Iterable[dict[str, Any]], *, exported_at: datetime) -> str:
    return json.dumps(
        {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "exportedAt": _time(exported_at),
            "threads": list(threads),
        },
        ensure_ascii=False,
        indent=2,
    )


# -- Markdown (write) ---------------------------------------------------------------------------

ROLE_HEADINGS = {MessageRole.USER: "User", MessageRole.ASSISTANT: "Assistant"}


def markdown_document(thread: Thread, path: Sequence[Message]) -> str:
    """The branch shown (root to active leaf) as Markdown: a heading per message, a reply's
    citations listed under its text (`markdown_sources`)."""
    lines = [f"# {thread.title or 'Untitled thread'}", ""]
    for message in path:
        heading = ROLE_HEADINGS.get(message.role, "System")
        if message.role is MessageRole.ASSISTANT and message.model:
            heading += f" ({message.model})"
        when = message.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        lines += [f"## {heading} · {when}", ""]
        if message.status is not MessageStatus.COMPLETED:
            lines += [
                f"_{message.status.value}{': ' + message.error if message.error else ''}_",
                "",
            ]
        lines += [message.content, ""]
        if sources := markdown_sources(message.citations):
            lines += ["Sources:", "", *sources, ""]
    return "\n".join(lines).rstrip() + "\n"


def markdown_sources(stored: Any) -> list[str]:
    """A message's stored citations (ai/citations.py) as a numbered Markdown list, in order,
    each source once: a web page as a link (its title, else its address), a file by its
    title (never its upstream id), each with the passage quoted when there is one."""
    lines: list[str] = []
    for item in stored if isinstance(stored, list) else ():
        title = _markdown_escaped(item.get("title") or "")
        url = item.get("url")
        if item.get("kind") == "URL" and isinstance(url, str) and url:
            address = url.replace(" ", "%20").replace("<", "%3C").replace(">", "%3E")
            source = f"[{title or _markdown_escaped(url)}](<{address}>)"
        else:
            source = title or "A file"
        quote = item.get("quote")
        if isinstance(quote, str) and quote.strip():
            source += f" — “{' '.join(quote.split())}”"
        if source not in lines:
            lines.append(source)
    return [f"{number}. {source}" for number, source in enumerate(lines, start=1)]


def _markdown_escaped(text: str) -> str:
    """Text put in a list item or a link's label, its Markdown-significant characters escaped
    (on one line)."""
    text = " ".join(text.split())
    for character in "\\`*_[]<>":
        text = text.replace(character, "\\" + character)
    return text


# -- reading ------------------------------------------------------------------------------------


def _load_json(data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise _bad("file", "not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise _bad(f"line {error.lineno} column {error.colno}", f"not JSON ({error.msg})") from None


def _text(value: Any, where: str, *, optional: bool = False, limit: int | None = None) -> Any:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise _bad(where, "must be a string")
    if "\x00" in value:
        raise _bad(where, "must not hold a NUL character")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise _bad(where, "holds a lone surrogate (not valid Unicode text)") from None
    if limit is not None and len(value) > limit:
        raise _bad(where, f"is longer than {limit} characters")
    return value


def _parse_time(value: Any, where: str, *, optional: bool = False) -> datetime | None:
    if value is None and optional:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            raise _bad(where, "is not a valid time") from None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise _bad(where, "is not an ISO 8601 time") from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise _bad(where, "must be a time")


def _count(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _bad(where, "must be a whole number ≥ 0")
    return value


def _citations(value: Any, where: str, *, max_chars: int) -> list[ImportedCitation]:
    """A message's `citations` (optional: an export made before they were written has none)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise _bad(where, "must be a list of citations")
    if len(value) > MAX_MESSAGE_CITATIONS:
        raise _bad(where, f"holds more than {MAX_MESSAGE_CITATIONS} citations")
    citations = []
    for index, item in enumerate(value):
        at = f"{where}[{index}]"
        if not isinstance(item, dict):
            raise _bad(at, "must be an object")
        kind = item.get("kind")
        if kind not in CITATION_KINDS:
            raise _bad(f"{at}.kind", "must be FILE or URL")
        citations.append(
            ImportedCitation(
                kind=kind,
                file_key=_text(item.get("fileId"), f"{at}.fileId", optional=True, limit=200)
                if kind == "FILE"
                else None,
                url=_text(item.get("url"), f"{at}.url", optional=True, limit=max_chars),
                title=_text(item.get("title"), f"{at}.title", optional=True, limit=max_chars),
                quote=_text(item.get("quote"), f"{at}.quote", optional=True, limit=max_chars),
                start_index=_count(item.get("startIndex"), f"{at}.startIndex"),
                end_index=_count(item.get("endIndex"), f"{at}.endIndex"),
            )
        )
    return citations


def _ordered(thread: ImportedThread, where: str, *, max_chars: int) -> ImportedThread:
    """Parents before children, times after parents', a leaf that exists; refuses unknown
    parents, cycles, duplicate ids and oversize threads."""
    if len(thread.messages) > MAX_THREAD_MESSAGES:
        raise _bad(where, f"has more than {MAX_THREAD_MESSAGES} messages")
    by_key: dict[str, ImportedMessage] = {}
    for index, message in enumerate(thread.messages):
        if message.key in by_key:
            raise _bad(f"{where}.messages[{index}].id", "appears twice")
        if len(message.content) > max_chars:
            raise _bad(f"{where}.messages[{index}].content", f"is over {max_chars} characters")
        by_key[message.key] = message
    children: dict[str | None, list[ImportedMessage]] = {}
    for index, message in enumerate(thread.messages):
        if message.parent_key is not None and message.parent_key not in by_key:
            raise _bad(f"{where}.messages[{index}].parentId", "names no message of the thread")
        children.setdefault(message.parent_key, []).append(message)
    ordered: list[ImportedMessage] = []
    pending: list[tuple[ImportedMessage, datetime | None]] = [
        (message, None) for message in reversed(children.get(None, []))
    ]
    while pending:
        message, parent_time = pending.pop()
        if parent_time is not None and message.created_at <= parent_time:
            # A reply is stored after what it answers (ATLAS's tree rule).
            message.created_at = parent_time + ONE_MICROSECOND
        ordered.append(message)
        pending += [
            (child, message.created_at) for child in reversed(children.get(message.key, []))
        ]
    if len(ordered) != len(thread.messages):
        raise _bad(f"{where}.messages", "the parents form a cycle")
    thread.messages = ordered
    if thread.active_leaf_key is not None and thread.active_leaf_key not in by_key:
        raise _bad(f"{where}.activeLeafId", "names no message of the thread")
    if thread.active_leaf_key is None and ordered:
        thread.active_leaf_key = max(ordered, key=lambda m: m.created_at).key
    return thread


def _threads_list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise _bad(where, "must be a list of threads")
    if len(value) > MAX_IMPORT_THREADS:
        raise _bad(where, f"holds more than {MAX_IMPORT_THREADS} threads")
    return value


def read_atlas(data: bytes, *, max_chars: int) -> list[ImportedThread]:
    """The threads of an ATLAS export (format `atlas.threads`, version 1)."""
    document = _load_json(data)
    if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
        raise _bad("format", f"must be {FORMAT_NAME!r} (an ATLAS export)")
    if document.get("version") != FORMAT_VERSION:
        raise _bad("version", f"must be {FORMAT_VERSION} (this server reads version 1)")
    threads = []
    for t, raw in enumerate(_threads_list(document.get("threads"), "threads")):
        where = f"threads[{t}]"
        raw = _object(raw, where)
        messages_raw = _list(raw.get("messages"), f"{where}.messages")
        thread = ImportedThread(
            title=_text(raw.get("title"), f"{where}.title", optional=True, limit=TITLE_MAX),
            created_at=_parse_time(raw.get("createdAt"), f"{where}.createdAt", optional=True),
            active_leaf_key=_text(raw.get("activeLeafId"), f"{where}.activeLeafId", optional=True),
        )
        for m, item in enumerate(messages_raw):
            at = f"{where}.messages[{m}]"
            item = _object(item, at)
            try:
                role = MessageRole(str(item.get("role")))
            except ValueError:
                raise _bad(f"{at}.role", "must be USER, ASSISTANT or SYSTEM") from None
            try:
                status = MessageStatus(str(item.get("status", "COMPLETED")))
            except ValueError:
                raise _bad(f"{at}.status", "is not a message status") from None
            created_at = _parse_time(item.get("createdAt"), f"{at}.createdAt")
            assert created_at is not None
            thread.messages.append(
                ImportedMessage(
                    key=_text(item.get("id"), f"{at}.id"),
                    parent_key=_text(item.get("parentId"), f"{at}.parentId", optional=True),
                    role=role,
                    content=_text(item.get("content"), f"{at}.content"),
                    created_at=created_at,
                    status=IMPORTED_STATUS.get(status, status),
                    completed_at=_parse_time(
                        item.get("completedAt"), f"{at}.completedAt", optional=True
                    ),
                    model=_text(item.get("model"), f"{at}.model", optional=True, limit=100),
                    input_tokens=_count(item.get("inputTokens"), f"{at}.inputTokens"),
                    output_tokens=_count(item.get("outputTokens"), f"{at}.outputTokens"),
                    error=_text(item.get("error"), f"{at}.error", optional=True),
                    citations=_citations(
                        item.get("citations"), f"{at}.citations", max_chars=max_chars
                    ),
                )
            )
        threads.append(_ordered(thread, where, max_chars=max_chars))
    return threads


def _chatgpt_text(message: dict[str, Any], where: str) -> str | None:
    """A ChatGPT node's text: its `content.parts` strings (other parts, e.g. images, have
    none); None for a node a conversation does not show (no text, hidden, another role)."""
    metadata = message.get("metadata") or {}
    if isinstance(metadata, dict) and metadata.get("is_visually_hidden_from_conversation"):
        return None
    content = _object(message.get("content"), f"{where}.message.content")
    if content.get("content_type") not in CHATGPT_TEXT_TYPES:
        return None
    parts = _list(content.get("parts"), f"{where}.message.content.parts")
    text = "\n".join(part for part in parts if isinstance(part, str))
    return _text(text, f"{where}.message.content.parts") if text.strip() else None


def _chatgpt_citations(metadata: Any, text: str, *, max_chars: int) -> list[ImportedCitation]:
    """A ChatGPT reply's web sources as URL citations: `metadata.citations` (each `start_ix`,
    `end_ix` and `metadata: {url, title, text}`), else `metadata.content_references` (each
    `start_idx`, `end_idx` and its `items: [{url, title, snippet}]`, or its own `url`,
    `title`). The shape is ChatGPT's, undocumented and changing: an entry without a web
    address, or in another shape, is left out rather than refusing the file; texts are cut to
    `max_chars`, a place that does not lie in the text is dropped (the text keeps ChatGPT's
    markers, which the places count), and at most MAX_MESSAGE_CITATIONS are kept."""
    if not isinstance(metadata, dict):
        return []

    def cut(value: Any) -> str | None:
        return value[:max_chars] if isinstance(value, str) and value.strip() else None

    def place(start: Any, end: Any) -> tuple[int | None, int | None]:
        whole = all(isinstance(i, int) and not isinstance(i, bool) for i in (start, end))
        return (start, end) if whole and 0 <= start <= end <= len(text) else (None, None)

    found: list[ImportedCitation] = []

    def add(source: Any, quote: Any, start: Any, end: Any) -> None:
        url = cut(source.get("url")) if isinstance(source, dict) else None
        if url is not None and len(found) < MAX_MESSAGE_CITATIONS:
            start_index, end_index = place(start, end)
            found.append(
                ImportedCitation(
                    kind="URL", file_key=None, url=url, title=cut(source.get("title")),
                    quote=cut(quote), start_index=start_index, end_index=end_index,
                )
            )  # fmt: skip

    for item in metadata.get("citations") or ():
        if isinstance(item, dict) and isinstance(source := item.get("metadata"), dict):
            add(source, source.get("text"), item.get("start_ix"), item.get("end_ix"))
    if found:
        return found
    for reference in metadata.get("content_references") or ():
        if not isinstance(reference, dict):
            continue
        items = reference.get("items")
        for source in items if isinstance(items, list) else [reference]:
            snippet = source.get("snippet") if isinstance(source, dict) else None
            add(source, snippet, reference.get("start_idx"), reference.get("end_idx"))
    return found


def _kept_ancestor(
    node_id: str | None,
    kept: dict[str, ImportedMessage],
    parents: dict[str, str | None],
    where: str,
) -> str | None:
    """The nearest node at or above `node_id` that became a message (None: none above)."""
    seen = 0
    while node_id is not None and node_id not in kept:
        node_id = parents.get(node_id)
        seen += 1
        if seen > len(parents):
            raise _bad(f"{where}.mapping", "the parents form a cycle")
    return node_id


def read_chatgpt(data: bytes, *, max_chars: int) -> list[ImportedThread]:
    """The conversations of ChatGPT's `conversations.json`: each `mapping` (a tree of nodes
    with `parent` and `children`) becomes a thread's tree, `current_node` its active leaf.
    Nodes without text to show (the root, system and tool messages, hidden ones) are left
    out, their children attached to the nearest node kept above them."""
    document = _load_json(data)
    threads = []
    for c, raw in enumerate(_threads_list(document, "conversations")):
        where = f"conversations[{c}]"
        raw = _object(raw, where)
        mapping = _object(raw.get("mapping"), f"{where}.mapping", "must be an object of nodes")
        thread = ImportedThread(
            title=_text(raw.get("title"), f"{where}.title", optional=True) or None,
            created_at=_parse_time(raw.get("create_time"), f"{where}.create_time", optional=True),
        )
        if thread.title is not None:
            thread.title = thread.title[:TITLE_MAX]
        fallback_time = thread.created_at or datetime(1970, 1, 1, tzinfo=UTC)
        kept: dict[str, ImportedMessage] = {}
        parents: dict[str, str | None] = {}
        for node_id, node in mapping.items():
            at = f"{where}.mapping[{node_id!r}]"
            node = _object(node, at)
            parent = node.get("parent")
            if parent is not None and (not isinstance(parent, str) or parent not in mapping):
                raise _bad(f"{at}.parent", "names no node of the conversation")
            parents[node_id] = parent
            message = node.get("message")
            if message is None:
                continue
            message = _object(message, f"{at}.message")
            author = message.get("author")
            role = CHATGPT_ROLES.get(str(author.get("role")) if isinstance(author, dict) else "")
            text = _chatgpt_text(message, at) if role is not None else None
            if role is None or text is None:
                continue
            created_at = _parse_time(
                message.get("create_time"), f"{at}.message.create_time", optional=True
            )
            metadata = message.get("metadata") or {}
            model = metadata.get("model_slug")
            kept[node_id] = ImportedMessage(
                key=node_id,
                parent_key=None,
                role=role,
                content=text,
                created_at=created_at or fallback_time,
                model=model[:100]
                if isinstance(model, str) and role is MessageRole.ASSISTANT
                else None,
                citations=_chatgpt_citations(metadata, text, max_chars=max_chars)
                if role is MessageRole.ASSISTANT
                else [],
            )

        for node_id, message in kept.items():
            message.parent_key = _kept_ancestor(parents[node_id], kept, parents, where)
        thread.messages = list(kept.values())
        current = raw.get("current_node")
        if current is not None and (not isinstance(current, str) or current not in mapping):
            raise _bad(f"{where}.current_node", "names no node of the conversation")
        thread.active_leaf_key = (
            _kept_ancestor(current, kept, parents, where) if current is not None else None
        )
        threads.append(_ordered(thread, where, max_chars=max_chars))
    return threads
