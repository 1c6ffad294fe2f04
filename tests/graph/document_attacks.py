"""Hostile GraphQL documents, each family built at any size `n`.

Shared by the tests (which generate variants with hypothesis) and bench/document_limits.py
(which builds the largest variant the byte and token limits let through, and times it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from graphql import GraphQLError, get_introspection_query, parse


@dataclass(frozen=True)
class Attack:
    name: str
    build: Callable[[int], str]
    # The largest n worth trying (the byte or token limit usually stops far earlier).
    most: int = 100_000


def _fragment_bomb(n: int) -> str:
    chain = " ".join(f"fragment F{i} on Query {{ ...F{i + 1} ...F{i + 1} }}" for i in range(n))
    return f"{{ ...F0 }} {chain} fragment F{n} on Query {{ __typename }}"


def _aliased_fragment_bomb(n: int) -> str:
    body = "a: roles {{ name }} b: roles {{ name }} ...U{next} ...U{next}"
    chain = " ".join(
        f"fragment U{i} on User {{ " + body.format(next=i + 1) + " }" for i in range(n)
    )
    return f"{{ me {{ ...U0 }} }} {chain} fragment U{n} on User {{ id }}"


def _nested_fragment_bomb(n: int) -> str:
    # Each level doubles the fields that execution would resolve (aliases, not spreads).
    chain = " ".join(
        f"fragment P{i} on User {{ x: roles {{ permissions }} ...P{i + 1} }}" for i in range(n)
    )
    return "{ a: me { ...P0 } b: me { ...P0 } } " + chain + f" fragment P{n} on User {{ id }}"


def _fields(unit: str) -> Callable[[int], str]:
    return lambda n: "{ " + " ".join(unit.format(i=i) for i in range(n)) + " }"


def _fragments_in_one_set(n: int) -> str:
    spreads = " ".join(f"...F{i}" for i in range(n))
    definitions = " ".join(f"fragment F{i} on Query {{ me {{ id email }} }}" for i in range(n))
    return f"{{ {spreads} }} {definitions}"


def _conflicting_fragments(n: int) -> str:
    spreads = " ".join(f"...F{i}" for i in range(n))
    definitions = " ".join(
        f"fragment F{i} on Query {{ me {{ x: {'id' if i % 2 else 'email'} }} }}" for i in range(n)
    )
    return f"{{ {spreads} }} {definitions}"


def _nested_inline_fragments(n: int) -> str:
    return "{ " + "... on Query { " * n + "__typename" + " }" * n + " }"


def _deep_fields(n: int) -> str:
    member = "members { edges { node { user { id roles { name } } } } }"
    return '{ node(id: "x") { ... on Project { ' + " ".join([member] * n) + " } } }"


def _deep_invalid(n: int) -> str:
    return "{" + "a{" * n + "b" + "}" * n + "}"


def _variables_unused(n: int) -> str:
    return "query(" + " ".join(f"$v{i}: Int" for i in range(n)) + ") { __typename }"


def _variables_used(n: int) -> str:
    definitions = " ".join(f"$v{i}: Boolean!" for i in range(n))
    fields = " ".join(f"a{i}: __typename @skip(if: $v{i})" for i in range(n))
    return f"query({definitions}) {{ {fields} }}"


def _operations(n: int) -> str:
    return " ".join(f"query Q{i} {{ __typename }}" for i in range(n))


def _operations_sharing_fragments(n: int) -> str:
    operations = " ".join(f"query Q{i}($v: Boolean) {{ ...F0 }}" for i in range(n))
    chain = " ".join(
        f"fragment F{i} on Query {{ __typename @include(if: $v) ...F{i + 1} }}" for i in range(n)
    )
    return f"{operations} {chain} fragment F{n} on Query {{ __typename }}"


def _nested_list_literal(n: int) -> str:
    return "{ node(id: " + "[" * n + '"x"' + "]" * n + ") { id } }"


def _padded(filler: str) -> Callable[[int], str]:
    return lambda n: "{ __typename }\n" + filler * n


def _string_argument(unit: str, block: bool = False) -> Callable[[int], str]:
    quote = '"""' if block else '"'
    return lambda n: "{ node(id: " + quote + unit * n + quote + ") { id } }"


def _cost_pages(n: int) -> str:
    inner = "id"
    for _ in range(n):
        inner = f"projects(first: 100) {{ edges {{ node {{ {inner} }} }} }}"
    return "{ " + inner + " }"


ATTACKS: tuple[Attack, ...] = (
    Attack("fragment bomb", _fragment_bomb, 500),
    Attack("aliased fragment bomb", _aliased_fragment_bomb, 500),
    Attack("alias-doubling fragments", _nested_fragment_bomb, 500),
    Attack("duplicate fields", _fields("__typename")),
    Attack("duplicate nested fields", _fields("me {{ id }}")),
    Attack("distinct aliases", _fields("a{i}: __typename")),
    Attack("one alias, many selections", _fields("a: me {{ a{i}: id }}")),
    Attack("conflicting aliases", _fields("a: __typename a: me {{ id }}")),
    Attack("fragments in one set", _fragments_in_one_set),
    Attack("conflicting fragments", _conflicting_fragments),
    Attack("inline fragments in one set", _fields("... on Query {{ me {{ id }} }}")),
    Attack("nested inline fragments", _nested_inline_fragments, 5_000),
    Attack("deep and wide fields", _deep_fields),
    Attack("deep invalid nesting", _deep_invalid),
    Attack("wide directives", lambda n: "{ __typename " + "@skip(if: false) " * n + "}"),
    Attack("directive on every field", _fields("a{i}: __typename @include(if: true)")),
    Attack("unused variables", _variables_unused),
    Attack("used variables", _variables_used),
    Attack("operations", _operations),
    Attack("operations sharing fragments", _operations_sharing_fragments, 2_000),
    Attack("unknown fields", _fields("nope{i}")),
    Attack("list literal", lambda n: "{ node(id: [" + '"x", ' * n + "]) { id } }"),
    Attack("nested list literal", _nested_list_literal, 5_000),
    Attack("comment lines", _padded("# " + "x" * 70 + "\n")),
    Attack("one long comment", _padded("#" + "x" * 1000)),
    Attack("whitespace", _padded(" " * 100)),
    Attack("long string", _string_argument("x" * 100)),
    Attack("escaped string", _string_argument("\\u00e9" * 10)),
    Attack("block string", _string_argument("x\n" * 50, block=True)),
    Attack("unterminated block string", lambda n: '{ a(s: """' + 'x"y""z\\' * n),
    Attack("unterminated escapes", lambda n: '{ a(s: "' + "a\\n\\u00e9" * n),
    Attack("nested pages", _cost_pages, 50),
    Attack("introspection", lambda n: get_introspection_query(descriptions=True), 1),
)


def parses(document: str, *, max_bytes: int, max_tokens: int) -> bool:
    if len(document.encode()) > max_bytes:
        return False
    try:
        parse(document, max_tokens=max_tokens)
    except GraphQLError:
        return False
    return True


def largest(attack: Attack, *, max_bytes: int, max_tokens: int) -> tuple[int, str] | None:
    """The largest n (and its document) the byte and token limits let through; for a family
    that never parses (an unterminated string), the largest within the byte limit."""

    def fits(document: str) -> bool:
        return parses(document, max_bytes=max_bytes, max_tokens=max_tokens)

    if not fits(attack.build(1)):
        if len(attack.build(1).encode()) > max_bytes:
            return None

        def fits(document: str) -> bool:
            return len(document.encode()) <= max_bytes

    low, high = 1, attack.most
    if fits(attack.build(high)):
        return high, attack.build(high)
    while high - low > 1:
        middle = (low + high) // 2
        if fits(attack.build(middle)):
            low = middle
        else:
            high = middle
    return low, attack.build(low)
