"""Domain records for the handler tests: devices with real keys, a fixed vault key."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ec
from tpm_builders import ak_public, new_key, post_key_public

from shared.keys import StaticKey, device_id_for
from shared.records import Baseline, Device, DeviceStatus
from shared.vault import Vault

SELECTION = "sha256:0,1,2,3,4,5,6,7"
VAULT_KEY = b"\x11" * 32
NOW = 1_700_000_000.0


def pcr_values(seed: bytes = b"boot") -> dict[int, bytes]:
    return {i: hashlib.sha256(seed + bytes([i])).digest() for i in range(8)}


@dataclass
class TestDevice:
    """A device record plus the private keys a real TPM would hold."""

    record: Device
    noise: StaticKey
    post_key: ec.EllipticCurvePrivateKey
    ak: ec.EllipticCurvePrivateKey
    device_psk: bytes
    pcrs: dict[int, bytes] = field(default_factory=dict)

    __test__ = False  # not a pytest test class

    @property
    def device_id(self) -> str:
        return self.record.device_id


def make_device(
    name: str = "dev1",
    *,
    vault: Vault | None = None,
    status: DeviceStatus = DeviceStatus.ACTIVE,
    baselines: tuple[dict[int, bytes], ...] | None = None,
    device_psk: bytes = b"\x42" * 32,
) -> TestDevice:
    vault = vault or Vault(VAULT_KEY)
    noise = StaticKey.generate()
    device_id = device_id_for(noise.public)
    post_key, ak = new_key(), new_key()
    values = baselines or (pcr_values(),)
    record = Device(
        device_id=device_id,
        name=name,
        noise_public=noise.public,
        status=status,
        enrolled_at=NOW - 86_400,
        ek_public=b"ek-public-" + name.encode(),
        ek_cert=b"",
        ek_fingerprint=hashlib.sha256(b"ek" + noise.public).hexdigest(),
        ak_public=ak_public(ak),
        srk_public=b"srk",
        post_public=post_key_public(post_key),
        baselines=tuple(Baseline.of(SELECTION, v) for v in values),
        psk_sealed=vault.seal(device_psk, device_id),
    )
    return TestDevice(record, noise, post_key, ak, device_psk, dict(values[0]))
