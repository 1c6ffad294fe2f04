"""The one input-sanitising layer: no string a client sends reaches a resolver, a limiter or
the database if PostgreSQL could not store it.

Every string of an operation is looked at before anything runs: the string literals of its
document (arguments, input objects, lists, JSON-scalar literals, variable defaults; cached with
the document) and every string of its variable values (values and object keys, at any depth,
JSON-scalar values included), as the client sent them. A NUL character or a lone surrogate is
refused with BAD_USER_INPUT naming where it is: `extensions.field` is the argument path of a
literal (`input.email`) or the path inside a variable (`$input.email`, `$ids[2]`).

It runs in the document guard (`extension.py`), so on every transport (HTTP, WebSocket,
subscriptions over HTTP) and before the compiled read path decides anything. Variables are
walked iteratively and have a bounded shape already (`body.MAX_JSON_DEPTH`, `MAX_JSON_VALUES`)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from graphql import (
    ArgumentNode,
    DocumentNode,
    FieldNode,
    GraphQLError,
    ListValueNode,
    Node,
    ObjectFieldNode,
    ObjectValueNode,
    StringValueNode,
    VariableDefinitionNode,
)

from atlas_gql.db.inputs import unstorable_character

_NAME = re.compile(r"[_A-Za-z][_0-9A-Za-z]{0,63}")
# Longer keys are cut in the path a refusal quotes.
_MAX_QUOTED_KEY = 40


def _key(path: str, key: str) -> str:
    """`path` followed by an object key: `.name`, or `["quoted key"]` (cut, escaped)."""
    if _NAME.fullmatch(key):
        return f"{path}{key}" if path == "$" else f"{path}.{key}"
    quoted = json.dumps(key[:_MAX_QUOTED_KEY])  # ASCII: NUL and surrogates escaped
    return f"{path}[{quoted}]"


def refuse_string(field: str, problem: str, node: Node | None = None) -> GraphQLError:
    """The refusal of a string that holds `problem`, at `field`."""
    return GraphQLError(
        f"`{field}` contains {problem}, which is not allowed in text.",
        nodes=node,
        extensions={"code": "BAD_USER_INPUT", "field": field},
    )


def variable_string_errors(variables: Any) -> list[GraphQLError]:
    """The first unstorable string in the variable values (a JSON object), as a refusal.
    Strings are checked where they sit; a path is written only for containers and the
    refused string (the widest body allowed costs ~milliseconds: bench/inputs.py)."""
    if not isinstance(variables, dict):
        return []
    stack: list[tuple[Any, str]] = [(variables, "$")]
    while stack:
        container, path = stack.pop()
        items = container.items() if isinstance(container, dict) else enumerate(container)
        nested: list[tuple[Any, str]] = []
        for key, item in items:
            if isinstance(key, str):
                problem = unstorable_character(key)
                if problem is not None:
                    return [refuse_string(f"{_key(path, key)} (a key)", problem)]
            if isinstance(item, str):
                problem = unstorable_character(item)
                if problem is not None:
                    return [refuse_string(_child(path, key), problem)]
            elif isinstance(item, (dict, list)):
                nested.append((item, _child(path, key)))
        stack.extend(reversed(nested))
    return []


def _child(path: str, key: str | int) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else _key(path, key)


def literal_string_errors(document: DocumentNode) -> list[GraphQLError]:
    """The first unstorable string literal of the document, as a refusal naming its argument
    path (`input.email`), or the variable whose default holds it (`$input.email`)."""
    for node, path in _literals(document):
        problem = unstorable_character(node.value)
        if problem is not None:
            return [refuse_string(path, problem, node)]
    return []


def _literals(document: DocumentNode) -> Iterator[tuple[StringValueNode, str]]:
    """Every string literal of the document with the path that names it, in document order."""
    stack: list[tuple[Node, str]] = [(document, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, StringValueNode):
            yield node, path
            continue
        children: list[tuple[Node, str]] = []
        if isinstance(node, VariableDefinitionNode):
            if node.default_value is not None:
                children.append((node.default_value, f"${node.variable.name.value}"))
        elif isinstance(node, FieldNode):
            children.extend((argument, "") for argument in node.arguments or ())
            children.extend((directive, "") for directive in node.directives or ())
            if node.selection_set is not None:
                children.append((node.selection_set, ""))
        elif isinstance(node, ArgumentNode):
            children.append((node.value, node.name.value))
        elif isinstance(node, ObjectValueNode):
            children.extend((item, path) for item in node.fields)
        elif isinstance(node, ObjectFieldNode):
            children.append((node.value, f"{path}.{node.name.value}" if path else node.name.value))
        elif isinstance(node, ListValueNode):
            children.extend((item, f"{path}[{index}]") for index, item in enumerate(node.values))
        else:
            for key in node.keys:
                child = getattr(node, key, None)
                if isinstance(child, Node):
                    children.append((child, path))
                elif isinstance(child, (list, tuple)):
                    children.extend((item, path) for item in child if isinstance(item, Node))
        stack.extend(reversed(children))
