"""An in-memory Store for unit tests: a real implementation of the same interface."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from shared.audit import AuditKey, CheckpointSink, canonical, entry_hash, make_checkpoint
from shared.errors import AttestgateError, ErrorCode
from shared.ratelimit import Bucket, take
from shared.records import AuditEntry, Device, DeviceStatus, Post, Token
from shared.store.interface import PostQuota, check_event_log
from shared.store.serialize import name_key, post_from_fields


class MemoryStore:
    def __init__(self, audit_key: AuditKey | None = None,
                 checkpoints: CheckpointSink | None = None) -> None:
        # A fresh random audit key unless given: tests read it back as ``audit_key``.
        self.audit_key = audit_key or AuditKey(os.urandom(32))
        self.checkpoints = checkpoints
        self.devices: dict[str, Device] = {}
        self.tokens: dict[str, Token] = {}
        self.token_failures: dict[str, int] = {}
        self.pending: dict[str, bytes] = {}
        self.event_logs: dict[tuple[str, str], bytes] = {}
        self.secrets: dict[str, dict[str, bytes]] = {}
        self.rule_policies: dict[str, bytes] = {}  # device id or "" (the default) -> JSON
        self.connect_ts: dict[str, int] = {}
        self.posts: list[tuple[str, dict[bytes, bytes]]] = []
        self.dedupe: dict[bytes, tuple[str, float]] = {}  # key -> (post id, expires at)
        self.buckets: dict[str, Bucket] = {}
        self.audit: list[AuditEntry] = []
        self._seq = itertools.count(1)
        self.audit_seq = itertools.count(1)

    def get_device(self, device_id: str) -> Device | None:
        return self.devices.get(device_id)

    def _find(self, pred: Callable[[Device], bool]) -> Device | None:
        return next((d for d in self.devices.values() if pred(d)), None)

    def device_by_noise(self, noise_public: bytes) -> Device | None:
        return self._find(lambda d: d.noise_public == noise_public)

    def device_by_name(self, name: str) -> Device | None:
        key = name_key(name)
        return self._find(lambda d: name_key(d.name) == key)

    def device_by_ek(self, ek_fingerprint: str) -> Device | None:
        return self._find(lambda d: d.ek_fingerprint == ek_fingerprint)

    def create_device(self, device: Device, token_id: str | None,
                      replaces: str | None = None) -> None:
        old = self.devices.get(replaces) if replaces else None
        if old is not None and old.status is not DeviceStatus.REENROLL:
            raise AttestgateError(ErrorCode.ALREADY_ENROLLED, f"{old.device_id} not reenroll")

        def other(d: Device | None) -> bool:
            return d is not None and (old is None or d.device_id != old.device_id)

        if other(self.device_by_name(device.name)):
            raise AttestgateError(ErrorCode.NAME_TAKEN, device.name)
        if other(self.device_by_ek(device.ek_fingerprint)) or other(
                self.device_by_noise(device.noise_public)):
            raise AttestgateError(ErrorCode.ALREADY_ENROLLED, device.device_id)
        if token_id is not None and self.tokens.pop(token_id, None) is None:
            raise AttestgateError(ErrorCode.BAD_TOKEN, "token used or expired")
        if old is not None:
            self.delete_device(old.device_id)
        self.devices[device.device_id] = device

    def delete_device(self, device_id: str) -> Device | None:
        self.connect_ts.pop(device_id, None)
        self.rule_policies.pop(device_id, None)
        return self.devices.pop(device_id, None)

    def update_device(self, device_id: str, change: Callable[[Device], Device]) -> Device:
        dev = self.devices.get(device_id)
        if dev is None:
            raise AttestgateError(ErrorCode.UNKNOWN_DEVICE, device_id)
        new = change(dev)
        self.devices[device_id] = new
        return new

    def list_devices(self) -> Sequence[Device]:
        return sorted(self.devices.values(), key=lambda d: d.device_id)

    def last_connect_ts(self, device_id: str) -> int:
        return self.connect_ts.get(device_id, -1)

    def advance_connect_ts(self, device_id: str, ts: int) -> bool:
        if self.connect_ts.get(device_id, -1) >= ts:
            return False
        self.connect_ts[device_id] = ts
        return True

    def connect_lookup(self, noise_public: bytes) -> tuple[Device, int] | None:
        device = self.device_by_noise(noise_public)
        return None if device is None else (device, self.last_connect_ts(device.device_id))

    def confirm_connect(self, device_id: str, ts: int) -> Device | None:
        device = self.get_device(device_id)
        if device is not None and ts >= 0:
            self.advance_connect_ts(device_id, ts)
        return device

    def put_token(self, token: Token) -> None:
        self.tokens[token.token_id] = token

    def get_token(self, token_id: str, now: float) -> Token | None:
        t = self.tokens.get(token_id)
        return t if t is not None and t.expires_at > now else None

    def count_token_failure(self, token_id: str, expires_at: float) -> int:
        n = self.token_failures.get(token_id, 0) + 1
        self.token_failures[token_id] = n
        return n

    def burn_token(self, token_id: str) -> bool:
        return self.tokens.pop(token_id, None) is not None

    def put_pending(self, key: str, data: bytes, ttl: float) -> None:
        self.pending[key] = data

    def take_pending(self, key: str) -> bytes | None:
        return self.pending.pop(key, None)

    def put_event_log(self, device_id: str, digest: str, blob: bytes) -> None:
        check_event_log(device_id, digest, blob)
        self.event_logs[(device_id, digest)] = blob

    def get_event_log(self, device_id: str, digest: str) -> bytes | None:
        return self.event_logs.get((device_id, digest))

    def delete_event_log(self, device_id: str, digest: str) -> None:
        self.event_logs.pop((device_id, digest), None)

    def put_secret(self, device_id: str, name: str, record: bytes) -> None:
        self.secrets.setdefault(device_id, {})[name] = bytes(record)

    def get_secret(self, device_id: str, name: str) -> bytes | None:
        return self.secrets.get(device_id, {}).get(name)

    def list_secrets(self, device_id: str) -> Mapping[str, bytes]:
        return dict(self.secrets.get(device_id, {}))

    def delete_secret(self, device_id: str, name: str) -> bool:
        return self.secrets.get(device_id, {}).pop(name, None) is not None

    def get_rule_policy(self, scope: str) -> bytes | None:
        return self.rule_policies.get(scope)

    def put_rule_policy(self, scope: str, doc: bytes) -> None:
        self.rule_policies[scope] = bytes(doc)

    def delete_rule_policy(self, scope: str) -> bool:
        return self.rule_policies.pop(scope, None) is not None

    def list_rule_policies(self) -> Mapping[str, bytes]:
        return dict(self.rule_policies)

    def add_post(self, key: bytes, fields: Mapping[str, bytes | str], *, device_id: str,
                 now: float, quota: PostQuota) -> tuple[str, bool]:
        known = self.dedupe.get(key)
        if known is not None and known[1] > now:
            return known[0], False
        allowed, bucket = take(self.buckets.get(device_id), now, quota.rate, quota.burst)
        if not allowed:
            raise AttestgateError(ErrorCode.RATE_LIMITED, device_id)
        self.buckets[device_id] = bucket
        post_id = f"{next(self._seq)}-0"
        enc = {k.encode(): v.encode() if isinstance(v, str) else v for k, v in fields.items()}
        self.posts.append((post_id, enc))
        self.dedupe[key] = (post_id, now + quota.key_ttl)
        return post_id, True

    @staticmethod
    def _seq_of(post_id: str) -> tuple[int, int]:
        a, _, b = post_id.partition("-")
        return int(a), int(b or 0)

    def read_posts(self, since: str | None, limit: int) -> Sequence[Post]:
        lo = self._seq_of(since) if since else (-1, -1)
        rows = [(i, f) for i, f in self.posts if self._seq_of(i) > lo][:limit]
        return [post_from_fields(i, f) for i, f in rows]

    def latest_posts(self, limit: int) -> Sequence[Post]:
        return [post_from_fields(i, f) for i, f in self.posts[-limit:]] if limit else []

    def get_post(self, post_id: str) -> Post | None:
        return next((post_from_fields(i, f) for i, f in self.posts if i == post_id), None)

    def count_posts(self) -> int:
        return len(self.posts)

    def append_audit(
        self, event: str, device_id: str, detail: Mapping[str, Any], now: float
    ) -> AuditEntry:
        prev = self.audit_head()
        text = canonical(detail)
        e = AuditEntry(f"{next(self.audit_seq)}-0", now, event, device_id, text, prev,
                       entry_hash(self.audit_key, prev, now, event, device_id, text))
        self.audit.append(e)
        if self.checkpoints is not None:
            self.checkpoints.record(make_checkpoint(self.audit_key, len(self.audit), e.hash, now))
        return e

    def read_audit(self, device_id: str | None = None, limit: int = 10_000) -> Sequence[AuditEntry]:
        return [e for e in self.audit if device_id is None or e.device_id == device_id][:limit]

    def audit_head(self) -> str:
        return self.audit[-1].hash if self.audit else ""

    def purge(self, keep_audit: bool = False) -> int:
        n = len(self.devices) + len(self.tokens) + len(self.posts)
        audit, seq = self.audit, self.audit_seq
        self.__init__(self.audit_key, self.checkpoints)  # type: ignore[misc]
        if keep_audit:
            self.audit, self.audit_seq = audit, seq
        else:
            n += len(audit)
        return n
