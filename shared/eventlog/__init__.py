"""The TCG PC Client measured-boot event log: parse, replay, verify, compare.

Pipeline, each step a pure function over bytes and values:

* :func:`parse_log` (``parse.py``) — bytes → :class:`EventLog`, structure only, nothing trusted;
* :func:`replay` (``replay.py``) — the PCR values the log claims, per bank;
* :func:`verify` (``state.py``) — log bytes + quoted PCR values → :class:`MachineState`, where an
  event's data is ``verified`` only if its own digest matches and its PCR replays to the quote;
* :func:`diff_states` (``diff.py``) — two states → per-component changes and a :class:`Verdict`.
"""

from shared.eventlog.diff import Change, StateDiff, Verdict, diff_states
from shared.eventlog.parse import Event, EventLog, parse_log
from shared.eventlog.replay import replay
from shared.eventlog.state import Component, MachineState, verify

__all__ = [
    "Change",
    "Component",
    "Event",
    "EventLog",
    "MachineState",
    "StateDiff",
    "Verdict",
    "diff_states",
    "parse_log",
    "replay",
    "verify",
]
