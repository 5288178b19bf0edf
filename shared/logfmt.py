"""Log records as one line each: logfmt (default) or JSON (``ATTESTGATE_LOG_FORMAT=json``).

logfmt: ``ts=2026-12-01T21:17:29.123Z level=warning logger=attestgate.gateway msg="..."``.
A value is quoted when it is empty or holds a space, ``=``, ``"`` or a control character;
inside quotes ``\\`` and ``"`` are escaped and control characters written as ``\\n``,
``\\t`` or ``\\u00XX``, so a message (a post text, a device name) can never forge a field
or a line. A traceback goes into ``exc`` the same way.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Final

from shared.ops_settings import LogFormat

_PLAIN: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                          "-_.:/,+@%[]()<>!?*#~^&;'|$")


def _escape(c: str) -> str:
    if c in '"\\':
        return "\\" + c
    if c in "\n\t\r":
        return {"\n": "\\n", "\t": "\\t", "\r": "\\r"}[c]
    if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029":
        return f"\\u{ord(c):04x}"
    return c


# Every character quote() writes other than as itself (str.translate with it is one C loop;
# a log line is formatted on every connect, and per character in Python it cost ~20 us).
_ESCAPES: Final = {ord(c): _escape(c) for c in [*map(chr, range(0xA0)), "\u2028", "\u2029"]
                   if _escape(c) != c}
_UNSAFE: Final = re.compile("[^" + re.escape("".join(sorted(_PLAIN))) + "]")


def quote(value: str) -> str:
    """One logfmt value: bare when safe, else double-quoted with escapes."""
    if value and _UNSAFE.search(value) is None:
        return value
    return '"' + value.translate(_ESCAPES) + '"'


_second: list[tuple[int, str]] = [(-1, "")]  # the last second formatted, and its text


def _time(record: logging.LogRecord) -> str:
    second = int(record.created)
    last, text = _second[0]
    if second != last:
        text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        _second[0] = (second, text)
    return text + f"{int(record.msecs):03d}Z"


def _fields(record: logging.LogRecord, formatter: logging.Formatter) -> dict[str, str]:
    fields = {"ts": _time(record), "level": record.levelname.lower(), "logger": record.name,
              "msg": record.getMessage()}
    if record.exc_info:
        fields["exc"] = formatter.formatException(record.exc_info)
    return fields


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={quote(v)}" for k, v in _fields(record, self).items())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record, self), ensure_ascii=True)


def setup_logging(level: str, fmt: LogFormat = LogFormat.LOGFMT) -> None:
    """Send every record at ``level`` and above to stderr, one line each in ``fmt``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt is LogFormat.JSON else LogfmtFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
