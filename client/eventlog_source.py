"""Which measured-boot event log the client sends (protocol 3), and reading it.

``--event-log PATH`` first, then ``$ATTESTGATE_EVENT_LOG``; ``none`` in either turns
sending off. Without either, the kernel's log (``/sys/kernel/security/tpm0/
binary_bios_measurements``) is used when it is readable *and* the TPM is the machine's
own (a ``device:`` or ``tabrmd`` TCTI): the host's log says nothing about a software TPM.
A log that was asked for explicitly and cannot be read is a usage error.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from shared.errors import AttestgateError

# Here, not in client.eventlog_view (which re-exports them): every command's help names
# them, and the reader imports the event-log parser and verifier (see client/cli.py _LAZY).
LINUX_EVENT_LOG = "/sys/kernel/security/tpm0/binary_bios_measurements"
ENV_EVENT_LOG = "ATTESTGATE_EVENT_LOG"
OFF = "none"
_OWN_TPM = ("device", "tabrmd")


def event_log(path: str | None, env: Mapping[str, str], tcti: str | None,
              linux_path: str = LINUX_EVENT_LOG) -> bytes | None:
    """The log's bytes, or None when there is none to send."""
    chosen = path if path is not None else env.get(ENV_EVENT_LOG) or None
    if chosen is None:
        kind = (tcti or "").split(":", 1)[0].strip().lower()
        if kind not in _OWN_TPM or not os.access(linux_path, os.R_OK):
            return None
    elif chosen == OFF:
        return None
    # The reader only when a log is to be read: it imports the event-log parser and
    # verifier (client/cli.py _LAZY).
    from client.eventlog_view import read_log  # noqa: PLC0415

    if chosen is not None:
        return read_log(chosen)
    try:
        return read_log(linux_path)
    except AttestgateError:
        return None  # the default is best effort; only an explicit log must be readable
