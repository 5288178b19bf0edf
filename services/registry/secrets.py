"""The registry's ``secret_get``: release one part of a device's secret, wrapped to its TPM.

The gateway sends it only inside an attested session (a quote bound to the channel
was accepted at connect), with the session's device id. The device must still be
ACTIVE; the value is opened with the storage key and wrapped to the device's
certified SRK (``shared.secrets``). Every release and refusal is audited with the
name and device, never the value.
"""

from __future__ import annotations

import logging

from shared.bus.interface import Reply, Request
from shared.codec import Fields
from shared.errors import AttestgateError, ErrorCode
from shared.keys import Random
from shared.records import DeviceStatus
from shared.secrets import MAX_SECRET, NAME_RE, SecretRecord, open_record, release_part
from shared.store.interface import Store
from shared.vault import Vault

_log = logging.getLogger("attestgate.registry")

_REFUSAL = {DeviceStatus.REVOKED: ErrorCode.REVOKED, DeviceStatus.LOCKED: ErrorCode.LOCKED}


def secret_get(req: Request, store: Store, vault: Vault, rng: Random, now: float) -> Reply:
    f = Fields(req.body)
    device_id = f.text("device_id", 64)
    name = f.text("name", 64)
    offset = f.integer("offset", 0, MAX_SECRET, default=0)

    def refuse(code: ErrorCode, why: str) -> Reply:
        store.append_audit("secret_refused", device_id, {"name": name, "code": code.value}, now)
        _log.info("secret refused device=%s name=%s code=%s (%s)", device_id, name, code, why)
        return Reply.failure(req.id, code)

    if not NAME_RE.fullmatch(name):
        return refuse(ErrorCode.INVALID_NAME, "name")
    device = store.get_device(device_id)
    if device is None:
        return refuse(ErrorCode.UNKNOWN_DEVICE, "no device")
    if device.status is not DeviceStatus.ACTIVE:
        return refuse(_REFUSAL.get(device.status, ErrorCode.REENROLL_REQUIRED), "status")
    raw = store.get_secret(device_id, name)
    if raw is None:
        return refuse(ErrorCode.NOT_FOUND, "no such secret")
    record = SecretRecord.from_bytes(raw)
    if offset >= record.size:
        return refuse(ErrorCode.BAD_REQUEST, "offset")
    value = open_record(vault, device_id, record)
    try:
        part = release_part(device.srk_public, device_id, record, value, offset, rng)
    except AttestgateError as exc:
        return refuse(exc.code, exc.detail)
    store.append_audit("secret_released", device_id,
                       {"name": name, "version": record.version, "offset": offset,
                        "size": record.size}, now)
    _log.info("secret released device=%s name=%s version=%d offset=%d", device_id, name,
              record.version, offset)
    return Reply(req.id, part.to_body())
