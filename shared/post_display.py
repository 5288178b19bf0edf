"""How a board post is shown to a human: a header line, then the text, indented.

Post text may hold newlines, so it could otherwise print a line that looks like the
header of another device's post. Here only the header starts at column 0: every line
of the text, the first included, starts with ``CONTINUATION``, and every character
that could start a new line or move the cursor (controls, line/paragraph separators,
bidi and other format characters) is shown as an escape, whatever the store returned.
The header's own fields (id, author) are escaped the same way. JSON output does not
come through here: it carries the exact text.
"""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Mapping
from typing import Any, Final

CONTINUATION: Final = "    | "
UNKNOWN_AUTHOR: Final = "(unknown device)"
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def escape(text: str, *, keep_tab: bool = True) -> str:
    """``text`` with every control/format/separator character (but tab) as ``\\u{XXXX}``."""
    return "".join(
        ch if (ch == "\t" and keep_tab) or unicodedata.category(ch) not in _ESCAPED_CATEGORIES
        else f"\\u{{{ord(ch):04X}}}"
        for ch in text
    )


def _when(ts: object) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(ts)))  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError, OSError):
        return "(bad time)"


def post_lines(post: Mapping[str, Any]) -> list[str]:
    """The lines that show one post view (``shared.posts.post_view``)."""
    mark = "verified" if post.get("verified") is True else "UNVERIFIED"
    author = escape(str(post.get("author") or ""), keep_tab=False) or UNKNOWN_AUTHOR
    post_id = escape(str(post.get("post_id", "")), keep_tab=False)
    header = f"[{post_id}] {_when(post.get('ts'))} {author} ({mark} TPM signature)"
    text = str(post.get("text", ""))
    return [header] + [CONTINUATION + escape(line) for line in text.split("\n")]


def format_post(post: Mapping[str, Any]) -> str:
    return "\n".join(post_lines(post))
