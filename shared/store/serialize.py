"""Records <-> msgpack maps, for the store. Versioned by the ``v`` field."""

from __future__ import annotations

from typing import Any

from shared.codec import Fields, pack, unpack_map
from shared.errors import AttestgateError, ErrorCode
from shared.records import Baseline, Device, DeviceStatus, Post, Token
from shared.tpm.pcrs import PcrChange

_V = 1
_BIG = 1 << 20


def _baseline_map(b: Baseline) -> dict[str, Any]:
    m: dict[str, Any] = {"sel": b.selection, "pcrs": [[i, v] for i, v in b.values]}
    if b.approved_at:
        m["at"] = b.approved_at
    if b.expires_at:
        m["exp"] = b.expires_at
    if b.log:
        m["log"] = b.log
    return m


def _baseline(m: Any) -> Baseline:
    if not isinstance(m, dict) or not isinstance(m.get("sel"), str):
        raise AttestgateError(ErrorCode.INTERNAL, "stored baseline")
    log = m.get("log", "")
    if not isinstance(log, str) or len(log) > 64:
        raise AttestgateError(ErrorCode.INTERNAL, "stored baseline log reference")
    return Baseline(m["sel"], tuple((int(i), bytes(v)) for i, v in m["pcrs"]), log=log,
                    approved_at=float(m.get("at", 0.0)), expires_at=float(m.get("exp", 0.0)))


def device_to_bytes(d: Device) -> bytes:
    return pack(
        {
            "v": _V,
            "id": d.device_id,
            "name": d.name,
            "noise": d.noise_public,
            "status": d.status.value,
            "enrolled_at": d.enrolled_at,
            "ek": d.ek_public,
            "ek_cert": d.ek_cert,
            "ek_fpr": d.ek_fingerprint,
            "ak": d.ak_public,
            "srk": d.srk_public,
            "post": d.post_public,
            "baselines": [_baseline_map(b) for b in d.baselines],
            "psk": d.psk_sealed,
            "failures": d.failures,
            "last_attest_at": d.last_attest_at,
            "reset_count": d.last_reset_count,
            "clock": d.last_clock,
            "diff": [[c.index, c.enrolled or b"", c.current or b""] for c in d.last_diff],
            "refused": _baseline_map(d.last_refused) if d.last_refused else None,
            **({"evdiff": d.last_eventlog} if d.last_eventlog else {}),
        }
    )


def device_from_bytes(data: bytes) -> Device:
    m = unpack_map(data, max_size=_BIG)
    f = Fields(m)
    try:
        return Device(
            device_id=f.text("id", 64),
            name=f.text("name", 256),
            noise_public=f.blob("noise", 32, min_len=32),
            status=DeviceStatus(f.text("status", 16)),
            enrolled_at=f.number("enrolled_at"),
            ek_public=f.blob("ek", _BIG),
            ek_cert=f.blob("ek_cert", _BIG),
            ek_fingerprint=f.text("ek_fpr", 128),
            ak_public=f.blob("ak", _BIG),
            srk_public=f.blob("srk", _BIG),
            post_public=f.blob("post", _BIG),
            baselines=tuple(_baseline(b) for b in m["baselines"]),
            psk_sealed=f.blob("psk", 1024),
            failures=f.integer("failures", 0, 1 << 31),
            last_attest_at=f.number("last_attest_at"),
            last_reset_count=f.integer("reset_count", -1, 1 << 62),
            last_clock=f.integer("clock", -1, 1 << 63),
            last_diff=tuple(PcrChange(int(i), bytes(a) or None, bytes(b) or None)
                            for i, a, b in m["diff"]),
            last_refused=_baseline(m["refused"]) if m.get("refused") else None,
            last_eventlog=f.text("evdiff", _BIG, optional=True),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise AttestgateError(ErrorCode.INTERNAL, f"stored device: {exc}") from None


def token_to_bytes(t: Token) -> bytes:
    return pack({"v": _V, "id": t.token_id, "psk": t.psk, "c": t.created_at, "e": t.expires_at})


def token_from_bytes(data: bytes) -> Token:
    f = Fields(unpack_map(data))
    return Token(f.text("id", 64), f.blob("psk", 32), f.number("c"), f.number("e"))


def post_fields(p: Post) -> dict[str, bytes | str]:
    return {
        "device": p.device_id,
        "text": p.text,
        "ts": str(p.signed_at_ms),
        "key": p.key,
        "sig": p.signature,
        "rcv": repr(p.received_at),
    }


def post_from_fields(post_id: str, m: dict[bytes, bytes]) -> Post:
    """A stored stream entry as a Post. A post stored by protocol 1 (float ``ts`` in
    seconds, an ``author`` field) still loads; its signature does not verify under v2."""
    try:
        raw_ts = m[b"ts"].decode()
        signed_at_ms = int(raw_ts) if raw_ts.isdigit() else int(float(raw_ts) * 1000)
        author = m.get(b"author")
        return Post(
            post_id=post_id,
            device_id=m[b"device"].decode(),
            text=m[b"text"].decode(),
            signed_at_ms=signed_at_ms,
            key=m[b"key"],
            signature=m[b"sig"],
            received_at=float(m.get(b"rcv", b"0")),
            stored_author=author.decode() if author is not None else None,
        )
    except (KeyError, ValueError, OverflowError, UnicodeDecodeError) as exc:
        raise AttestgateError(ErrorCode.INTERNAL, f"stored post {post_id}: {exc}") from None


def name_key(name: str) -> str:
    """The form device names are unique in: ``DEV1`` and ``dev1`` are the same name."""
    return name.casefold()
