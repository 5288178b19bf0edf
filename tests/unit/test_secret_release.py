"""Secret records, release parts and the registry's secret_get, without a TPM.

That only the device's TPM opens a part is proved against swtpm in
tests/integration/test_secret_release_stack.py; here: sealing at rest, sizes, parsing, refusals
and their audit entries.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest
from device_builders import NOW, VAULT_KEY, make_device

from services.registry.handler import RegistryDeps, handle
from shared.bus.interface import Reply, Request
from shared.codec import pack
from shared.errors import AttestgateError, ErrorCode
from shared.records import DeviceStatus
from shared.secret_policy import (
    POLICY_KEY_FILE,
    ensure_policy_key,
    load_policy_key,
    pcr_policy,
    policy_public,
    sign_policy,
)
from shared.secrets import (
    MAX_SECRET,
    PART_LEN,
    Part,
    SecretRecord,
    check_value,
    open_record,
    release_part,
    seal_record,
)
from shared.store.memory import MemoryStore
from shared.tpm.constants import Alg, Curve, ObjectAttr
from shared.tpm.structures import AES128_CFB, SCHEME_NULL, EccParms, EccPoint, build_public
from shared.vault import ServerKeyError, Vault
from shared.wire import MAX_MESSAGE, REPLY_ENVELOPE_RESERVE

from tpm_builders import new_key  # isort: skip

VAULT = Vault(VAULT_KEY)
SRK_ATTRS = (ObjectAttr.FIXEDTPM | ObjectAttr.FIXEDPARENT | ObjectAttr.SENSITIVEDATAORIGIN
             | ObjectAttr.USERWITHAUTH | ObjectAttr.RESTRICTED | ObjectAttr.DECRYPT)


def srk_public() -> bytes:
    nums = new_key().public_key().public_numbers()
    return build_public(Alg.ECC, Alg.SHA256, SRK_ATTRS, b"",
                        parameters=EccParms(AES128_CFB, SCHEME_NULL, Curve.NIST_P256,
                                            SCHEME_NULL),
                        unique=EccPoint(nums.x.to_bytes(32, "big"),
                                        nums.y.to_bytes(32, "big"))).marshal()


def test_record_round_trip_and_value_bound_to_device_name_version() -> None:
    value = os.urandom(100)
    rec = seal_record(VAULT, "dev-a", "api-key", value, NOW, os.urandom)
    assert value not in rec.to_bytes()
    again = SecretRecord.from_bytes(rec.to_bytes())
    assert again == rec
    assert open_record(VAULT, "dev-a", again) == value
    for other in (dataclasses.replace(rec, name="other"), dataclasses.replace(rec, version=2)):
        with pytest.raises(AttestgateError):
            open_record(VAULT, "dev-a", other)
    with pytest.raises(AttestgateError):
        open_record(VAULT, "dev-b", rec)
    rotated = seal_record(VAULT, "dev-a", "api-key", b"new", NOW + 1, os.urandom, rec)
    assert (rotated.version, rotated.created_at, rotated.updated_at) == (2, NOW, NOW + 1)
    assert open_record(VAULT, "dev-a", rotated) == b"new"


def test_size_limits() -> None:
    assert len(check_value(b"x" * MAX_SECRET)) == MAX_SECRET
    with pytest.raises(AttestgateError) as exc:
        check_value(b"x" * (MAX_SECRET + 1))
    assert exc.value.code is ErrorCode.TOO_LARGE
    with pytest.raises(AttestgateError) as exc:
        check_value(b"")
    assert exc.value.code is ErrorCode.BAD_REQUEST


def test_a_full_size_secret_travels_in_parts_that_fit_one_channel_message() -> None:
    value = os.urandom(MAX_SECRET)
    rec = seal_record(VAULT, "dev-a", "big", value, NOW, os.urandom)
    srk = srk_public()
    offsets = range(0, MAX_SECRET, PART_LEN)
    assert list(offsets) == [0, PART_LEN]
    for offset in offsets:
        part = release_part(srk, "dev-a", rec, value, offset, os.urandom)
        reply = pack({"re": 2**63 - 1, "ok": True, **part.to_body()})
        assert len(reply) <= MAX_MESSAGE - REPLY_ENVELOPE_RESERVE
        assert Part.from_body(part.to_body()) == part
        assert value[offset:offset + 32] not in reply


def test_part_parser_refuses_inconsistent_parts() -> None:
    value = os.urandom(1000)
    rec = seal_record(VAULT, "dev-a", "s", value, NOW, os.urandom)
    body: dict[str, Any] = release_part(srk_public(), "dev-a", rec, value, 0,
                                        os.urandom).to_body()
    for change in ({"offset": 1}, {"total": 999}, {"ciphertext": b"x" * 17},
                   {"nonce": b"n"}, {"policies": [[b"x", b"y"]]}, {"selection": "sha256:16"}):
        with pytest.raises(AttestgateError) as exc:
            Part.from_body({**body, **change})
        assert exc.value.code is ErrorCode.BAD_REQUEST, change


# -- the registry's secret_get -------------------------------------------------------------------


def _deps(store: MemoryStore) -> RegistryDeps:
    return RegistryDeps(store, VAULT, False)


def _get(store: MemoryStore, device_id: str, name: str, offset: int = 0) -> Reply:
    body = {"device_id": device_id, "name": name, "offset": offset}
    return handle(Request("r1", "registry", "secret_get", body, NOW + 5), _deps(store), NOW)


def _events(store: MemoryStore) -> list[tuple[str, dict[str, Any]]]:
    return [(e.event, json.loads(e.detail)) for e in store.read_audit()]


def _stored(status: DeviceStatus = DeviceStatus.ACTIVE) -> tuple[MemoryStore, str, bytes]:
    store = MemoryStore()
    dev = make_device(status=status)
    record = dataclasses.replace(dev.record, srk_public=srk_public())
    store.create_device(record, None)
    value = os.urandom(70)
    rec = seal_record(VAULT, dev.device_id, "disk-key", value, NOW, os.urandom)
    store.put_secret(dev.device_id, "disk-key", rec.to_bytes())
    return store, dev.device_id, value


def test_release_is_audited_without_the_value() -> None:
    store, device_id, value = _stored()
    reply = _get(store, device_id, "disk-key")
    assert reply.ok
    part = Part.from_body(reply.body)
    assert (part.version, part.offset, part.total, part.selection) == (1, 0, 70, "")
    assert _events(store) == [("secret_released", {"name": "disk-key", "version": 1,
                                                   "offset": 0, "size": 70})]
    assert value.hex() not in json.dumps(_events(store))


@pytest.mark.parametrize(("status", "code"), [(DeviceStatus.REVOKED, ErrorCode.REVOKED),
                                              (DeviceStatus.LOCKED, ErrorCode.LOCKED),
                                              (DeviceStatus.REENROLL,
                                               ErrorCode.REENROLL_REQUIRED)])
def test_a_device_not_active_gets_nothing(status: DeviceStatus, code: ErrorCode) -> None:
    store, device_id, _ = _stored(status)
    reply = _get(store, device_id, "disk-key")
    assert (reply.ok, reply.error, reply.body) == (False, code, {})
    assert _events(store) == [("secret_refused", {"name": "disk-key", "code": code.value})]


def test_unknown_secret_device_name_and_offset_are_refused() -> None:
    store, device_id, _ = _stored()
    assert _get(store, device_id, "nope").error is ErrorCode.NOT_FOUND
    assert _get(store, "unknown", "disk-key").error is ErrorCode.UNKNOWN_DEVICE
    assert _get(store, device_id, "../x").error is ErrorCode.INVALID_NAME
    assert _get(store, device_id, "disk-key", offset=PART_LEN).error is ErrorCode.BAD_REQUEST
    assert [e for e, _ in _events(store)] == ["secret_refused"] * 4


def test_bound_record_releases_its_signed_policies(tmp_path: Path) -> None:
    store, device_id, _ = _stored()
    assert ensure_policy_key(tmp_path, lambda: 0)
    key = load_policy_key(tmp_path)
    values = {0: b"\x00" * 32, 16: b"\x16" * 32}
    digest = pcr_policy("sha256:0,16", values)
    policies = ((digest, sign_policy(key, digest, b"r" * 32)),)
    rec = SecretRecord.from_bytes(store.get_secret(device_id, "disk-key") or b"")
    store.put_secret(device_id, "disk-key", dataclasses.replace(
        rec, selection="sha256:0,16", policy_public=policy_public(key),
        policies=policies).to_bytes())
    part = Part.from_body(_get(store, device_id, "disk-key").body)
    assert (part.selection, part.policies) == ("sha256:0,16", policies)


# -- the secret-policy key is never re-created -----------------------------------------------------


def test_policy_key_created_once_and_never_over_bound_secrets(tmp_path: Path) -> None:
    assert ensure_policy_key(tmp_path, lambda: 0)
    first = (tmp_path / POLICY_KEY_FILE).read_bytes()
    assert oct((tmp_path / POLICY_KEY_FILE).stat().st_mode & 0o777) == "0o600"
    assert not ensure_policy_key(tmp_path, lambda: 0)
    assert (tmp_path / POLICY_KEY_FILE).read_bytes() == first
    (tmp_path / POLICY_KEY_FILE).unlink()
    with pytest.raises(ServerKeyError, match="restore"):
        ensure_policy_key(tmp_path, lambda: 3)
    assert not (tmp_path / POLICY_KEY_FILE).exists()
