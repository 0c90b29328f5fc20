"""The YAML subset fstore.yaml uses, without PyYAML: nested mappings by
indentation, `- item` lists of scalars, inline `[a, b]` lists, `#` comments,
and scalars (quoted strings, ints, floats, true/false, null). Anything else is
an error with its line number rather than a silent misread."""
from __future__ import annotations

import re

from fsapp.registry.errors import RepoError


def scalar(text: str):
    t = text.strip()
    if not t:
        return None
    if t[0] in "'\"":
        if len(t) < 2 or t[-1] != t[0]:
            raise ValueError(f"unterminated quoted string {t}")
        body = t[1:-1]
        return body.replace("''", "'") if t[0] == "'" else bytes(body, "utf-8").decode("unicode_escape")
    if t.startswith("[") and t.endswith("]"):
        return [scalar(p) for p in t[1:-1].split(",") if p.strip()]
    low = t.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("null", "~"):
        return None
    if re.fullmatch(r"[-+]?\d+", t):
        return int(t)
    if re.fullmatch(r"[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?", t):
        return float(t)
    return t


def _strip_comment(line: str) -> str:
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip()
    return line.rstrip()


def load(text: str, source: str = "fstore.yaml") -> dict:
    lines = []
    for no, raw in enumerate(text.splitlines(), 1):
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise RepoError(f"{source}:{no}: indent with spaces, not tabs")
        line = _strip_comment(raw)
        if line.strip() and line.strip() != "---":
            lines.append((no, len(line) - len(line.lstrip()), line.strip()))
    root: dict = {}
    # Stack of (indent, container); a key with an empty value opens a child
    # whose type (dict or list) the next deeper line decides.
    stack: list[tuple[int, object]] = [(0, root)]
    pending: tuple[dict, str, int] | None = None
    for no, indent, body in lines:
        try:
            if pending is not None:
                parent, key, parent_indent = pending
                pending = None
                if indent > parent_indent:
                    parent[key] = [] if body.startswith("- ") or body == "-" else {}
                    stack.append((indent, parent[key]))
            while indent < stack[-1][0]:
                stack.pop()
            if indent != stack[-1][0]:
                raise ValueError("indentation does not match any enclosing block")
            container = stack[-1][1]
            if body.startswith("- ") or body == "-":
                if not isinstance(container, list):
                    raise ValueError("a '- item' where a 'key: value' was expected")
                container.append(scalar(body[1:]))
                continue
            m = re.fullmatch(r"([A-Za-z_][\w.-]*)\s*:(?:\s+(.*))?", body)
            if not m or not isinstance(container, dict):
                raise ValueError(f"expected 'key: value', got {body!r}")
            key, value = m.group(1), m.group(2)
            if key in container:
                raise ValueError(f"duplicate key {key!r}")
            if value is None or not value.strip():
                container[key] = None
                pending = (container, key, indent)
            else:
                container[key] = scalar(value)
        except ValueError as e:
            raise RepoError(f"{source}:{no}: {e}") from None
    return root
