#!/usr/bin/env bash
# The whole attestgate story on one machine (run by `make demo`, after `make setup`):
#   a software TPM with an EK certificate from a demo CA, the stack under honcho,
#   enroll (EK chain + credential activation), post, a PCR extended in the TPM,
#   the refusal with its diff, the operator's approval, a successful post; then a kernel
#   update: the TPM "reboots" from a measured-boot event log whose kernel changed, and the
#   refusal says so in words (verdict kernel_update) before the operator approves it; then a
#   rule policy lets the next signed kernel through without an approval.
# Everything lives in run/demo/ and on ports of its own (override with DEMO_PORT_BASE).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

base=${DEMO_PORT_BASE:-17400}
demo=$PWD/run/demo
rm -rf "$demo"
mkdir -p "$demo"
export PATH="$PWD/.venv/bin:$PATH"
export TSS2_LOG=all+none

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

step "1. a software TPM (swtpm) provisioned with an EK certificate from a demo CA"
read -r tcti ca_dir swtpm_pid < <(python -m deploy.demo_tpm "$demo/swtpm")
pids+=("$swtpm_pid")
echo "TPM: $tcti   EK CA: $ca_dir"

step "1b. the machine boots: firmware, shim, grub and kernel 6.1.0-28 are measured into the TPM"
# A small synthetic UEFI boot log (deploy/boot_log.py); each event's SHA-256 digest is
# extended into its PCR, as firmware does. The client sends this log at enrollment.
python -m deploy.boot_log write "$demo/eventlogs" >/dev/null
python -m deploy.boot_log boot "$tcti" "$demo/eventlogs/boot-1.log"
cp "$demo/eventlogs/boot-1.log" "$demo/eventlogs/current.log"
export ATTESTGATE_EVENT_LOG=$demo/eventlogs/current.log
printf '$ attestgate eventlog %s --tpm %s   (the replayed PCRs)\n' "$ATTESTGATE_EVENT_LOG" "$tcti"
attestgate eventlog "$ATTESTGATE_EVENT_LOG" --tpm "$tcti" | sed -n '/replayed PCR values (sha256)/,$p'

step "2. the stack: redis (AOF), gateway, attestor, registry, board — under honcho"
cat > "$demo/env" <<EOF
ATTESTGATE_LISTEN=127.0.0.1:$base
ATTESTGATE_REDIS_PORT=$((base + 1))
ATTESTGATE_REDIS_DIR=$demo/redis
ATTESTGATE_REDIS_URL=redis://127.0.0.1:$((base + 1))/0
ATTESTGATE_BUS=tcp://127.0.0.1:$((base + 2)),tcp://127.0.0.1:$((base + 5))
ATTESTGATE_EVENTS=tcp://127.0.0.1:$((base + 3)),tcp://127.0.0.1:$((base + 6))
ATTESTGATE_CONSOLE_LISTEN=127.0.0.1:$((base + 4))
ATTESTGATE_CONSOLE_BUS=tcp://127.0.0.1:$((base + 5))
ATTESTGATE_CONSOLE_EVENTS=tcp://127.0.0.1:$((base + 6))
ATTESTGATE_SERVER_HOME=$demo/server
ATTESTGATE_ENROLL_POLICY=require-ek-cert
ATTESTGATE_EK_CA_DIR=$ca_dir
ATTESTGATE_PCR_SELECTION=sha256:0,1,2,3,4,5,6,7,8,9,16
ATTESTGATE_MAX_FAILURES=3
EOF
honcho start -f Procfile -e "$demo/env" > "$demo/stack.log" 2>&1 &
pids+=("$!")
set -a; . "$demo/env"; set +a
for _ in $(seq 1 100); do
    if (exec 3<>/dev/tcp/127.0.0.1/"$base") 2>/dev/null; then break; fi
    sleep 0.1
done
echo "gateway listening on 127.0.0.1:$base (log: $demo/stack.log)"

export ATTESTGATE_TPM=$tcti ATTESTGATE_HOME=$demo/device

step "3. what the device's TPM looks like"
run attestgate tpm-info --selection sha256:0,1,2,3,4,5,6,7,8,9,16

step "4. enroll: EK certificate chain, AK bound by credential activation, device secret into the TPM, event log"
fpr=$(attestgate-admin server-key --json | python -c 'import json,sys; print(json.load(sys.stdin)["fingerprint"])')
run attestgate enroll --server "127.0.0.1:$base" --name demo-device --server-key "$fpr"

step "5. post (signed by the TPM post key) and read"
run attestgate post "hello from a measured machine"
run attestgate read

step "6. the machine's state changes: PCR 16 is extended in the TPM"
TPM2TOOLS_TCTI="$tcti" tpm2_pcrextend \
    16:sha256=0000000000000000000000000000000000000000000000000000000000000001
run attestgate check || echo "(exit code $? — the offline self-check sees the change)"

step "7. the server refuses the channel and says which PCR changed (no boot event explains PCR 16)"
run attestgate post "this must not get through" || echo "(exit code $? = refused)"

step "8. the operator looks at the device and approves the new state"
run attestgate-admin show demo-device
run attestgate-admin approve demo-device

step "9. the same machine, now approved, posts again"
run attestgate post "approved new state, channel open again"
run attestgate read --limit 5

reboot_into() {  # power-cycle the swtpm and measure the boot log $1 into it
    kill "$swtpm_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$swtpm_pid" 2>/dev/null || break; sleep 0.1; done
    read -r tcti swtpm_pid < <(python -m deploy.demo_tpm reboot "$demo/swtpm")
    pids+=("$swtpm_pid")
    export ATTESTGATE_TPM=$tcti
    python -m deploy.boot_log boot "$tcti" "$1"
    cp "$1" "$demo/eventlogs/current.log"
    # Step 6's measurement (approved in step 8) happens at every boot: say, an agent measuring
    # its configuration. So only the boot log differs from the approved state.
    TPM2TOOLS_TCTI="$tcti" tpm2_pcrextend \
        16:sha256=0000000000000000000000000000000000000000000000000000000000000001
}

step "10. a kernel update: the machine reboots into kernel 6.1.0-31 (one boot application changed)"
reboot_into "$demo/eventlogs/boot-2.log"

step "11. the server asks for the event log and says what changed: the kernel, nothing else"
run attestgate post "booted the new kernel" || echo "(exit code $? = refused)"
printf '$ attestgate-admin show demo-device   (its last part)\n'
attestgate-admin show demo-device | sed -n '/what changed/,$p'

step "12. the operator approves the update; the machine posts again"
run attestgate-admin approve demo-device
run attestgate post "kernel 6.1.0-31 approved, channel open again"

step "13. a rule policy, so that the next signed kernel needs no approval"
# The template allows the Secure Boot authorities the approved boot's verified log shows.
printf '$ attestgate-admin policy template demo-device > policy.json\n'
attestgate-admin policy template demo-device > "$demo/policy.json"
# The demo selection quotes grub's PCRs 8-9 too: its files (kernel, initrd, grub.cfg) carry no
# signature a log can show, so this fleet accepts them explicitly (boot_config: accept); the
# kernel command line must still match the template's pattern.
python -c 'import json,sys; p=json.load(open(sys.argv[1])); p["boot_config"]="accept"; json.dump(p, open(sys.argv[1], "w"), indent=2)' "$demo/policy.json"
cat "$demo/policy.json"; echo
run attestgate-admin policy set --default "$demo/policy.json"

step "14. kernel 6.1.0-34, signed by the same authority: accepted by rule, audited with the rule"
reboot_into "$demo/eventlogs/boot-3.log"
run attestgate post "kernel 6.1.0-34, accepted by the policy"
printf '$ attestgate-admin audit demo-device   (the last entries)\n'
attestgate-admin audit demo-device | grep attest_ok_by_rule | tail -1

step "15. the audit log is HMAC-chained and checkpointed in the server home; verify and export it"
run attestgate-admin audit --verify
run attestgate-admin audit export --output "$demo/audit-export.json"

printf '\n\033[1mdemo complete.\033[0m state in %s\n' "$demo"
