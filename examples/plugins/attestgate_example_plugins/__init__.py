"""Example attestgate plugins (see shared/plugins.py for the interface).

``deny_listed`` (policy): refuse the devices named in ``ATTESTGATE_EXAMPLE_DENY``
(comma-separated names), e.g. machines pulled from service whose records should stay.

``lock_on_secure_boot_change`` (consequence): a change of PCR 7 (the Secure Boot policy:
keys, db/dbx, on/off) locks the device at the first refusal, without waiting for
ATTESTGATE_MAX_FAILURES; other refusals are left to the built-in policy.
"""

from __future__ import annotations

import os

from shared.plugins import Action, ActionKind, Decision, Evidence, Refused

SECURE_BOOT_PCR = 7


def deny_listed(evidence: Evidence) -> Decision:
    denied = {n.strip().casefold() for n in os.environ.get("ATTESTGATE_EXAMPLE_DENY", "")
              .split(",") if n.strip()}
    if evidence.device.name.casefold() in denied:
        return Decision.refuse("device is on the deny list (ATTESTGATE_EXAMPLE_DENY)")
    return Decision.accept()


def lock_on_secure_boot_change(refused: Refused) -> Action:
    if any(change.get("pcr") == SECURE_BOOT_PCR for change in refused.changed):
        return Action.of(ActionKind.LOCK, "Secure Boot policy (PCR 7) changed")
    return Action.none()
