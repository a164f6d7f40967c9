"""What a JSON body may hold, decided once for every route and upload format.

Postgres cannot store some values that Python's `json` module happily parses:
a NUL character in text, a lone UTF-16 surrogate (`"\\ud800"`, not valid
Unicode), NaN and the infinities (JSON has none; `1e999` parses to one). And
Python's parser recurses, so 100,000 nested arrays raise RecursionError. Every
request body, multipart JSON part, JSONL line and CSV cell goes through `loads`
and `text_problems` here, so each of these is refused as a 4xx before anything
is stored, instead of failing in the database as a 500.
"""

from __future__ import annotations

import json
import math
from typing import Any

# Containers nested inside one another; a job body uses 2 ({"input": {...}}).
MAX_DEPTH = 32


class NotJson(ValueError):
    """Text Python's json accepts but JSON (RFC 8259) does not: NaN, Infinity, 1e999."""


class TooDeep(ValueError):
    """Valid JSON nested deeper than MAX_DEPTH."""

    def __init__(self) -> None:
        super().__init__(f"nested deeper than {MAX_DEPTH} levels of arrays and objects")


def _no_constant(name: str) -> Any:
    raise NotJson(f"{name} is not a JSON value")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NotJson(f"number {text[:40]} is out of range")
    return value


def depth(value: Any) -> int:
    """How many arrays/objects are nested, without recursion (deep input must not crash us)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest


def loads(raw: str | bytes) -> Any:
    """`json.loads` for untrusted input: ValueError (NotJson, TooDeep) on what we refuse."""
    try:
        value = json.loads(raw, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError as exc:
        raise TooDeep() from exc
    if depth(value) > MAX_DEPTH:
        raise TooDeep()
    return value


def printable(text: str) -> str:
    """A string safe to echo in an error: NUL and lone surrogates as \\u escapes."""
    return text.replace("\x00", "\\u0000").encode("utf-8", "backslashreplace").decode("utf-8")


def text_error(text: str) -> str | None:
    """Why Postgres cannot store this string, or None."""
    if "\x00" in text:
        return "contains a NUL character (\\u0000), which is not accepted"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate (\\ud800-\\udfff), which is not valid Unicode"
    return None


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def text_problems(value: Any, field: str = "") -> list[dict[str, str]]:
    """Every string or key under `value` that cannot be stored, as [{"field", "message"}].

    Also refuses non-finite floats (a CSV cell may hold "nan") and nesting past
    MAX_DEPTH, so a value built from several parts (batch defaults merged into a
    line) is checked as a whole.
    """
    if depth(value) > MAX_DEPTH:
        return [{"field": field or "body", "message": str(TooDeep())}]
    out: list[dict[str, str]] = []
    stack: list[tuple[Any, str]] = [(value, field)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            problem = text_error(item)
            if problem:
                out.append({"field": path or "body", "message": problem})
        elif isinstance(item, float) and not math.isfinite(item):
            out.append({"field": path or "body", "message": "NaN and infinities are not JSON"})
        elif isinstance(item, dict):
            for key, child in item.items():
                name = _join(path, printable(str(key)))
                problem = text_error(key) if isinstance(key, str) else None
                if problem:
                    out.append({"field": name, "message": f"the key {problem}"})
                stack.append((child, name))
        elif isinstance(item, list | tuple):
            stack.extend((child, _join(path, str(i))) for i, child in enumerate(item))
    out.sort(key=lambda d: d["field"])
    return out
