#!/usr/bin/env bash
# Placeholder: the demo (start the stack and a swtpm, enroll, post, change a PCR, show the
# refusal) is not written yet.
set -euo pipefail
echo "demo not written yet" >&2
exit 1
