"""PCR-bound secrets: TPM2_PolicyAuthorize under the server's secret-policy signing key.

A ``--bind-pcrs`` secret's wrapped key object has authPolicy =
PolicyAuthorize(name of the policy key, policyRef), with policyRef =
SHA-256(LABEL || device id || name || version), so a policy signed for one device's
secret is useless for another device, another secret, or another version of it.
The operator's tools sign, for every approved PCR state (baseline) of the device,
aHash = SHA-256(approvedPolicy || policyRef), where approvedPolicy is the PolicyPCR
digest of that state (TPM 2.0 Part 3, TPM2_PolicyAuthorize). Approving a new state
adds a signed policy; nothing is re-wrapped. The device runs PolicyPCR (current
PCRs), looks up the signed policy for the digest it got, has its TPM verify the
signature (TPM2_VerifySignature with the key loaded as an external public key, owner
hierarchy, for a real ticket), then PolicyAuthorize, then Unseal.

The private key lives only in the server home (``secret-policy.key``, 0600) and is
used only by ``attestgate-admin``; the workers see its public part, kept in each
bound record. It is created by ``attestgate-admin init`` or the first ``secret put
--bind-pcrs``, and never re-created while the store holds a bound secret (a new key
would make every bound secret unusable until re-put).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature

from shared.errors import AttestgateError, ErrorCode
from shared.keys import Random
from shared.tpm.constants import Alg, Curve, ObjectAttr
from shared.tpm.marshal import tpm2b, u16, u32
from shared.tpm.pcrs import PcrSelection
from shared.tpm.structures import SYM_NULL, EccParms, EccPoint, Scheme, build_public
from shared.vault import ServerKeyError

POLICY_KEY_FILE: Final = "secret-policy.key"
LABEL_POLICY_REF: Final = b"attestgate/1 secret policy ref"
CC_POLICY_PCR: Final = 0x0000017F
CC_POLICY_AUTHORIZE: Final = 0x0000016A
_P256_ORDER: Final = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _key_from(raw: bytes) -> ec.EllipticCurvePrivateKey:
    scalar = int.from_bytes(raw, "big") % (_P256_ORDER - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP256R1())


def load_policy_key(home: Path) -> ec.EllipticCurvePrivateKey:
    path = home / POLICY_KEY_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ServerKeyError(
            f"no {POLICY_KEY_FILE} in server home {home}: it is created by "
            "`attestgate-admin init` or the first `secret put --bind-pcrs`") from None
    if len(raw) != 40:
        raise ServerKeyError(f"{path} is not a 40-byte key: restore it from backup")
    return _key_from(raw)


def ensure_policy_key(home: Path, bound_secrets: Callable[[], int],
                      rng: Random = os.urandom) -> bool:
    """Create the key if missing and no bound secret depends on one; True if created.

    Raises ServerKeyError when it is missing while bound secrets exist (restore it).
    """
    if (home / POLICY_KEY_FILE).exists():
        return False
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(home / ".keys.lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if (home / POLICY_KEY_FILE).exists():
            return False
        held = bound_secrets()
        if held:
            raise ServerKeyError(
                f"server home {home} has no {POLICY_KEY_FILE}, but the store holds {held} "
                "PCR-bound secret(s) made with the old one: refusing to create a new one; "
                f"restore {POLICY_KEY_FILE} from backup (or `secret rm` and put them again)")
        out = os.open(home / POLICY_KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(out, rng(40))  # 64 bits over the order: negligible reduction bias
            os.fsync(out)
        finally:
            os.close(out)
        return True
    finally:
        os.close(fd)


def policy_public(key: ec.EllipticCurvePrivateKey) -> bytes:
    """TPM2B_PUBLIC of the key: ECC P-256, ECDSA-SHA256, sign only, nameAlg SHA-256."""
    nums = key.public_key().public_numbers()
    parms = EccParms(SYM_NULL, Scheme(Alg.ECDSA, Alg.SHA256), Curve.NIST_P256, Scheme(Alg.NULL))
    return build_public(Alg.ECC, Alg.SHA256, ObjectAttr.SIGN_ENCRYPT | ObjectAttr.USERWITHAUTH,
                        b"", parameters=parms,
                        unique=EccPoint(nums.x.to_bytes(32, "big"),
                                        nums.y.to_bytes(32, "big"))).marshal()


def policy_ref(device_id: str, name: str, version: int) -> bytes:
    """policyRef of one version of one device's secret: a signed policy is good for that
    version only, so after ``rotate`` no newly signed state opens an older blob."""
    d, n = device_id.encode(), name.encode()
    return hashlib.sha256(LABEL_POLICY_REF + u16(len(d)) + d + u16(len(n)) + n
                          + version.to_bytes(8, "big")).digest()


def authorize_policy(key_name: bytes, ref: bytes) -> bytes:
    """The authPolicy: PolicyAuthorize(key_name, ref) from a fresh session."""
    first = hashlib.sha256(b"\0" * 32 + u32(CC_POLICY_AUTHORIZE) + key_name).digest()
    return hashlib.sha256(first + ref).digest()


def pcr_policy(selection: str, values: dict[int, bytes]) -> bytes:
    """PolicyPCR's digest from a fresh session for sha256 PCR ``values`` (TPM-NOTES §5)."""
    sel = PcrSelection.parse(selection)
    indices = [i for bank in sel.banks for i in bank.indices]
    if any(b.hash_alg != Alg.SHA256 for b in sel.banks) or set(indices) != set(values):
        raise AttestgateError(ErrorCode.BAD_REQUEST, "pcr values do not match the selection")
    pcr_digest = hashlib.sha256(b"".join(values[i] for i in indices)).digest()
    return hashlib.sha256(b"\0" * 32 + u32(CC_POLICY_PCR) + sel.marshal() + pcr_digest).digest()


def sign_policy(key: ec.EllipticCurvePrivateKey, approved: bytes, ref: bytes) -> bytes:
    """TPMT_SIGNATURE (ECDSA, SHA-256) over aHash = SHA-256(approvedPolicy || policyRef)."""
    a_hash = hashlib.sha256(approved + ref).digest()
    der = key.sign(a_hash, ec.ECDSA(Prehashed(hashes.SHA256())))
    r, s = decode_dss_signature(der)
    return (u16(Alg.ECDSA) + u16(Alg.SHA256) + tpm2b(r.to_bytes(32, "big"))
            + tpm2b(s.to_bytes(32, "big")))
