"""What to run next, as exact commands: every refusal and failed check names a way out.

The commands are written for this machine (its device name, server, pinned server key,
``--home``/``--tpm`` as given) inside backticks, so that a person, or a test, can run
them as they are.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from client import state as st
from shared.errors import ErrorCode
from shared.keys import fingerprint


@dataclass(frozen=True)
class Advice:
    """The machine's facts that the commands need; ``state`` None when not enrolled."""

    state: st.ClientState | None
    local_flags: tuple[str, ...] = ()  # --home/--tpm exactly as given on this command line

    def client(self, *words: str) -> str:
        return shlex.join(["attestgate", *words, *self.local_flags])

    @property
    def device(self) -> str:
        return self.state.name if self.state else "<device>"

    def admin(self, *words: str) -> str:
        return shlex.join(["attestgate-admin", *words])

    def status(self) -> str:
        return self.client("status")

    def enroll(self) -> str:
        """Enroll this machine again in place of its current enrollment (same name, same
        server, same pinned server key, same PCR binding)."""
        if self.state is None:
            return self.client("enroll", "--server", "<host:port>", "--name", "<name>",
                                "--server-key", "<fingerprint>")
        s = self.state
        words = ["enroll", "--force", "--server", s.server, "--name", s.name,
                 "--server-key", fingerprint(bytes.fromhex(s.server_public))]
        return self.client(*words, *(["--bind-pcrs"] if s.bind_pcrs else []))

    def reenroll(self, first_admin: str) -> str:
        """Ask the operator for ``first_admin``, then enroll again."""
        confirm = ["--yes"] if first_admin == "delete" else []
        return (f"ask the operator to run `{self.admin(first_admin, self.device, *confirm)}`, "
                f"then run `{self.enroll()}` (add --token TOKEN if the server requires one)")

    def for_code(self, code: ErrorCode, body: Mapping[str, Any] | None = None) -> str | None:
        """The way out after a refusal with ``code`` (``body``: the refusal's fields);
        None when the plain words suffice."""
        body = body or {}
        if code is ErrorCode.REVOKED:
            return "to use this machine again, " + self.reenroll("delete")
        if code is ErrorCode.LOCKED:
            return (f"ask the operator to check it and run `{self.admin('approve', self.device)}`"
                    f" (its new PCR state is intended) or `{self.admin('unlock', self.device)}`"
                    f" (it is back in an approved state), then run `{self.status()}`")
        if code is ErrorCode.REENROLL_REQUIRED:
            return (f"run `{self.enroll()}` (add --token TOKEN if the server requires one): the "
                    "same TPM enrolls again and replaces this device's record")
        if code is ErrorCode.PCR_MISMATCH:
            return (f"if the change was intended, ask the operator to run "
                    f"`{self.admin('approve', self.device)}`, then run `{self.status()}`; "
                    "otherwise investigate")
        if code is ErrorCode.ALREADY_ENROLLED and isinstance(body.get("ek_fingerprint"), str):
            retry = str(body.get("retry") or "the same enrollment with --force")
            return ("if this machine is to enroll again, ask the operator to run "
                    f"`{self.admin('allow-reenroll', str(body['ek_fingerprint']))}` (its TPM's "
                    f"EK fingerprint), then run `{retry}`"
                    " (add --token TOKEN if the server requires one)")
        if code is ErrorCode.UNKNOWN_DEVICE and self.state is not None:
            return ("if the operator deleted this device's record, run "
                    f"`{self.enroll()}` (add --token TOKEN if the server requires one)")
        return None

    def unsealed_failed(self) -> str:
        """A key bound with --bind-pcrs no longer unseals: the server never hears of it."""
        return ("this machine's PCR state changed since enrollment, so its channel key "
                "(bound with --bind-pcrs) cannot be unsealed and no connection is possible; "
                "if the change was intended, " + self.reenroll("allow-reenroll")
                + " (the same TPM enrolls again, bound to the new state)")

    def check_changed(self) -> str:
        """For `attestgate check` when the PCRs match no accepted baseline."""
        if self.state is not None and self.state.bind_pcrs:
            return ("The channel key is bound to the enrolled PCRs (--bind-pcrs): if the "
                    "change was intended, " + self.reenroll("allow-reenroll") + ".")
        return ("The server refuses this machine until an operator approves the new state. "
                f"If the change was intended: run `{self.status()}` (the server records the "
                f"refused state), ask the operator to run "
                f"`{self.admin('approve', self.device)}`, then run `{self.status()}` again (it "
                "records the server's view) and check again.")
