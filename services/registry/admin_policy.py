"""``attestgate-admin policy ...`` and ``baseline add``: policies that survive routine updates.

* ``baseline add DEV --event-log FILE [--pcr N=HEX ...]`` (or only ``--pcr``): a reference
  state added ahead of an update; its values are the log's replay in the device's PCR bank
  (PCRs the log does not describe come from ``--pcr``), and the log is kept with it, so
  later refusals are explained against it.
* ``policy set (DEV | --default) FILE``, ``policy show [DEV | --default]``, ``policy remove
  (DEV | --default)``, ``policy template DEV``: rule policies (``shared.eventlog.rules``) the
  attestor evaluates over the verified event log when a quote matches no baseline.

Every change writes an audit entry (``baseline_added``, ``policy_set``, ``policy_removed``)
with the whole canonical policy; a bad document changes nothing (exit 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Mapping
from typing import Any, Final

from services.attestor.eventlogs import bank_of
from services.attestor.rules import policy_for
from services.registry import admin_output as out
from services.registry.admin import (
    EXIT_REFUSED,
    EXIT_USAGE,
    AdminError,
    Context,
    Outcome,
    _device,
    _label,
    read_source,
)
from shared.errors import AttestgateError, ErrorCode
from shared.eventlog import parse_log, verify
from shared.eventlog.rules import MAX_POLICY_BYTES, RulePolicy, parse_policy, template
from shared.eventlog.transport import checked_state, compress, decompress, log_digest
from shared.eventlog.types import SIZE_BY_NAME
from shared.records import Baseline, Device
from shared.store.interface import referenced_logs
from shared.tpm.pcrs import PcrSelection
from shared.wire import MAX_LOG_TRANSFER

MAX_BASELINES: Final = 32  # a device's baselines (each is compared on a refusal)


# -- baseline add ---------------------------------------------------------------------------


def _pcr_values(texts: list[str], size: int) -> dict[int, bytes]:
    values: dict[int, bytes] = {}
    for text in texts:
        index, sep, hexval = text.partition("=")
        try:
            i, value = int(index), bytes.fromhex(hexval)
        except ValueError:
            i, value = -1, b""
        if not sep or not 0 <= i < 24 or len(value) != size or i in values:
            raise AdminError(EXIT_USAGE, ErrorCode.BAD_REQUEST.value,
                             f"--pcr {text[:80]!r}: give INDEX=HEX once per PCR, the value "
                             f"{size} bytes in hex (as tpm2_pcrread shows it)")
        values[i] = value
    return values


def _from_log(log: bytes, bank: str) -> dict[int, bytes]:
    """The PCR values a reference log replays to in ``bank``; refuses a log that is malformed
    or shows anomalies (it could never be a trustworthy reference)."""
    try:
        parsed = parse_log(log)
    except AttestgateError as exc:
        raise AdminError(EXIT_USAGE, ErrorCode.BAD_REQUEST.value,
                         f"the event log does not parse: {exc.detail}") from None
    if bank not in parsed.banks:
        raise AdminError(EXIT_USAGE, ErrorCode.BAD_REQUEST.value,
                         f"the event log has no {bank} bank (it has {', '.join(parsed.banks)})")
    state = verify(parsed, None)  # data checks and the replay of every bank
    if state.anomalies:
        raise AdminError(EXIT_USAGE, ErrorCode.LOG_INCONSISTENT.value,
                         "the event log cannot be a reference state: "
                         + "; ".join(state.anomalies[:3]))
    return dict(state.replayed[bank])


def cmd_baseline_add(args: argparse.Namespace, ctx: Context) -> Outcome:
    ctx.audit_key()  # refuse before changing anything if no entry can be written
    device = _device(ctx, args.device)
    selection = device.baselines[0].selection
    bank = bank_of(selection)
    wanted = PcrSelection.parse(selection).banks[0].indices
    given = _pcr_values(args.pcr or [], SIZE_BY_NAME[bank])
    if args.event_log is None and not given:
        raise AdminError(EXIT_USAGE, ErrorCode.BAD_REQUEST.value,
                         "give the reference state: --event-log FILE (and --pcr N=HEX for "
                         "PCRs it does not describe), or --pcr N=HEX for every selected PCR")
    log = read_source(args.event_log, MAX_LOG_TRANSFER, "event log") if args.event_log else b""
    replayed = _from_log(log, bank) if log else {}
    for i, value in given.items():
        if i in replayed and replayed[i] != value:
            raise AdminError(EXIT_USAGE, ErrorCode.LOG_INCONSISTENT.value,
                             f"--pcr {i} differs from the value the event log replays to")
    values = {i: given.get(i, replayed.get(i)) for i in wanted}
    missing = [i for i, v in values.items() if v is None]
    if missing:
        raise AdminError(EXIT_USAGE, ErrorCode.BAD_REQUEST.value,
                         f"no value for PCR {', '.join(map(str, missing))} of the selection "
                         f"{selection}: the event log does not describe it; add --pcr "
                         f"{missing[0]}=HEX (the value on the updated machine)")
    digest = log_digest(log) if log else ""
    if log:  # it replays to these values by construction
        ctx.store.put_event_log(device.device_id, digest, compress(log))
    state = dataclasses.replace(
        Baseline.of(selection, {i: v for i, v in values.items() if v is not None}, digest),
        approved_at=ctx.now)
    added: list[bool] = []

    def change(d: Device) -> Device:
        added[:] = [all(b.baseline_id != state.baseline_id for b in d.baselines)]
        if not added[0]:
            return d
        if len(d.baselines) >= MAX_BASELINES:
            raise AdminError(EXIT_REFUSED, "too_many_baselines",
                             f"{_label(d)} has {len(d.baselines)} baselines; remove some first "
                             f"(attestgate-admin baseline list {d.name})")
        return dataclasses.replace(d, baselines=(*d.baselines, state))

    try:
        new = ctx.store.update_device(device.device_id, change)
    finally:  # a log stored for a state that was not added must not stay behind
        current = ctx.store.get_device(device.device_id)
        if digest and (current is None or digest not in referenced_logs(current)):
            ctx.store.delete_event_log(device.device_id, digest)
    view = out.baseline_view(state)
    doc = {"device_id": new.device_id, "name": new.name, "added": added[0], **view,
           "source": "event_log" if log else "pcrs", "baselines": len(new.baselines)}
    if not added[0]:
        return Outcome(doc, f"{_label(new)} already has baseline {view['id']}; nothing changed")
    ctx.store.append_audit("baseline_added", new.device_id,
                           {**view, "source": doc["source"], "baselines": len(new.baselines)},
                           ctx.now)
    from services.registry import admin_secrets  # noqa: PLC0415 - it imports admin

    doc["secrets_signed"] = admin_secrets.after_approve(ctx, new)
    return Outcome(doc, f"added baseline {view['id']} ({selection}"
                        f"{', with its event log' if log else ''}) to {_label(new)}: it is "
                        f"accepted from now on; {len(new.baselines)} baseline(s)")


# -- policy ---------------------------------------------------------------------------------


def _scope(args: argparse.Namespace, ctx: Context) -> tuple[str, str, Device | None]:
    """(store scope, label, device) from ``DEV`` or ``--default`` (exactly one)."""
    if bool(args.device) == bool(args.default):
        raise AdminError(EXIT_USAGE, ErrorCode.BAD_REQUEST.value,
                         "name a device, or give --default for every device without its own")
    if args.default:
        return "", "the default (every device without its own policy)", None
    d = _device(ctx, args.device)
    return d.device_id, _label(d), d


def _policy_doc(raw: bytes) -> dict[str, Any]:
    try:
        return parse_policy(raw).as_dict()
    except AttestgateError as exc:
        return {"error": f"unreadable, refuses every acceptance by rule: {exc.detail}"}


def _describe(policy: RulePolicy) -> list[str]:
    auth = len(policy.boot_authorities)
    return [
        f"  boot loader and kernel: accepted when signed by one of {auth} allowed Secure Boot "
        "authorities" if auth else "  boot loader and kernel: changes need approval",
        "  dbx: may only grow" if policy.dbx == "grow" else "  dbx: changes need approval",
        f"  kernel command line: must match {policy.kernel_cmdline!r}" if policy.kernel_cmdline
        else "  kernel command line: changes need approval",
        "  grub commands and files (PCRs 8-9): accepted" if policy.boot_config == "accept"
        else "  grub commands and files (PCRs 8-9): changes need approval",
        "  firmware: changes need approval; unknown events: refused",
    ]


def cmd_policy_set(args: argparse.Namespace, ctx: Context) -> Outcome:
    ctx.audit_key()  # refuse before changing anything if no entry can be written
    scope, label, device = _scope(args, ctx)
    policy = parse_policy(read_source(args.file, MAX_POLICY_BYTES, "policy"))
    old = ctx.store.get_rule_policy(scope)
    ctx.store.put_rule_policy(scope, policy.to_bytes())
    detail = {"scope": "default" if not scope else "device", "digest": policy.digest,
              "replaced": _digest(old) if old else "", "policy": policy.as_dict()}
    ctx.store.append_audit("policy_set", scope, detail, ctx.now)
    doc = {"device_id": scope, "name": device.name if device else "", **detail}
    return Outcome(doc, "\n".join([f"rule policy {policy.digest} set for {label}:",
                                   *_describe(policy)]))


def cmd_policy_remove(args: argparse.Namespace, ctx: Context) -> Outcome:
    ctx.audit_key()
    scope, label, device = _scope(args, ctx)
    old = ctx.store.get_rule_policy(scope)
    if old is None or not ctx.store.delete_rule_policy(scope):
        raise AdminError(EXIT_REFUSED, ErrorCode.NOT_FOUND.value, f"{label} has no rule policy")
    detail = {"scope": "default" if not scope else "device",
              "digest": _digest(old)}
    ctx.store.append_audit("policy_removed", scope, detail, ctx.now)
    doc = {"device_id": scope, "name": device.name if device else "", **detail}
    after = ("devices without their own policy are accepted by exact baselines only"
             if not scope else "the default policy (if any) applies to it now")
    return Outcome(doc, f"removed the rule policy of {label}; {after}")


def _digest(raw: bytes) -> str:
    try:
        return parse_policy(raw).digest
    except AttestgateError:
        return ""


def cmd_policy_show(args: argparse.Namespace, ctx: Context) -> Outcome:
    if args.device:
        d = _device(ctx, args.device)
        found = policy_for(ctx.store, d.device_id)
        doc: dict[str, Any] = {"device_id": d.device_id, "name": d.name,
                               "applies": found[0] if found else "none"}
        if found is None:
            return Outcome(doc, f"{_label(d)}: no rule policy; accepted by exact baselines only")
        doc["policy"] = _policy_doc(found[1])
        doc["digest"] = _digest(found[1])
        return Outcome(doc, "\n".join([f"{_label(d)}: the {found[0]} rule policy "
                                       f"{doc['digest'] or '(unreadable)'}", *_lines(found[1])]))
    policies = ctx.store.list_rule_policies()
    if args.default:
        policies = {k: v for k, v in policies.items() if not k}
    rows = [{"scope": "default" if not k else "device", "device_id": k, "digest": _digest(v),
             "policy": _policy_doc(v)} for k, v in sorted(policies.items())]
    text = [f"{'default' if not r['device_id'] else r['device_id']}: rule policy "
            f"{r['digest'] or '(unreadable)'}" for r in rows] or ["no rule policies"]
    return Outcome({"policies": rows}, "\n".join(text))


def applying(ctx: Context, device_id: str) -> dict[str, str]:
    """Which rule policy applies to a device (for ``show``): scope and digest."""
    found = policy_for(ctx.store, device_id)
    if found is None:
        return {"applies": "none", "digest": ""}
    return {"applies": found[0], "digest": _digest(found[1]) or "unreadable"}


def applying_text(view: Mapping[str, str]) -> str:
    if view["applies"] == "none":
        return "none (accepted by exact baselines only)"
    return f"the {view['applies']} policy {view['digest']} (attestgate-admin policy show)"


def _lines(raw: bytes) -> list[str]:
    try:
        return _describe(parse_policy(raw))
    except AttestgateError as exc:
        return [f"  unreadable ({exc.detail}): it refuses every acceptance by rule"]


def cmd_policy_template(args: argparse.Namespace, ctx: Context) -> Outcome:
    d = _device(ctx, args.device)
    for b in sorted((b for b in d.baselines if b.log and b.live(ctx.now)),
                    key=lambda b: b.approved_at, reverse=True):
        blob = ctx.store.get_event_log(d.device_id, b.log)
        if blob is None:
            continue
        try:
            state = checked_state(decompress(blob), bank_of(b.selection), b.as_dict())
        except AttestgateError:
            continue
        policy = template(state, b.as_dict().keys()).as_dict()
        # Without --json the output is the policy itself: `... template dev1 > policy.json`.
        return Outcome({"device_id": d.device_id, "name": d.name, "baseline": b.baseline_id,
                        "policy": policy}, json.dumps(policy, indent=2, sort_keys=True))
    raise AdminError(EXIT_REFUSED, ErrorCode.NOT_FOUND.value,
                     f"{_label(d)} has no accepted baseline with an event log to start from; "
                     f"add one: attestgate-admin baseline add {d.name} --event-log FILE")


_POLICY_HELP = (
    "Rule policies let routine updates through without an approval each time: when a quote "
    "matches no baseline and the device sent an event log that replays to it, every change "
    "against a baseline (with its log) must be accepted by a rule — kernel and boot loader "
    "signed by an allowed Secure Boot authority, dbx only growing, the kernel command line "
    "matching a pattern, grub's commands and files — or the state is refused as before. "
    "Firmware changes always need approval; unknown events are always refused. A device's own "
    "policy replaces the default. See docs/policies.md.")


def add_policy_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    policy = sub.add_parser("policy", help="rule policies that accept routine updates",
                            description=_POLICY_HELP, examples=[
                                "attestgate-admin policy template dev1 > fleet.json",
                                "attestgate-admin policy set --default fleet.json",
                                "attestgate-admin policy show dev1"])
    psub = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")

    def scoped(name: str, help_: str, desc: str, device_required: bool = False) -> Any:
        example = desc.rsplit("Example: ", 1)[-1]
        p = psub.add_parser(name, parents=[common], help=help_, description=desc,
                            examples=[example])
        p.add_argument("device", nargs=None if device_required else "?", metavar="DEVICE",
                       help="device name or id")
        if not device_required:
            p.add_argument("--default", action="store_true",
                           help="the default policy for every device without its own")
        return p

    pset = scoped("set", "set a device's (or the default) rule policy from a JSON file",
                  "Validate and store a rule policy (JSON; - reads stdin); writes 'policy_set' "
                  "with the whole policy. A bad document changes nothing (exit 2). "
                  "Example: attestgate-admin policy set --default fleet-policy.json")
    pset.add_argument("file", metavar="FILE", help="the policy document (JSON), or -")
    pset.set_defaults(handler=cmd_policy_set)
    scoped("show", "show the policy that applies to a device, or all policies",
           "Show the rule policy that applies to DEVICE (its own or the default), the default "
           "(--default), or every stored policy. Read-only. "
           "Example: attestgate-admin policy show dev1").set_defaults(handler=cmd_policy_show)
    scoped("remove", "remove a device's (or the default) rule policy",
           "Remove a rule policy; writes 'policy_removed'. "
           "Example: attestgate-admin policy remove dev1").set_defaults(
               handler=cmd_policy_remove)
    scoped("template", "print a starting policy from a device's baseline log",
           "Print a policy (JSON) built from DEVICE's newest baseline with an event log: its "
           "verified Secure Boot authorities, dbx may grow, and its kernel command line with "
           "the version left free when PCR 8 is quoted. Review it, then policy set. "
           "Example: attestgate-admin policy template dev1 > policy.json",
           device_required=True).set_defaults(handler=cmd_policy_template)


def add_baseline_add_parser(bsub: Any, common: argparse.ArgumentParser) -> None:
    add = bsub.add_parser(
        "add", parents=[common], help="add a reference state ahead of an update",
        examples=["attestgate-admin baseline add dev1 --event-log boot-after-update.log",
                  "attestgate-admin baseline add dev1 --event-log next.log --pcr 16=" + "00" * 32],
        description="Add an accepted baseline before the machine boots into it: from the "
                    "event log of the new state (its replay gives the selected PCRs; the log "
                    "is kept to explain later refusals), and/or PCR values. Writes "
                    "'baseline_added'. Example: attestgate-admin baseline add dev1 "
                    "--event-log boot-after-update.log")
    add.add_argument("device", metavar="DEVICE", help="device name or id")
    add.add_argument("--event-log", metavar="FILE",
                     help="the binary measured-boot log of the new state (- for stdin)")
    add.add_argument("--pcr", action="append", metavar="INDEX=HEX",
                     help="a PCR value in the device's bank (repeat; for PCRs the log does "
                          "not describe, or without a log: every selected PCR)")
    add.set_defaults(handler=cmd_baseline_add)
