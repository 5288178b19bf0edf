"""The registry: enrollment tokens, device records and the reconnect lookup. Pure handler.

* ``token_psk`` — the enrollment PSK for a token id ("" = open enrollment);
* ``connect``   — after IKpsk2 message 1: the device behind a Noise static key,
  its session PSK for these ephemerals, and its status; refuses a replayed
  message 1 (timestamp not newer than the last one);
* ``token_failed`` — the gateway saw a handshake fail under a token's PSK (a wrong
  secret): count it and audit ``token_failed``; at ``token_max_failures`` the token
  is burned (deleted, audited ``token_burned``) and refuses even the right secret;
* ``register``  — store a device whose enrollment the attestor has verified;
* ``status``    — a device's own view of its record;
* ``list_devices``, ``show_device`` — read-only operator views (the web console);
* ``secret_get`` — one part of a secret, wrapped to the device's TPM (``secrets``).
"""

from __future__ import annotations

import hmac
import logging
import os
from dataclasses import dataclass
from typing import Any, Final

from services.registry import admin_output
from services.registry.secrets import secret_get
from shared.bus.interface import BusEvent, Reply, Request
from shared.codec import Fields, fill
from shared.errors import AttestgateError, ErrorCode
from shared.handlers import Op, dispatch
from shared.keys import Random, device_id_for, enroll_psk, session_psk
from shared.records import Device, DeviceStatus, status_view
from shared.store.interface import PENDING_ENROLLED, Store
from shared.store.serialize import device_from_bytes
from shared.tpm.pcrs import diff_view
from shared.vault import Vault
from shared.wire import DH_LEN, MAX_BUS_MESSAGE, REPLY_ENVELOPE_RESERVE, TOKEN_ID_LEN, Event

_log = logging.getLogger("attestgate.registry")
LIST_BUDGET: Final = MAX_BUS_MESSAGE - REPLY_ENVELOPE_RESERVE  # list_devices rows, encoded

TOKEN_MAX_FAILURES = 10  # wrong-secret handshakes before a token is burned (configurable)

@dataclass(frozen=True)
class RegistryDeps:
    store: Store
    vault: Vault
    open_enrollment: bool
    token_max_failures: int = TOKEN_MAX_FAILURES
    rng: Random = os.urandom


def _token_psk(req: Request, deps: RegistryDeps, now: float) -> Reply:
    token_id = Fields(req.body).text("token_id", 2 * TOKEN_ID_LEN, optional=True)
    if not token_id:
        if not deps.open_enrollment:
            raise AttestgateError(ErrorCode.BAD_TOKEN, "open enrollment is off")
        return Reply(req.id, {"psk": enroll_psk(b"").value})
    token = deps.store.get_token(token_id, now)
    if token is None:
        raise AttestgateError(ErrorCode.BAD_TOKEN, f"token {token_id} unknown or expired")
    return Reply(req.id, {"psk": token.psk})


def _token_failed(req: Request, deps: RegistryDeps, now: float) -> Reply:
    token_id = Fields(req.body).text("token_id", 2 * TOKEN_ID_LEN)
    token = deps.store.get_token(token_id, now)
    if token is None:
        raise AttestgateError(ErrorCode.BAD_TOKEN, f"token {token_id} gone (already burned?)")
    failures = deps.store.count_token_failure(token_id, token.expires_at)
    deps.store.append_audit("token_failed", "", {"token_id": token_id, "failures": failures}, now)
    burned = failures >= deps.token_max_failures and deps.store.burn_token(token_id)
    if burned:
        deps.store.append_audit("token_burned", "", {"token_id": token_id, "failures": failures},
                                now)
        _log.warning("token burned after %d failed handshakes token=%s", failures, token_id)
    return Reply(req.id, {"failures": failures, "burned": burned})


def _connect(req: Request, deps: RegistryDeps, now: float) -> Reply:
    f = Fields(req.body)
    noise_public = f.blob("noise_public", DH_LEN, min_len=DH_LEN)
    e_i = f.blob("e_i", DH_LEN, min_len=DH_LEN)
    e_r = f.blob("e_r", DH_LEN, min_len=DH_LEN)
    ts = f.integer("ts", 0, 2**63 - 1)
    found = deps.store.connect_lookup(noise_public)
    if found is None:
        raise AttestgateError(ErrorCode.UNKNOWN_DEVICE, noise_public.hex()[:16])
    device, last_ts = found
    # Only checked here, never recorded: message 1 proves the Noise key, not the TPM, and
    # whoever stole the key can send it. The attestor records the timestamp once the first
    # transport message proved the TPM (key confirmation). So this lookup changes nothing
    # and a retry of it on another worker is safe; a message 1 replayed before its session
    # confirmed gets message 2, which only the device's TPM can answer.
    if ts <= last_ts:
        raise AttestgateError(ErrorCode.PROTOCOL, f"replayed message 1 device={device.device_id}")
    device_psk = deps.vault.unseal(device.psk_sealed, device.device_id)
    psk = session_psk(device_psk, e_i, e_r)
    return Reply(
        req.id,
        {"device_id": device.device_id, "name": device.name, "status": device.status.value,
         "psk": psk.value},
    )


def _register(req: Request, deps: RegistryDeps, now: float) -> Reply:
    f = Fields(req.body)
    key = f.text("h", 64)
    token_id = f.text("token_id", 2 * TOKEN_ID_LEN, optional=True) or None
    raw = deps.store.take_pending(PENDING_ENROLLED + key)
    if raw is None:
        raise AttestgateError(ErrorCode.PROTOCOL, "no verified enrollment for this session")
    device = device_from_bytes(raw)
    if not hmac.compare_digest(device.device_id, device_id_for(device.noise_public)):
        raise AttestgateError(ErrorCode.INTERNAL, "device id does not match its key")
    # The same TPM enrolling again while its old record is in REENROLL replaces it.
    old = deps.store.device_by_ek(device.ek_fingerprint)
    replaces = old if old is not None and old.status is DeviceStatus.REENROLL else None
    deps.store.create_device(device, token_id, replaces.device_id if replaces else None)
    detail = {"name": device.name, "ek": device.ek_fingerprint, "token": token_id or "",
              "selection": device.baselines[0].selection}
    if replaces is None:
        deps.store.append_audit("enrolled", device.device_id, detail, now)
        _log.info("enrolled device=%s name=%s ek=%s", device.device_id, device.name,
                  device.ek_fingerprint[:16])
        return Reply(req.id, {"device_id": device.device_id})
    deps.store.append_audit("reenrolled", device.device_id,
                            {**detail, "replaces": replaces.device_id,
                             "old_name": replaces.name}, now)
    _log.info("re-enrolled device=%s name=%s replaces=%s", device.device_id, device.name,
              replaces.device_id)
    # Sessions still open under the old id close (the gateways treat it as revoked).
    closed = BusEvent(Event.DEVICE_REVOKED.value, {"device_id": replaces.device_id})
    return Reply(req.id, {"device_id": device.device_id}, events=(closed,))


def _status(req: Request, deps: RegistryDeps, now: float) -> Reply:
    device_id = Fields(req.body).text("device_id", 64)
    device = deps.store.get_device(device_id)
    if device is None:
        raise AttestgateError(ErrorCode.UNKNOWN_DEVICE, device_id)
    return Reply(req.id, status_view(device))


# -- read-only operator views (services/console) -----------------------------------------
# What `attestgate-admin devices` and `show` print, for a reader that must not touch Redis.
# Never a secret: no PSK (sealed or not), no key material beyond public-key facts.


def _device_row(d: Device) -> dict[str, Any]:
    return {**status_view(d), "last_diff": diff_view(d.last_diff),
            "refused_state": d.last_refused is not None}


def _list_devices(req: Request, deps: RegistryDeps, now: float) -> Reply:
    status = Fields(req.body).text("status", 16, optional=True)
    devices = sorted(deps.store.list_devices(), key=lambda d: (d.name.casefold(), d.device_id))
    rows, more = fill((_device_row(d) for d in devices if not status or d.status.value == status),
                      LIST_BUDGET)
    return Reply(req.id, {"devices": rows, "more": more})


def _show_device(req: Request, deps: RegistryDeps, now: float) -> Reply:
    ref = Fields(req.body).text("device", 128)
    device = deps.store.get_device(ref) or deps.store.device_by_name(ref)
    if device is None:
        raise AttestgateError(ErrorCode.UNKNOWN_DEVICE, ref)
    return Reply(req.id, {**admin_output.device_detail(device),
                          "enrolled_ts": device.enrolled_at,
                          "last_attest_ts": device.last_attest_at})


_OPS: dict[str, Op[RegistryDeps]] = {
    "token_psk": _token_psk,
    "token_failed": _token_failed,
    "connect": _connect,
    "register": _register,
    "status": _status,
    "list_devices": _list_devices,
    "show_device": _show_device,
    "secret_get": lambda req, deps, now: secret_get(req, deps.store, deps.vault, deps.rng, now),
}


def handle(request: Request, deps: RegistryDeps, now: float) -> Reply:
    return dispatch(_OPS, request, deps, now, _log)
