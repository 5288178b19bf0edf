"""Records <-> msgpack maps, for the store. Versioned by the ``v`` field."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from shared.codec import Fields, pack, refuse_ext, unpack_map
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
            **_state(m),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise AttestgateError(ErrorCode.INTERNAL, f"stored device: {exc}") from None


# The fields an attestation rewrites, under their record keys; device_to_bytes writes
# them last, after every field a connect needs (id, name, Noise key, status, PSK).
_STATE_KEYS: Final = frozenset({"failures", "last_attest_at", "reset_count", "clock", "diff",
                                "refused", "evdiff"})
_FIRST_STATE_KEY: Final = "failures"


def _state(m: dict[str, Any]) -> dict[str, Any]:
    """The Device fields read from ``_STATE_KEYS`` (callers map the exceptions)."""
    f = Fields(m)
    return {
        "failures": f.integer("failures", 0, 1 << 31),
        "last_attest_at": f.number("last_attest_at"),
        "last_reset_count": f.integer("reset_count", -1, 1 << 62),
        "last_clock": f.integer("clock", -1, 1 << 63),
        "last_diff": tuple(PcrChange(int(i), bytes(a) or None, bytes(b) or None)
                           for i, a, b in m["diff"]),
        "last_refused": _baseline(m["refused"]) if m.get("refused") else None,
        "last_eventlog": f.text("evdiff", _BIG, optional=True),
    }


def _with_state(device: Device, state: dict[str, Any]) -> Device:
    """``device`` with the fields of ``_state`` replaced. ``dataclasses.replace`` goes
    through the frozen ``__init__`` (an ``object.__setattr__`` per field: 6 us of the 11 us
    this path took); Device has no ``__post_init__`` and no slots, so copying its fields
    is the same record (the tests compare with ``device_from_bytes``)."""
    new = object.__new__(Device)
    fields = new.__dict__
    fields.update(device.__dict__)
    fields.update(state)
    return new


def _unpacker() -> msgpack.Unpacker:
    """An incremental reader with unpack_map's limits for a device record."""
    return msgpack.Unpacker(raw=False, strict_map_key=True, max_buffer_size=_BIG,
                            max_str_len=_BIG, max_bin_len=_BIG, max_array_len=1024,
                            max_map_len=256, max_ext_len=0, ext_hook=refuse_ext)


@dataclass(frozen=True)
class _Known:
    raw: bytes  # the record as read (or written)
    device: Device  # device_from_bytes(raw)
    stable: int  # raw[:stable]: map header + every pair before the state; 0 = none,
    # -1 = not worked out yet (what this process wrote: its next read is mostly the same)
    state_pairs: int  # pairs after that


def _split(raw: bytes) -> tuple[int, int]:
    """(length of the part before the state fields, pairs after it), or (0, 0) when the
    record is not laid out as device_to_bytes writes it (then nothing is reused): every
    key before ``failures`` a record key, every one from it on a state key, once."""
    u = _unpacker()
    u.feed(raw)
    stable, seen = 0, set()
    try:
        pairs = u.read_map_header()
        for _ in range(pairs):
            at = u.tell()
            key = u.unpack()
            if key == _FIRST_STATE_KEY and not stable:
                stable = at
            if (key in _STATE_KEYS) != bool(stable) or key in seen:
                return 0, 0
            if stable:
                seen.add(key)
            u.skip()
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError):
        return 0, 0
    return (stable, len(seen)) if stable else (0, 0)


class DeviceDecoder:
    """``device_from_bytes`` with memory, per device id, for the records a worker reads
    again and again (profiled: a quarter of the registry's CPU per connect was parsing the
    record, which the attestor rewrites at every attestation).

    :meth:`decode` returns exactly what ``device_from_bytes(raw)`` would (or raises what it
    raises): the same bytes give the record parsed before; bytes that differ from the last
    ones only after the fields a connect needs (the attestation state that
    ``device_to_bytes`` writes last: failures, times, TPM clock, last diff and refusal)
    reuse the rest and decode only those, checked as ``device_from_bytes`` checks them.
    A change anywhere before them (status, name, keys, PSK, baselines) parses the whole
    record again. Anything not laid out as expected is parsed whole. Bounded (LRU).
    Not thread-safe."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._known: OrderedDict[str, _Known] = OrderedDict()
        self.parsed = 0  # whole parses (tests and profiling)

    def last(self, key: str) -> tuple[bytes, Device] | None:
        """The bytes last decoded or stored under ``key`` and their record."""
        k = self._known.get(key)
        return (k.raw, k.device) if k is not None else None

    def forget(self, key: str) -> None:
        self._known.pop(key, None)

    def store(self, key: str, raw: bytes, device: Device) -> None:
        """Remember ``raw`` = ``device_to_bytes(device)`` (what this process just wrote)."""
        self._keep(key, _Known(raw, device, -1, 0))

    def decode(self, key: str, raw: bytes) -> Device:
        known = self._known.get(key)
        if known is not None:
            if known.raw == raw:
                self._known.move_to_end(key)
                return known.device
            if known.stable < 0:
                known = _Known(known.raw, known.device, *_split(known.raw))
            device = self._from_state(known, raw)
            if device is not None:
                self._keep(key, _Known(raw, device, known.stable, known.state_pairs))
                return device
        device = device_from_bytes(raw)  # raises before anything is kept
        self.parsed += 1
        self._keep(key, _Known(raw, device, *_split(raw)))
        return device

    def _from_state(self, known: _Known, raw: bytes) -> Device | None:
        """``raw`` decoded from ``known`` when only its state fields differ; else None."""
        n = known.stable
        if not n or len(raw) > _BIG or raw[:n] != known.raw[:n]:
            return None
        u = _unpacker()
        u.feed(raw[n:])
        state: dict[str, Any] = {}
        try:
            for _ in range(known.state_pairs):
                key = u.unpack()
                if key not in _STATE_KEYS or key in state:
                    return None
                state[key] = u.unpack()
            if u.tell() != len(raw) - n:
                return None  # trailing bytes: device_from_bytes refuses them
            return _with_state(known.device, _state(state))
        except (ValueError, TypeError, KeyError, msgpack.UnpackException, RecursionError,
                AttestgateError):
            return None  # parsed whole, which raises what device_from_bytes raises

    def _keep(self, key: str, known: _Known) -> None:
        self._known[key] = known
        self._known.move_to_end(key)
        while len(self._known) > self._capacity:
            self._known.popitem(last=False)


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
