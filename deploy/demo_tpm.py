"""Demo helper: provision a software TPM with an EK certificate from a demo CA, start it.

    python -m deploy.demo_tpm DIR          # prints: TCTI CA_DIR SWTPM_PID
    python -m deploy.demo_tpm reboot DIR   # the same TPM started again: TCTI SWTPM_PID

Uses the same provisioning as the integration tests (swtpm_setup with a private
EC P-256 CA), so the server can run with ATTESTGATE_ENROLL_POLICY=require-ek-cert
and ATTESTGATE_EK_CA_DIR=<CA_DIR>. The swtpm process keeps running (detached);
stop it with `kill SWTPM_PID`. ``reboot`` starts swtpm again on the TPM's state (stop the
old process first): PCRs are back at their reset values, keys and NV stay, as after a
power cycle.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.support.swtpm import SwtpmProcess, provision_template


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "reboot":
        tpm = SwtpmProcess.start(Path(sys.argv[2]).resolve() / "tpm")
        print(tpm.tcti, tpm.pid)
        return 0
    root = Path(sys.argv[1]).resolve()
    template = provision_template(root / "template", ca_name="attestgate-demo-ca")
    tpm = SwtpmProcess.start(root / "tpm", template)
    print(tpm.tcti, template.trust_dir, tpm.pid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
