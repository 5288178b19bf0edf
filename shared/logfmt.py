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
import sys
from datetime import UTC, datetime
from typing import Final

from shared.ops_settings import LogFormat

_PLAIN: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                          "-_.:/,+@%[]()<>!?*#~^&;'|$")


def quote(value: str) -> str:
    """One logfmt value: bare when safe, else double-quoted with escapes."""
    if value and all(c in _PLAIN for c in value):
        return value
    out = []
    for c in value:
        if c in '"\\':
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        elif c == "\r":
            out.append("\\r")
        elif ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029":
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _time(record: logging.LogRecord) -> str:
    t = datetime.fromtimestamp(record.created, UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(record.msecs):03d}Z"


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
