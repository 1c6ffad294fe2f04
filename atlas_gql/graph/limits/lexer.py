"""graphql-core's lexer with the long runs read by regular expressions.

graphql-core reads ignored characters, comments, strings and names one character at a time
in Python: a 100 KiB string argument, block string or comment took 25-50 ms to lex, most of
the time an accepted document may take. `FastLexer` skips each run of plain characters with
one compiled pattern and falls back to graphql-core's code for everything else (escapes,
surrogates, errors), so tokens, positions, values and error messages are the same
(tests/graph/test_lexer.py compares them on generated sources)."""

from __future__ import annotations

import json
import re
from sys import maxsize

from graphql import GraphQLSyntaxError
from graphql.language import DocumentNode, Lexer, Source, Token, TokenKind
from graphql.language.parser import Parser, nested_too_deeply_error

# Possessive quantifiers (Python 3.11) never backtrack: a run that does not close is given
# up on in linear time. Surrogates are allowed only as valid pairs, as graphql-core does.
_PAIR = r"[\ud800-\udbff][\udc00-\udfff]"
_IGNORED = re.compile(r"[ \t,\ufeff\r\n]++")
_NAME_CONTINUE = re.compile(r"[_0-9A-Za-z]*+")
_COMMENT_RUN = re.compile(rf"(?:[^\r\n\ud800-\udfff]++|{_PAIR})*+")
# Plain characters and the escapes JSON reads as GraphQL does (all but `\u{...}`).
_STRING_CHUNK = re.compile(
    rf'(?:[^"\\\r\n\ud800-\udfff]++|{_PAIR}|\\(?:["\\/bfnrt]|u[0-9A-Fa-f]{{4}}))*+'
)
# Every escape of a chunk, read left to right (so `\\ud83d` is an escaped backslash, then
# text), and which of them are surrogate escapes.
_ESCAPE = re.compile(r"\\(?:u[0-9A-Fa-f]{4}|.)", re.DOTALL)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
# A block string's characters up to its closing quotes (or the first it cannot contain).
_BLOCK_CHUNK = re.compile(rf'(?:[^"\\\ud800-\udfff]++|{_PAIR}|"(?!"")|\\"""|\\(?!"""))*+')
_LINE_TERMINATOR = re.compile(r"\r\n?")


class FastLexer(Lexer):
    def read_next_token(self, start: int) -> Token:
        body = self.source.body
        ignored = _IGNORED.match(body, start)
        if ignored is not None:
            end = ignored.end()
            run = body[start:end]
            lines = run.count("\n") + run.count("\r") - run.count("\r\n")
            if lines:
                self.line += lines
                self.line_start = start + max(run.rfind("\n"), run.rfind("\r")) + 1
            start = end
        return super().read_next_token(start)

    def read_comment(self, start: int) -> Token:
        max_comments = self._max_comments
        if max_comments is not None:
            if self._comment_count + 1 > max_comments:
                return super().read_comment(start)  # raises graphql-core's error
            self._comment_count += 1
        body = self.source.body
        end = _COMMENT_RUN.match(body, start + 1).end()  # type: ignore[union-attr]
        # A lone surrogate (or a line terminator) ends the comment, as in graphql-core.
        return self.create_token(TokenKind.COMMENT, start, end, body[start + 1 : end])

    def read_name(self, start: int) -> Token:
        body = self.source.body
        end = _NAME_CONTINUE.match(body, start + 1).end()  # type: ignore[union-attr]
        return self.create_token(TokenKind.NAME, start, end, body[start:end])

    def read_string(self, start: int) -> Token:
        body = self.source.body
        body_length = len(body)
        position = start + 1
        parts: list[str] = []
        while True:
            end = _STRING_CHUNK.match(body, position).end()  # type: ignore[union-attr]
            if end > position:
                chunk = body[position:end]
                if "\\" in chunk:
                    self._check_surrogate_escapes(position, chunk)
                    chunk = json.loads(f'"{chunk}"', strict=False)
                parts.append(chunk)
                position = end
            if position >= body_length:
                break
            char = body[position]
            if char == '"':
                return self.create_token(TokenKind.STRING, start, position + 1, "".join(parts))
            if char == "\\":  # an escape JSON does not read: `\u{...}`, or an invalid one
                escape = (
                    (
                        self.read_escaped_unicode_variable_width(position)
                        if body[position + 2 : position + 3] == "{"
                        else self.read_escaped_unicode_fixed_width(position)
                    )
                    if body[position + 1 : position + 2] == "u"
                    else self.read_escaped_character(position)
                )
                parts.append(escape.value)
                position += escape.size
                continue
            if char in "\r\n":
                break
            raise GraphQLSyntaxError(
                self.source,
                position,
                f"Invalid character within String: {self.print_code_point_at(position)}.",
            )
        raise GraphQLSyntaxError(self.source, position, "Unterminated string.")

    def _check_surrogate_escapes(self, position: int, chunk: str) -> None:
        """graphql-core takes `\\uD83D\\uDE00` as one character and refuses any other
        surrogate escape; JSON would let a lone one through."""
        paired_until = -1
        for match in _ESCAPE.finditer(chunk):
            if match.start() < paired_until or not _SURROGATE_ESCAPE.fullmatch(match.group()):
                continue
            escape = self.read_escaped_unicode_fixed_width(position + match.start())
            paired_until = match.start() + escape.size

    def read_block_string(self, start: int) -> Token:
        body = self.source.body
        end = _BLOCK_CHUNK.match(body, start + 3).end()  # type: ignore[union-attr]
        if body[end : end + 3] != '"""':
            if end >= len(body):
                raise GraphQLSyntaxError(self.source, end, "Unterminated string.")
            raise GraphQLSyntaxError(
                self.source,
                end,
                f"Invalid character within String: {self.print_code_point_at(end)}.",
            )
        raw = body[start + 3 : end]
        lines = raw.count("\n") + raw.count("\r") - raw.count("\r\n")
        text = _LINE_TERMINATOR.sub("\n", raw) if "\r" in raw else raw
        value = _dedent(text.replace('\\"""', '"""'))
        token = self.create_token(TokenKind.BLOCK_STRING, start, end + 3, value)
        if lines:
            self.line += lines
            self.line_start = start + 3 + max(raw.rfind("\n"), raw.rfind("\r")) + 1
        return token


_NON_BLANK_LINE_INDENT = re.compile(r"\n([ \t]*)[^ \t\n]")


def _dedent(text: str) -> str:
    """graphql-core's dedent_block_string_lines on `text`'s lines, joined with newlines,
    computed with regular expressions and string methods instead of a loop per line."""
    content = text.strip(" \t\n")
    if not content:
        return ""
    first_line = text.count("\n", 0, len(text) - len(text.lstrip(" \t\n")))
    last_line = text.count("\n", 0, len(text.rstrip(" \t\n")))
    indents = _NON_BLANK_LINE_INDENT.findall(text)
    common = min(map(len, indents)) if indents else maxsize
    if common == maxsize:
        text = re.sub(r"\n[^\n]*", "\n", text)
    elif common:
        text = re.sub(rf"\n[ \t]{{0,{common}}}", "\n", text)
    return "\n".join(text.split("\n")[first_line : last_line + 1])


def parse_document(text: str, *, max_tokens: int) -> DocumentNode:
    """graphql-core's `parse(text, max_tokens=...)`, lexed by FastLexer.

    The tokens' `prev` links are cut: with `next` they made every parsed document a
    reference cycle, which only the garbage collector's rare full collections free (the
    served process collects its oldest generation seldom), so documents evicted from the
    cache piled up (bench/document_memory.py: +10 MiB per 1,000 documents). Nothing reads
    `prev` once parsing is done."""
    source = Source(text)
    parser = Parser(source, max_tokens=max_tokens, lexer=FastLexer(source))
    try:
        document = parser.parse_document()
    except RecursionError:
        document = None
    if document is None:
        raise nested_too_deeply_error(parser)
    token = document.loc.start_token if document.loc is not None else None
    while token is not None:
        token.prev = None
        token = token.next
    return document
