"""The fast lexer reads every source exactly as graphql-core's lexer does: same tokens,
positions, values and errors (and the same documents and errors from the parser)."""

from __future__ import annotations

import gc
import os
import weakref
from typing import Any

from graphql import GraphQLSyntaxError, parse
from graphql.language import Lexer, Source, TokenKind
from hypothesis import example, given, settings
from hypothesis import strategies as st

from atlas_gql.graph.limits.lexer import FastLexer, parse_document

PIECES = [
    "{", "}", "(", ")", ":", "$", "@", "!", "=", "[", "]", "|", "&", "...", "..", ".",
    '"', '"""', '\\"""', "\\", "\\n", "\\t", "\\u", "\\u00e9", "\\u{1F600}", "\\u{110000}",
    "\\ud83d\\ude00", "\\ud83d", "\\x", "a", "_b9", "é", "😀", " ", "\t", ",", "\ufeff",
    "\n", "\r", "\r\n", "#", "# comment", "\ud800", "\udc00", "\ud83d\ude00", "\x00", "\x7f",
    "1", "-1", "1.5e3", "0x", "'", "query", "fragment", "on", '""', '"""a"""', "  ", "\t\t",
    '\\"', '\\\\', '\\/', "\\b", "\\f", "\\r", "\\u0000", "\\udc00", "\\ude00",
    "\\uD83D", "\\u{D83D}", "\\u00", '\\""', '""""',
]  # fmt: skip


def lex(lexer_class: type[Lexer], text: str) -> list[Any]:
    lexer = lexer_class(Source(text))
    tokens: list[Any] = []
    try:
        while True:
            token = lexer.advance()
            tokens.append((token.kind, token.start, token.end, token.line, token.column,
                           token.value))  # fmt: skip
            if token.kind == TokenKind.EOF:
                return tokens
    except GraphQLSyntaxError as error:
        tokens.append((error.message, error.locations))
        return tokens


SOURCES = st.lists(st.sampled_from(PIECES), max_size=40).map("".join) | st.text(max_size=60)


@settings(max_examples=int(os.environ.get("LEXER_EXAMPLES", "1500")), deadline=None, database=None)
@given(SOURCES)
# An escaped backslash before `ud83d` is not a surrogate escape: the lone `\ude00` after it is
# (found by this test in CI).
@example('"\\\\ud83d\\ude00"')
@example('""""{""""\\\\ud83d\\ude00')
def test_the_fast_lexer_reads_like_graphql_core(text: str) -> None:
    assert lex(FastLexer, text) == lex(Lexer, text)


def outcome(parser: Any, text: str) -> Any:
    try:
        document = parser(text)
    except GraphQLSyntaxError as error:
        return error.message, error.locations
    return document, getattr(document, "token_count", None)


@settings(max_examples=800, deadline=None, database=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "{",
                "}",
                "a",
                "b:",
                "c(x: 1)",
                '"s"',
                '"""b"""',
                "...F",
                "...on Query",
                " ",
                "\n",
                "# c\n",
                "fragment F on Query",
                "query Q($v: Int = 2)",
                "@skip(if: $v)",
                "[",
                "]",
                "\\u00e9",
                "\r\n",
            ]
        ),
        max_size=30,
    ).map(" ".join),
    st.integers(min_value=1, max_value=30),
)
def test_documents_parse_the_same(text: str, max_tokens: int) -> None:
    ours = outcome(lambda source: parse_document(source, max_tokens=max_tokens), text)
    theirs = outcome(lambda source: parse(source, max_tokens=max_tokens), text)
    assert ours == theirs


BLOCK_LINES = st.lists(st.text(alphabet=[" ", "\t", "a", "b", '"', "\\"], max_size=6), max_size=12)


@settings(max_examples=1_000, deadline=None, database=None)
@given(BLOCK_LINES, st.sampled_from(["\n", "\r\n", "\r"]))
def test_block_strings_are_dedented_like_graphql_core(lines: list[str], newline: str) -> None:
    text = '{ a(s: """' + newline.join(lines) + '""") }'
    assert lex(FastLexer, text) == lex(Lexer, text)


def test_long_runs() -> None:
    for text in (
        '{ a(s: "' + "x" * 50_000 + '") }',
        '{ a(s: """' + "line\n" * 10_000 + '""") }',
        "{ a }\n#" + "c" * 50_000,
        "{ a" + " \t,\r\n" * 10_000 + "}",
        "{ " + "a" * 10_000 + " }",
    ):
        assert lex(FastLexer, text) == lex(Lexer, text)


def test_a_parsed_document_is_freed_without_the_garbage_collector() -> None:
    """No reference cycles (tokens used to link both ways): a document dropped from the
    cache is freed at once, not at the collector's next full collection."""
    gc.collect()
    gc.disable()
    try:
        document = parse_document('query Q($v: Int) { a(x: $v, s: "s") # c\n b }', max_tokens=100)
        token = document.loc.start_token if document.loc else None
        while token is not None:
            assert token.prev is None
            token = token.next
        alive = weakref.ref(document)
        del document
        assert alive() is None
    finally:
        gc.enable()
