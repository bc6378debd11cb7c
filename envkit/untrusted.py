"""Reading files other people wrote: strict JSON, inert data, and text that is safe to print.

Manifests, bundle indexes and verify reports travel between machines. Their JSON is read with
duplicate keys refused and nesting bounded (a deeply nested document would otherwise end in
Python's recursion limit), sections that envkit only keeps (host, verify report) must be inert
data of bounded size, and every string from such a file is cleaned of control characters and
terminal escape sequences before it is printed.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

from envkit.jsonio import canonical_text

MAX_DEPTH = 32
# A CSI/OSC/other escape sequence, then any lone control or format character left over.
_ESCAPE_RE = re.compile(
    r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])?|\x9b[0-?]*[ -/]*[@-~]"
)


class UntrustedError(ValueError):
    """Raised by the readers here; callers turn it into their own documented error."""


def clean(text: object, *, keep_newlines: bool = False) -> str:
    """``text`` as a string with escape sequences and control/format characters removed.

    For printing strings that came from a file or an image: nothing in them can move the cursor,
    clear the screen, set a window title or hide text.
    """
    value = _ESCAPE_RE.sub("", str(text))
    kept = []
    for char in value:
        if char == "\n" and keep_newlines:
            kept.append(char)
        elif char == "\t":
            kept.append(" ")
        elif unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp", "Cs"):
            continue
        else:
            kept.append(char)
    return "".join(kept)


def bad_char(text: str, *, allow: str = "") -> str | None:
    """The first control or format character in ``text`` not in ``allow``, or None."""
    for char in text:
        if char not in allow and unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp", "Cs"):
            return char
    return None


def no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A ``json.loads`` ``object_pairs_hook``: the object as a dict, a repeated key refused.

    Raises UntrustedError, a ValueError, naming the key.
    """
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise UntrustedError(f"duplicate key {key!r}")
        result[key] = value
    return result


def depth(value: Any, *, limit: int = MAX_DEPTH) -> int:
    """How deeply ``value`` nests (walked without recursion); stops counting past ``limit``."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            if deepest > limit:
                return deepest
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def _bracket_depth(text: str, limit: int) -> bool:
    """True when the text nests more than ``limit`` brackets (checked before the parser recurses)."""
    level = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            level += 1
            if level > limit:
                return True
        elif char in "]}":
            level -= 1
    return False


def decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UntrustedError(f"not UTF-8 text (byte {exc.start})") from None


def load_json(text: str, *, max_depth: int = MAX_DEPTH) -> Any:
    """JSON from a file someone else wrote: duplicate keys and deep nesting refused."""
    if _bracket_depth(text, max_depth):
        raise UntrustedError(f"nested deeper than {max_depth} levels")
    try:
        return json.loads(text, object_pairs_hook=no_duplicate_keys)
    except UntrustedError:
        raise
    except (ValueError, RecursionError) as exc:
        raise UntrustedError(f"not valid JSON: {exc}") from None


def check_inert(value: Any, *, max_bytes: int = 1 << 20, max_depth: int = 16) -> Any:
    """A section kept as data only: JSON types, bounded size and depth, no control characters.

    Newlines and tabs are allowed inside strings (reports carry multi-line messages); they are
    removed again when the strings are printed.
    """
    if depth(value, limit=max_depth) > max_depth:
        raise ValueError(f"nested deeper than {max_depth} levels")
    try:
        size = len(canonical_text(value).encode("utf-8"))
    except (TypeError, ValueError, UnicodeEncodeError) as exc:
        raise ValueError(f"not plain JSON data: {exc}") from None
    if size > max_bytes:
        raise ValueError(f"{size} bytes, more than the {max_bytes} allowed")
    stack = [value]
    while stack:
        item = stack.pop()
        strings: list[Any] = []
        if isinstance(item, dict):
            strings = list(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            strings = [item]
        elif item is not None and not isinstance(item, (bool, int, float)):
            raise ValueError(f"holds a {type(item).__name__}, not JSON data")
        for text in strings:
            char = bad_char(text, allow="\n\t")
            if char is not None:
                raise ValueError(f"a string holds the control character {char!r}")
    return value
