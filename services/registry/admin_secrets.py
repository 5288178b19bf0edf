"""``attestgate-admin secret put|list|rm|rotate``: secrets released to attested devices.

Values are read from ``--file F`` or ``-`` (stdin), at most ``shared.secrets.MAX_SECRET``
bytes, and stored only sealed under the storage key (``shared.secrets``); nothing here
ever prints or logs a value. Every change writes an audit entry (name, device,
version, size).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

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
from shared.records import Device, DeviceStatus
from shared.secret_policy import (
    POLICY_KEY_FILE,
    ensure_policy_key,
    load_policy_key,
    pcr_policy,
    policy_public,
    policy_ref,
    sign_policy,
)
from shared.secrets import MAX_POLICIES, MAX_SECRET, NAME_RE, SecretRecord, seal_record
from shared.vault import ServerKeyError, Vault


def _vault(ctx: Context) -> Vault:
    try:
        return Vault.open(ctx.config.server_home)
    except ServerKeyError as exc:
        raise AdminError(EXIT_REFUSED, "no_storage_key", exc.message) from None


def _name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise AdminError(EXIT_USAGE, ErrorCode.INVALID_NAME.value,
                         f"secret name {name[:64]!r}: 1-64 of A-Z a-z 0-9 . _ - "
                         "(starting with a letter or digit)")
    return name


def _read_value(source: str | None) -> bytes:
    if source is None:
        raise AdminError(EXIT_USAGE, ErrorCode.BAD_REQUEST.value,
                         "give the value with --file FILE or - (stdin)")
    data = read_source(source, MAX_SECRET, "secret")
    if not data:
        raise AdminError(EXIT_USAGE, ErrorCode.BAD_REQUEST.value, "the secret is empty")
    return data


def _split(args: argparse.Namespace) -> tuple[str | None, str, str | None]:
    """(device or None with --all, name, value source) from ``put``/``rotate`` arguments."""
    words = list(args.words)
    source = args.file
    if words and words[-1] == "-" and len(words) == (2 if args.all else 3):
        if source is not None:
            raise AdminError(EXIT_USAGE, ErrorCode.BAD_REQUEST.value, "give --file or -, not both")
        source = words.pop()
    if len(words) != (1 if args.all else 2):
        raise AdminError(EXIT_USAGE, ErrorCode.BAD_REQUEST.value,
                         "usage: secret put|rotate (DEVICE | --all) NAME [--file FILE | -]")
    device = None if args.all else words[0]
    return device, _name(words[-1]), source


def _targets(ctx: Context, device: str | None) -> list[Device]:
    if device is not None:
        return [_device(ctx, device)]
    return [d for d in ctx.store.list_devices() if d.status is DeviceStatus.ACTIVE]


def _row(d: Device, r: SecretRecord) -> dict[str, Any]:
    return {"device_id": d.device_id, "device": d.name, "name": r.name, "version": r.version,
            "size": r.size, "created": out.iso(r.created_at), "updated": out.iso(r.updated_at),
            "bind_pcrs": r.selection, "policies": len(r.policies)}


# -- PCR binding (shared.secret_policy) ----------------------------------------------------------


def _bound_count(ctx: Context) -> int:
    return sum(1 for d in ctx.store.list_devices()
               for raw in ctx.store.list_secrets(d.device_id).values()
               if SecretRecord.from_bytes(raw).selection)


def init_policy_key(ctx: Context, *, store_optional: bool = False) -> tuple[str, ...]:
    """Create the secret-policy key if missing and nothing depends on it; returns the file
    created, if any. With ``store_optional`` (``init``), a store that cannot be asked only
    postpones it (to the first ``secret put --bind-pcrs``) with a warning."""
    try:
        created = ensure_policy_key(ctx.config.server_home, lambda: _bound_count(ctx),
                                    ctx.rng)
        return (POLICY_KEY_FILE,) if created else ()
    except ServerKeyError as exc:
        raise AdminError(EXIT_REFUSED, "keys_lost", exc.message) from None
    except AttestgateError as exc:
        if not store_optional or exc.code is not ErrorCode.STORE_UNAVAILABLE:
            raise
        ctx.warn(f"{POLICY_KEY_FILE} not created: the store cannot say whether PCR-bound "
                 "secrets depend on an old one; the first `secret put --bind-pcrs` creates it")
        return ()


def _signed_policies(ctx: Context, d: Device, record: SecretRecord, selection: str,
                     known: tuple[tuple[bytes, bytes], ...] = ()
                     ) -> tuple[tuple[bytes, bytes], ...]:
    """One signed PolicyPCR per approved baseline of ``d`` now, for this version of the
    secret: signatures in ``known`` are reused, states no longer approved are dropped (a
    device that cached one keeps it: a signature cannot be withdrawn offline)."""
    try:
        key = load_policy_key(ctx.config.server_home)
    except ServerKeyError as exc:
        raise AdminError(EXIT_REFUSED, "no_policy_key", exc.message) from None
    ref = policy_ref(d.device_id, record.name, record.version)
    signed = dict(known)
    policies: dict[bytes, bytes] = {}
    for b in d.baselines:
        if b.selection != selection:
            continue
        digest = pcr_policy(b.selection, b.as_dict())
        policies[digest] = signed.get(digest) or sign_policy(key, digest, ref)
    return tuple(policies.items())[-MAX_POLICIES:]


def _bind(ctx: Context, d: Device, record: SecretRecord, selection: str) -> SecretRecord:
    """``record`` bound to ``selection``, signed for every approved state of this version
    (a rotated bound secret is signed afresh: older signatures name the old version)."""
    key = load_policy_key(ctx.config.server_home)
    return dataclasses.replace(record, selection=selection,
                               policy_public=policy_public(key),
                               policies=_signed_policies(ctx, d, record, selection))


def after_approve(ctx: Context, d: Device) -> list[str]:
    """Sign the device's newly approved PCR state for each of its bound secrets (``approve``);
    returns their names. Nothing is re-wrapped: the device fetches the new signed policy
    with its next ``secret get``."""
    names = []
    for name, raw in sorted(ctx.store.list_secrets(d.device_id).items()):
        record = SecretRecord.from_bytes(raw)
        if not record.selection:
            continue
        policies = _signed_policies(ctx, d, record, record.selection, record.policies)
        if policies != record.policies:
            ctx.store.put_secret(d.device_id, name,
                                 dataclasses.replace(record, policies=policies).to_bytes())
            ctx.store.append_audit("secret_policy_signed", d.device_id,
                                   {"name": name, "policies": len(policies)}, ctx.now)
            names.append(name)
    return names


def _change(args: argparse.Namespace, ctx: Context, rotate: bool) -> Outcome:
    ctx.audit_key()  # refuse before changing anything if no entry can be written
    device_ref, name, source = _split(args)
    vault = _vault(ctx)
    value = _read_value(source)
    bind = bool(getattr(args, "bind_pcrs", False))
    if bind:
        init_policy_key(ctx)
    targets = _targets(ctx, device_ref)
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    for d in targets:
        raw = ctx.store.get_secret(d.device_id, name)
        previous = SecretRecord.from_bytes(raw) if raw is not None else None
        if rotate == (previous is None):  # rotate needs one, put needs none
            if device_ref is not None:
                code, words = ((ErrorCode.NOT_FOUND.value, "has no secret") if rotate
                               else ("exists", "already has a secret"))
                raise AdminError(EXIT_REFUSED, code,
                                 f"device {_label(d)} {words} named {name!r}"
                                 + ("" if rotate else "; use `secret rotate`"))
            skipped.append(d.name)
            continue
        try:
            record = seal_record(vault, d.device_id, name, value, ctx.now, ctx.rng, previous)
        except AttestgateError as exc:
            raise AdminError(EXIT_USAGE, exc.code.value, exc.detail) from None
        if bind:
            record = _bind(ctx, d, record, d.baselines[-1].selection)
        elif record.selection:  # rotating a bound secret
            record = _bind(ctx, d, record, record.selection)
        ctx.store.put_secret(d.device_id, name, record.to_bytes())
        ctx.store.append_audit("secret_rotated" if rotate else "secret_put", d.device_id,
                               {"name": name, "version": record.version, "size": record.size,
                                "bind_pcrs": record.selection}, ctx.now)
        rows.append(_row(d, record))
    verb = "rotated" if rotate else "stored"
    text = "\n".join(f"{verb} secret {r['name']!r} for {r['device']} ({r['device_id']}): "
                     f"version {r['version']}, {r['size']} bytes" for r in rows)
    if skipped:
        text += ("\n" if text else "") + (
            f"skipped {len(skipped)} device(s) " +
            ("without" if rotate else "already holding") + f" {name!r}: {', '.join(skipped)}")
    if not rows and not skipped:
        text = "no active device"
    return Outcome({"secrets": rows, "skipped": skipped}, text)


def cmd_put(args: argparse.Namespace, ctx: Context) -> Outcome:
    return _change(args, ctx, rotate=False)


def cmd_rotate(args: argparse.Namespace, ctx: Context) -> Outcome:
    return _change(args, ctx, rotate=True)


def cmd_list(args: argparse.Namespace, ctx: Context) -> Outcome:
    devices = [_device(ctx, args.device)] if args.device else ctx.store.list_devices()
    rows = []
    for d in devices:
        records = ctx.store.list_secrets(d.device_id)
        rows += [_row(d, SecretRecord.from_bytes(records[n])) for n in sorted(records)]
    text = out.table(("DEVICE", "NAME", "VERSION", "SIZE", "BOUND TO", "UPDATED (UTC)"),
                     [(r["device"], r["name"], r["version"], r["size"], r["bind_pcrs"] or "-",
                       r["updated"]) for r in rows]) if rows else "no secrets"
    return Outcome({"secrets": rows}, text)


def cmd_rm(args: argparse.Namespace, ctx: Context) -> Outcome:
    ctx.audit_key()
    d = _device(ctx, args.device)
    name = _name(args.name)
    raw = ctx.store.get_secret(d.device_id, name)
    if raw is None or not ctx.store.delete_secret(d.device_id, name):
        raise AdminError(EXIT_REFUSED, ErrorCode.NOT_FOUND.value,
                         f"device {_label(d)} has no secret named {name!r}")
    version = SecretRecord.from_bytes(raw).version
    ctx.store.append_audit("secret_removed", d.device_id, {"name": name, "version": version},
                           ctx.now)
    return Outcome({"device_id": d.device_id, "name": name, "version": version},
                   f"removed secret {name!r} (version {version}) of {_label(d)}")


_PUT_HELP = ("Store a secret for DEVICE (name or id), or with --all for every ACTIVE device, "
             f"read from --file FILE or - (stdin), 1 to {MAX_SECRET} bytes. It is kept in Redis "
             "only AES-256-GCM-encrypted under the storage key and released only to that "
             "device's TPM inside an attested session (`attestgate secret get`). Refused "
             "(exit 3) if the device already has a secret of that name: use rotate. Writes a "
             "'secret_put' audit entry (name, version, size; never the value).")
_ROTATE_HELP = ("Replace a secret's value (from --file FILE or -) and bump its version; blobs "
                "released earlier cannot stand in for the new version. Writes 'secret_rotated'.")


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``secret`` and its actions to the top-level subparsers ``sub``."""
    secret = sub.add_parser("secret", help="secrets released only to an attested device's TPM",
                            description="Manage secrets released to attested devices "
                                        "(see docs/secrets.md).")
    ssub = secret.add_subparsers(dest="secret_command", required=True, metavar="ACTION")
    for action, handler, help_, desc in (
            ("put", cmd_put, "store a new secret for a device (or --all)", _PUT_HELP),
            ("rotate", cmd_rotate, "replace a secret's value, bumping its version", _ROTATE_HELP)):
        p = ssub.add_parser(action, parents=[common], help=help_, description=desc)
        p.add_argument("words", nargs="+", metavar="DEVICE NAME [-]",
                       help="device name or id (not with --all), secret name, - for stdin")
        p.add_argument("--all", action="store_true", help="every ACTIVE device")
        p.add_argument("--file", metavar="FILE", help="read the value from FILE")
        p.set_defaults(handler=handler)
        if action == "put":
            p.add_argument("--bind-pcrs", action="store_true",
                           help="the device's TPM unseals it only in a PCR state the operator "
                                "approved (signed with " + POLICY_KEY_FILE + "; `approve` "
                                "signs new states)")
    lst = ssub.add_parser("list", parents=[common], help="list secrets (never values)",
                          description="List secrets: device, name, version, size, times. "
                                      "Never shows a value. Read-only.")
    lst.add_argument("device", nargs="?", metavar="DEVICE", help="only this device's")
    lst.set_defaults(handler=cmd_list)
    rm = ssub.add_parser("rm", parents=[common], help="delete a secret",
                         description="Delete a device's secret; writes 'secret_removed'. A "
                                     "value the device already unsealed stays with it.")
    rm.add_argument("device", metavar="DEVICE")
    rm.add_argument("name", metavar="NAME")
    rm.set_defaults(handler=cmd_rm)
