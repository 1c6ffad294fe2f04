"""Full-text search over the messages a viewer may read (docs/search.md).

PostgreSQL does all of it: `messages.search_vector` (a generated tsvector with a GIN index,
`ai.models`) matched against `websearch_to_tsquery`, the viewer's scope as the threads list's
own rule (`ai.rules.thread_visible`) in the same statement, ranked by `ts_rank`, and
`ts_headline` run on the page's rows only. Nothing is filtered in Python.

A search costs two statements whatever the page size (the query's check, the page), three
when `totalCount` is asked for."""

from __future__ import annotations

import html
import math
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.elements import AsBoolean, True_
from sqlmodel import col

from atlas_gql.ai import rules
from atlas_gql.ai.models import (
    MESSAGE_SEARCH_VECTOR,
    SEARCH_CONFIG,
    Message,
    MessageRole,
    Thread,
    search_document,
)
from atlas_gql.auth.actor import Actor
from atlas_gql.auth.rules import viewer_literals
from atlas_gql.auth.viewer import Viewer
from atlas_gql.db.pagination import Page, PageRequest, encode_cursor, read_cursor
from atlas_gql.db.session import ReadSession
from atlas_gql.errors import BadInput
from atlas_gql.logs.service import TimeWindow

QUERY_MAX = 200
REAL_MAX = 3.4028234663852886e38

# How `snippet` marks the words that matched. ts_headline writes these two control characters
# (removed from the text first, so only ts_headline's marks remain); the snippet is then
# HTML-escaped and they become <mark> and </mark>.
_START, _STOP = "\x02", "\x03"
MARK_START, MARK_STOP = "<mark>", "</mark>"
FRAGMENT_DELIMITER = " … "
# A text up to this many characters is its own snippet, whole (ts_headline's fragments would
# drop the words before the first match); a longer one gives up to two fragments around the
# matches.
WHOLE_SNIPPET_CHARS = 240
_MARKS = f"StartSel={_START}, StopSel={_STOP}"
_WHOLE_OPTIONS = f"{_MARKS}, HighlightAll=true"
_FRAGMENT_OPTIONS = (
    f'{_MARKS}, MaxFragments=2, MaxWords=18, MinWords=6, FragmentDelimiter="{FRAGMENT_DELIMITER}"'
)
# ts_rank's normalisation 1: the rank divided by 1 + log(the document's length), so a long
# reply does not outrank a short message that says the same thing.
_RANK_NORMALIZATION = 1

_config: sa.ColumnElement[Any] = sa.literal_column(f"'{SEARCH_CONFIG}'::regconfig")
_messages = rules.messages
_threads = rules.threads


@dataclass(frozen=True)
class SearchFilter:
    """Narrows a search; every condition given applies (AND)."""

    project_id: uuid.UUID | None = None
    thread_id: uuid.UUID | None = None
    # The thread's assistant (every message of conversations with it).
    assistant_id: uuid.UUID | None = None
    role: MessageRole | None = None
    window: TimeWindow = field(default_factory=TimeWindow)


@dataclass(frozen=True)
class SearchHit:
    """A message that matched, its thread, a highlighted snippet and its relevance."""

    message: Message
    thread: Thread
    # HTML: the text around the matches, escaped, the matched words in <mark>…</mark>.
    snippet: str
    rank: float


def clean_query(text: str) -> str:
    """The search text, trimmed: 1 to QUERY_MAX characters that PostgreSQL can take
    (BAD_USER_INPUT naming `query` otherwise)."""
    cleaned = text.strip()
    if not cleaned:
        raise BadInput("`query` must not be empty.", field="query")
    if len(cleaned) > QUERY_MAX:
        raise BadInput(f"`query` must be at most {QUERY_MAX} characters.", field="query")
    try:
        cleaned.encode("utf-8")
    except UnicodeEncodeError:
        raise BadInput("`query` is not valid text.", field="query") from None
    if "\x00" in cleaned:
        raise BadInput("`query` must not contain a NUL character.", field="query")
    return cleaned


def _parse_position(value: Any) -> tuple[float, datetime]:
    """A search cursor's sort value: [rank, createdAt]."""
    rank, created_at = value
    if isinstance(rank, bool) or not isinstance(rank, int | float):
        raise TypeError(rank)
    # A rank is a PostgreSQL `real`: finite and within its range (JSON may carry NaN, 1e300).
    if not math.isfinite(rank) or abs(rank) > REAL_MAX:
        raise ValueError(rank)
    moment = datetime.fromisoformat(created_at)
    if moment.tzinfo is None:
        raise ValueError(created_at)
    return float(rank), moment


def _cursor(rank: float, message: Message) -> str:
    return encode_cursor([rank, message.created_at.isoformat()], message.id)


def snippet_html(headline: str) -> str:
    """ts_headline's text as HTML: escaped, the marks as <mark> elements."""
    return html.escape(headline).replace(_START, MARK_START).replace(_STOP, MARK_STOP)


def _tsquery(text: str) -> sa.ColumnElement[Any]:
    return sa.func.websearch_to_tsquery(_config, sa.literal(text, sa.Text))


# The memory the page's statement may use for its bitmaps (PostgreSQL's `work_mem`, raised
# for the rest of the operation's transaction, never lowered). With the default 4 MB, the
# bitmap of a scope of some 80,000 messages turns lossy and every row of its pages is
# re-checked: 5 s instead of 0.3 s in bench/search.py. A bitmap takes what it needs only.
SEARCH_WORK_MEM_KB = 64 * 1024


async def _require_words(db: ReadSession, text: str) -> None:
    """BAD_USER_INPUT when the query has no word an index can look up: only punctuation or
    common words the configuration drops ("the", "to"), or only exclusions ("-word", which
    would list nearly every message). The same statement gives the transaction the
    `work_mem` the page needs (SET LOCAL), so it costs no round trip of its own."""
    work_mem = sa.func.pg_size_bytes(sa.func.current_setting("work_mem"))
    raise_work_mem = sa.case(
        (
            work_mem < SEARCH_WORK_MEM_KB * 1024,
            sa.func.set_config("work_mem", f"{SEARCH_WORK_MEM_KB}kB", sa.true()),
        ),
    )
    tree = (await db.execute(sa.select(sa.func.querytree(_tsquery(text)), raise_work_mem))).first()
    if tree is None or tree[0] in (None, "", "T"):
        raise BadInput(
            "`query` needs at least one word to find (not only common words such as "
            "'the', punctuation or -exclusions).",
            field="query",
        )


def _always(condition: sa.ColumnElement[bool]) -> bool:
    """Whether a rule given the viewer as constants folded to TRUE (ADMIN reads every
    thread)."""
    while isinstance(condition, AsBoolean):
        condition = condition.element
    return isinstance(condition, True_)


def _matches(viewer: Viewer, text: str, filter: SearchFilter) -> sa.Select[Any]:
    """The visible messages matching `text` and `filter`: (id, rank, created_at) rows.

    The scope is the ids of the threads the viewer may read (and the filter keeps), as an
    array the statement computes first: `thread_id = ANY(...)` lets PostgreSQL AND the
    thread index's bitmap with the text index's, so only the matches in those threads are
    read and ranked, not every match of the table. When the rule lets everything through
    and no thread filter narrows it, there is no such condition."""
    query = _tsquery(text)
    rank = sa.func.ts_rank(MESSAGE_SEARCH_VECTOR, query, _RANK_NORMALIZATION)
    statement = sa.select(_messages.c.id, _messages.c.created_at, rank.label("rank")).where(
        MESSAGE_SEARCH_VECTOR.op("@@")(query),
        *filter.window.conditions(_messages.c.created_at),
    )
    visible = rules.thread_visible(viewer_literals(viewer), _threads)
    in_threads = [] if _always(visible) else [visible]
    if filter.project_id is not None:
        in_threads.append(_threads.c.project_id == filter.project_id)
    if filter.assistant_id is not None:
        in_threads.append(_threads.c.assistant_id == filter.assistant_id)
    if in_threads:
        thread_ids = sa.select(_threads.c.id).where(*in_threads).scalar_subquery()
        statement = statement.where(_messages.c.thread_id == sa.func.any(sa.func.array(thread_ids)))
    if filter.thread_id is not None:
        statement = statement.where(_messages.c.thread_id == filter.thread_id)
    if filter.role is not None:
        statement = statement.where(_messages.c.role == filter.role.value)
    return statement


async def search_messages(
    *,
    db: ReadSession,
    actor: Actor,
    text: str,
    filter: SearchFilter,
    request: PageRequest,
) -> Page[SearchHit]:
    """The messages the viewer may read that match `text` (web search syntax: words, "a
    phrase", or, -word), most relevant first (then newest), a page after `request.after`."""
    text = clean_query(text)
    position = (
        read_cursor(request.after, field="after", parse=_parse_position) if request.after else None
    )
    viewer = actor.viewer_required
    await _require_words(db, text)
    matches = _matches(viewer, text, filter)
    total = 0
    if request.with_total:
        counted = sa.select(sa.func.count()).select_from(matches.subquery())
        total = int(await db.scalar(counted) or 0)
    window = matches.subquery("matches")
    key = (window.c.rank, window.c.created_at, window.c.id)
    page = sa.select(window)
    if position is not None:
        (rank, created_at), after_id = position
        page = page.where(
            sa.tuple_(*key)
            < sa.tuple_(
                sa.cast(sa.literal(rank), sa.REAL), sa.literal(created_at), sa.literal(after_id)
            )
        )
    hits = (
        page.order_by(*(column.desc() for column in key)).limit(request.limit + 1).subquery("hits")
    )
    content = _messages.c.content
    headline = sa.func.ts_headline(
        _config,
        sa.func.translate(search_document(content), _START + _STOP, ""),
        _tsquery(text),
        sa.case(
            (sa.func.length(content) <= WHOLE_SNIPPET_CHARS, _WHOLE_OPTIONS),
            else_=_FRAGMENT_OPTIONS,
        ),
    )
    rows = (
        await db.execute(
            sa.select(Message, Thread, hits.c.rank, headline)
            .select_from(hits)
            .join(Message, col(Message.id) == hits.c.id)
            .join(Thread, col(Thread.id) == col(Message.thread_id))
            .order_by(hits.c.rank.desc(), hits.c.created_at.desc(), hits.c.id.desc())
        )
    ).all()
    found = [
        SearchHit(message=message, thread=thread, snippet=snippet_html(snippet), rank=rank)
        for message, thread, rank, snippet in rows
    ]
    limit = request.limit
    return Page(
        items=found[:limit],
        cursors=[_cursor(hit.rank, hit.message) for hit in found[:limit]],
        has_next_page=len(found) > limit,
        has_previous_page=position is not None,
        total_count=total,
    )
