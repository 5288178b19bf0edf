"""The Redis store: the only module that imports ``redis``.

Key layout (hash tags keep keys that change together in one Cluster slot):

    ag:{reg}:dev:<id>          device record (msgpack)
    ag:{reg}:idx:noise|name|ek hash: Noise key hex / casefolded name / EK fingerprint -> device id
    ag:{reg}:tok:<id>          enrollment token (msgpack), expires with the token
    ag:{reg}:tokfail:<id>      failed handshakes under that token, expires with the token
    ag:{reg}:ts:<id>           last reconnect timestamp (replay guard)
    ag:{reg}:pending:<key>     enrollment in progress (TTL)
    ag:{reg}:evlog:<id>:<sha>  a device's measured-boot event log, zlib (content-addressed)
    ag:{reg}:secret:<id>       hash: secret name -> record, value sealed (shared.secrets)
    ag:{reg}:rules             hash: device id (or "*", the default) -> rule policy (JSON)
    ag:{board}:posts           stream of posts
    ag:{board}:dedupe:<key>    idempotency key -> post id, expires after the quota's key_ttl
    ag:{board}:rate:<id>       a device's post token bucket (hash t, u), expires when full
    ag:{audit}:log             stream of hash-chained audit entries
    ag:{audit}:head            hash of the newest entry

Audit entries are HMAC-chained under the audit key (``shared.audit``), which the
store is given but never writes to Redis; after each append a checkpoint of the
chain (entry count, head) goes to the ``CheckpointSink`` (a file in the server home).

Every redis-py exception becomes ``AttestgateError(STORE_UNAVAILABLE)`` here, so
a handler never sees a library exception, and the caller is never told "stored"
unless Redis acknowledged the write.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Final

import hiredis
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.audit import AuditKey, CheckpointSink, canonical, entry_hash, make_checkpoint
from shared.errors import AttestgateError, ErrorCode
from shared.records import AuditEntry, Device, DeviceStatus, Post, Token
from shared.store.interface import PostQuota, check_event_log
from shared.store.serialize import (
    DeviceDecoder,
    device_from_bytes,
    device_to_bytes,
    name_key,
    post_from_fields,
    token_from_bytes,
    token_to_bytes,
)

REG: Final = "ag:{reg}:"
BOARD: Final = "ag:{board}:"
AUDIT: Final = "ag:{audit}:"
POSTS: Final = BOARD + "posts"
AUDIT_LOG: Final = AUDIT + "log"
AUDIT_HEAD: Final = AUDIT + "head"
_RETRIES: Final = 50
_DEFAULT_SCOPE: Final = "*"  # the rule policy for every device without its own
# Device records last read, by id (raw and parsed): update_device's compare-and-set
# starts from them, so an update right after a read (the attestor's get, check, update)
# is one round trip and no second parse, and a record the attestor rewrote since (its
# attestation state) is decoded from the last one (serialize.DeviceDecoder). Bounded
# (a few KiB each); a stale one costs a retry.
_SEEN_DEVICES: Final = 1024

# Steps that need a transaction run as scripts: one round trip each, atomic, and
# nothing to retry unless another writer came between our read and our write
# (profiled: 12 round trips and 3 WATCH transactions per connect before).

# The device behind an index entry. KEYS: index hash. ARGV: field, device key prefix.
# (The device key is derived in the script; it shares the index's {reg} hash slot.)
_BY_INDEX: Final = """
local id = redis.call('HGET', KEYS[1], ARGV[1])
if not id then return false end
return {id, redis.call('GET', ARGV[2] .. id)}
"""

# Replay guard: store ts if newer. Compared as decimal strings (no leading zeros): Lua
# numbers are doubles, too coarse for nanosecond timestamps. KEYS: ts key. ARGV: ts.
_ADVANCE_TS: Final = """
local last = redis.call('GET', KEYS[1])
local ts = ARGV[1]
if last and (#last > #ts or (#last == #ts and last >= ts)) then return 0 end
redis.call('SET', KEYS[1], ts)
return 1
"""

# GET as a script, so that the hot path (_hot_call) is EVALSHA only. KEYS: the key.
_GET: Final = "return redis.call('GET', KEYS[1])"

# _BY_INDEX and the device's replay-guard timestamp (registry connect: one round trip).
# KEYS: index. ARGV: index key, device key prefix, ts key prefix.
_BY_INDEX_TS: Final = """
local id = redis.call('HGET', KEYS[1], ARGV[1])
if not id then return false end
return {id, redis.call('GET', ARGV[2] .. id), redis.call('GET', ARGV[3] .. id)}
"""

# A device record, and _ADVANCE_TS when it exists (attestor: one round trip). KEYS: device
# key, ts key. ARGV: ts ('' = only read the device).
_CONFIRM_CONNECT: Final = """
local dev = redis.call('GET', KEYS[1])
if not dev then return false end
local ts = ARGV[1]
if ts ~= '' then
  local last = redis.call('GET', KEYS[2])
  if not (last and (#last > #ts or (#last == #ts and last >= ts))) then
    redis.call('SET', KEYS[2], ts)
  end
end
return dev
"""

# Compare-and-set of a device record. KEYS: device key. ARGV: expected bytes, new bytes.
# Returns {0} unknown device, {1, current} changed meanwhile, {2} stored.
_CAS_DEVICE: Final = """
local cur = redis.call('GET', KEYS[1])
if not cur then return {0} end
if cur ~= ARGV[1] then return {1, cur} end
redis.call('SET', KEYS[1], ARGV[2])
return {2}
"""

# Append to the audit chain if its head is still the one the entry was chained to.
# KEYS: log stream, head. ARGV: prev, ts, event, device, detail, hash.
# Returns {0, current head} or {1, entry id, entries up to it}.
# A resend of an append whose reply was lost (a timeout, a dropped connection) finds its
# entry already there, at the head or just below it when others appended since: it is
# acknowledged where it stands, never chained a second time (one entry per decision).
_APPEND_AUDIT: Final = """
local head = redis.call('GET', KEYS[2]) or ''
if head ~= ARGV[1] then
  local recent = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 64)
  for i, entry in ipairs(recent) do
    local f = entry[2]
    for j = 1, #f - 1, 2 do
      if f[j] == 'hash' and f[j + 1] == ARGV[6] then
        return {1, entry[1], redis.call('XLEN', KEYS[1]) - i + 1}
      end
    end
  end
  return {0, head}
end
local id = redis.call('XADD', KEYS[1], '*', 'ts', ARGV[2], 'event', ARGV[3],
                      'device', ARGV[4], 'detail', ARGV[5], 'prev', ARGV[1], 'hash', ARGV[6])
redis.call('SET', KEYS[2], ARGV[6])
return {1, id, redis.call('XLEN', KEYS[1])}
"""

# Idempotent, rate-limited append: one atomic step, one round trip, so a retried post
# is never stored twice and every worker shares each device's bucket. The bucket
# arithmetic is shared.ratelimit.take's; a refusal writes nothing.
# KEYS: posts stream, dedupe key, bucket. ARGV: now, rate, burst, key ttl (ms), fields...
_ADD_POST: Final = """
local existing = redis.call('GET', KEYS[2])
if existing then return {existing, 0} end
local now = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[3], 't', 'u')
local tokens = tonumber(b[1])
local updated = tonumber(b[2])
if tokens == nil or updated == nil then
  tokens = burst
  updated = now
end
local elapsed = now - updated
if elapsed < 0 then elapsed = 0 end
tokens = math.min(burst, tokens + elapsed * rate)
if updated < now then updated = now end
if tokens < 1 then return {'', -1} end
redis.call('HSET', KEYS[3], 't', string.format('%.6f', tokens - 1),
           'u', string.format('%.6f', updated))
redis.call('PEXPIRE', KEYS[3], math.ceil(burst / rate * 1000) + 1000)
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 5))
redis.call('SET', KEYS[2], id, 'PX', ARGV[4])
return {id, 1}
"""


@contextmanager
def _mapped() -> Iterator[None]:
    try:
        yield
    except WatchError:
        raise
    except RedisError as exc:
        raise AttestgateError(ErrorCode.STORE_UNAVAILABLE, f"redis: {type(exc).__name__}") from None


class RedisStore:
    def __init__(self, url: str, *, timeout: float = 5.0, audit_key: AuditKey | None = None,
                 checkpoints: CheckpointSink | None = None) -> None:
        """``audit_key`` is needed to append audit entries (readers do without);
        ``checkpoints`` receives a checkpoint after each append."""
        self._audit_key = audit_key
        self._checkpoints = checkpoints
        # redis-py's response types are unions over its decode modes; this adapter
        # always uses bytes responses and converts at each call, so type it loosely.
        self._r: Any = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=30
        )
        self._add_post = self._r.register_script(_ADD_POST)
        self._by_index_script = self._r.register_script(_BY_INDEX)
        self._advance_ts = self._r.register_script(_ADVANCE_TS)
        self._by_index_ts = self._r.register_script(_BY_INDEX_TS)
        self._confirm_connect = self._r.register_script(_CONFIRM_CONNECT)
        self._get = self._r.register_script(_GET)
        self._cas_device = self._r.register_script(_CAS_DEVICE)
        self._append_audit = self._r.register_script(_APPEND_AUDIT)
        self._seen = DeviceDecoder(_SEEN_DEVICES)  # id -> record last read or written
        # One connection kept for the per-request commands (see _hot_call).
        self._hot: Any = None
        self._hot_lock = threading.Lock()
        self._audit_head: str | None = None  # the head as we last saw it

    def _remember(self, device_id: str, raw: bytes | None) -> Device | None:
        """Parse ``raw`` (None: no such device) and keep both for update_device."""
        if raw is None:
            self._seen.forget(device_id)
            return None
        return self._seen.decode(device_id, raw)

    def close(self) -> None:
        with self._hot_lock:
            if self._hot is not None:
                self._hot.disconnect()
                self._hot = None
        self._r.close()

    def _hot_call(self, script: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """``script(keys=keys, args=args)`` for the commands every connect and post makes.

        EVALSHA straight on a connection kept for them, packed by hiredis: redis-py's
        client, retry and pool layers and its Python packer cost about 35 of the 57 us of
        CPU per command (measured on this machine).
        NOSCRIPT (a restarted Redis) or a broken connection goes the ordinary way, which
        loads the script and retries as redis-py always does. Call inside ``_mapped()``.
        """
        with self._hot_lock:
            try:
                if self._hot is None:
                    self._hot = self._r.connection_pool.make_connection()
                self._hot.send_packed_command(
                    [hiredis.pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))])
                return self._hot.read_response()
            except NoScriptError:
                pass
            except (RedisConnectionError, RedisTimeoutError):
                self._hot.disconnect()
        return script(keys=keys, args=args)

    def ping(self) -> bool:
        with _mapped():
            return bool(self._r.ping())

    # -- devices -------------------------------------------------------------------
    def get_device(self, device_id: str) -> Device | None:
        with _mapped():
            raw = self._hot_call(self._get, [REG + "dev:" + device_id], ())
        return self._remember(device_id, raw)

    def _by_index(self, index: str, key: str) -> Device | None:
        with _mapped():
            found = self._by_index_script(keys=[REG + "idx:" + index], args=[key, REG + "dev:"])
        if not found:
            return None
        return self._remember(found[0].decode(), found[1])

    def device_by_noise(self, noise_public: bytes) -> Device | None:
        return self._by_index("noise", noise_public.hex())

    def device_by_name(self, name: str) -> Device | None:
        # An index written before names were casefolded (see migrate_name_index) has the
        # name as typed: found by its exact spelling still.
        return self._by_index("name", name_key(name)) or self._by_index("name", name)

    def migrate_name_index(self) -> int:
        """Re-key a name index written before names were unique case-insensitively.

        Idempotent, safe while others enroll (each move is one WATCHed transaction).
        Two old names differing only in case keep the second under its exact spelling.
        Returns how many entries were moved.
        """
        idx = REG + "idx:name"
        moved = 0
        with _mapped():
            old = [k for k in self._r.hkeys(idx) if k.decode() != name_key(k.decode())]
        for raw in old:
            key = raw.decode()
            for _ in range(_RETRIES):
                with _mapped(), self._r.pipeline() as p:
                    try:
                        p.watch(idx)
                        dev_id = p.hget(idx, key)
                        if dev_id is None or p.hexists(idx, name_key(key)):
                            break
                        p.multi()
                        p.hset(idx, name_key(key), dev_id)
                        p.hdel(idx, key)
                        p.execute()
                        moved += 1
                        break
                    except WatchError:
                        continue
        return moved

    def device_by_ek(self, ek_fingerprint: str) -> Device | None:
        return self._by_index("ek", ek_fingerprint)

    def create_device(self, device: Device, token_id: str | None,
                      replaces: str | None = None) -> None:
        idx = REG + "idx:"
        tok = REG + "tok:" + token_id if token_id else None
        old_key = REG + "dev:" + replaces if replaces else None
        watched = ([idx + "noise", idx + "name", idx + "ek"] + ([tok] if tok else [])
                   + ([old_key] if old_key else []))
        for _ in range(_RETRIES):
            with _mapped(), self._r.pipeline() as p:
                try:
                    p.watch(*watched)
                    raw = p.get(old_key) if old_key else None
                    old = device_from_bytes(raw) if raw is not None else None
                    if old is not None and old.status is not DeviceStatus.REENROLL:
                        raise AttestgateError(ErrorCode.ALREADY_ENROLLED,
                                              f"{old.device_id} not reenroll")
                    mine = {old.device_id.encode()} if old is not None else set()

                    found = [p.hget(idx + index, key) for index, key in (
                        ("name", name_key(device.name)), ("ek", device.ek_fingerprint),
                        ("noise", device.noise_public.hex()))]
                    taken = [f is not None and f not in mine for f in found]
                    if taken[0]:
                        raise AttestgateError(ErrorCode.NAME_TAKEN, device.name)
                    if taken[1] or taken[2]:
                        raise AttestgateError(ErrorCode.ALREADY_ENROLLED, device.device_id)
                    if tok and not p.exists(tok):
                        raise AttestgateError(ErrorCode.BAD_TOKEN, "token used or expired")
                    p.multi()
                    if old is not None:
                        self._queue_delete(p, old)
                    p.set(REG + "dev:" + device.device_id, device_to_bytes(device))
                    p.hset(idx + "noise", device.noise_public.hex(), device.device_id)
                    p.hset(idx + "name", name_key(device.name), device.device_id)
                    p.hset(idx + "ek", device.ek_fingerprint, device.device_id)
                    if tok:
                        p.delete(tok)
                    p.execute()
                    return
                except WatchError:
                    continue
        raise AttestgateError(ErrorCode.STORE_UNAVAILABLE, "create_device contention")

    @staticmethod
    def _queue_delete(p: Any, d: Device) -> None:
        """Queue (in MULTI) the deletion of a device's record, indexes and replay guard."""
        idx = REG + "idx:"
        p.delete(REG + "dev:" + d.device_id, REG + "ts:" + d.device_id)
        p.hdel(idx + "noise", d.noise_public.hex())
        p.hdel(idx + "name", name_key(d.name))
        p.hdel(idx + "ek", d.ek_fingerprint)
        p.hdel(REG + "rules", d.device_id)

    def delete_device(self, device_id: str) -> Device | None:
        key = REG + "dev:" + device_id
        idx = REG + "idx:"
        for _ in range(_RETRIES):
            with _mapped(), self._r.pipeline() as p:
                try:
                    p.watch(key, idx + "noise", idx + "name", idx + "ek")
                    raw = p.get(key)
                    if raw is None:
                        return None
                    old = device_from_bytes(raw)
                    p.multi()
                    self._queue_delete(p, old)
                    p.execute()
                    return old
                except WatchError:
                    continue
        raise AttestgateError(ErrorCode.STORE_UNAVAILABLE, "delete_device contention")

    def update_device(self, device_id: str, change: Callable[[Device], Device]) -> Device:
        """Compare-and-set from the record last read (one round trip when nobody wrote
        in between); when it changed, the script hands back the current one to retry on."""
        key = REG + "dev:" + device_id
        seen = self._seen.last(device_id)
        raw = seen[0] if seen is not None else None
        if raw is None:
            with _mapped():
                raw = self._r.get(key)
        for _ in range(_RETRIES):
            current = self._remember(device_id, raw)
            if raw is None or current is None:
                raise AttestgateError(ErrorCode.UNKNOWN_DEVICE, device_id)
            new = change(current)
            new_raw = device_to_bytes(new)
            with _mapped():
                answer = self._hot_call(self._cas_device, [key], [raw, new_raw])
            if int(answer[0]) == 2:
                self._seen.store(device_id, new_raw, new)
                return new
            raw = answer[1] if int(answer[0]) == 1 else None
        self._remember(device_id, None)
        raise AttestgateError(ErrorCode.STORE_UNAVAILABLE, "update_device contention")

    def list_devices(self) -> Sequence[Device]:
        with _mapped():
            ids = sorted(v.decode() for v in self._r.hvals(REG + "idx:noise"))
            raws = self._r.mget([REG + "dev:" + i for i in ids]) if ids else []
        return [device_from_bytes(r) for r in raws if r is not None]

    def last_connect_ts(self, device_id: str) -> int:
        with _mapped():
            last = self._r.get(REG + "ts:" + device_id)
        return -1 if last is None else int(last)

    def advance_connect_ts(self, device_id: str, ts: int) -> bool:
        if ts < 0:
            return False
        with _mapped():
            return bool(self._advance_ts(keys=[REG + "ts:" + device_id], args=[str(int(ts))]))

    def connect_lookup(self, noise_public: bytes) -> tuple[Device, int] | None:
        with _mapped():
            found = self._hot_call(self._by_index_ts, [REG + "idx:noise"],
                                   [noise_public.hex(), REG + "dev:", REG + "ts:"])
        if not found:
            return None
        device = self._remember(found[0].decode(), found[1])
        if device is None:
            return None
        last = found[2] if len(found) > 2 else None
        return device, -1 if last is None else int(last)

    def confirm_connect(self, device_id: str, ts: int) -> Device | None:
        with _mapped():
            raw = self._hot_call(self._confirm_connect,
                                 [REG + "dev:" + device_id, REG + "ts:" + device_id],
                                 [str(int(ts)) if ts >= 0 else ""])
        return self._remember(device_id, raw)

    # -- enrollment ------------------------------------------------------------------
    def put_token(self, token: Token) -> None:
        with _mapped():
            self._r.set(
                REG + "tok:" + token.token_id,
                token_to_bytes(token),
                pxat=int(token.expires_at * 1000),
            )

    def get_token(self, token_id: str, now: float) -> Token | None:
        with _mapped():
            raw = self._r.get(REG + "tok:" + token_id)
        if raw is None:
            return None
        token = token_from_bytes(raw)
        return token if token.expires_at > now else None

    def count_token_failure(self, token_id: str, expires_at: float) -> int:
        key = REG + "tokfail:" + token_id
        with _mapped(), self._r.pipeline(transaction=True) as p:
            p.incr(key)
            p.pexpireat(key, max(int(expires_at * 1000), int(time.time() * 1000) + 1000))
            count, _ = p.execute()
        return int(count)

    def burn_token(self, token_id: str) -> bool:
        with _mapped():
            return bool(self._r.delete(REG + "tok:" + token_id))

    def put_pending(self, key: str, data: bytes, ttl: float) -> None:
        with _mapped():
            self._r.set(REG + "pending:" + key, data, px=max(1, int(ttl * 1000)))

    def take_pending(self, key: str) -> bytes | None:
        with _mapped():
            raw = self._r.getdel(REG + "pending:" + key)
        return bytes(raw) if raw is not None else None

    def put_event_log(self, device_id: str, digest: str, blob: bytes) -> None:
        check_event_log(device_id, digest, blob)
        with _mapped():
            self._r.set(REG + f"evlog:{device_id}:{digest}", blob)

    def get_event_log(self, device_id: str, digest: str) -> bytes | None:
        with _mapped():
            raw = self._r.get(REG + f"evlog:{device_id}:{digest}")
        return bytes(raw) if raw is not None else None

    def delete_event_log(self, device_id: str, digest: str) -> None:
        with _mapped():
            self._r.delete(REG + f"evlog:{device_id}:{digest}")

    # -- secrets ---------------------------------------------------------------------------
    def put_secret(self, device_id: str, name: str, record: bytes) -> None:
        with _mapped():
            self._r.hset(REG + "secret:" + device_id, name, record)

    def get_secret(self, device_id: str, name: str) -> bytes | None:
        with _mapped():
            raw = self._r.hget(REG + "secret:" + device_id, name)
        return bytes(raw) if raw is not None else None

    def list_secrets(self, device_id: str) -> Mapping[str, bytes]:
        with _mapped():
            raw = self._r.hgetall(REG + "secret:" + device_id)
        return {k.decode(): bytes(v) for k, v in raw.items()}

    def delete_secret(self, device_id: str, name: str) -> bool:
        with _mapped():
            return bool(self._r.hdel(REG + "secret:" + device_id, name))

    # -- rule policies ---------------------------------------------------------------------
    def get_rule_policy(self, scope: str) -> bytes | None:
        with _mapped():
            raw = self._r.hget(REG + "rules", scope or _DEFAULT_SCOPE)
        return bytes(raw) if raw is not None else None

    def put_rule_policy(self, scope: str, doc: bytes) -> None:
        with _mapped():
            self._r.hset(REG + "rules", scope or _DEFAULT_SCOPE, doc)

    def delete_rule_policy(self, scope: str) -> bool:
        with _mapped():
            return bool(self._r.hdel(REG + "rules", scope or _DEFAULT_SCOPE))

    def list_rule_policies(self) -> Mapping[str, bytes]:
        with _mapped():
            raw = self._r.hgetall(REG + "rules")
        return {("" if k == _DEFAULT_SCOPE.encode() else k.decode()): bytes(v)
                for k, v in raw.items()}

    # -- board -------------------------------------------------------------------------
    def add_post(self, key: bytes, fields: Mapping[str, bytes | str], *, device_id: str,
                 now: float, quota: PostQuota) -> tuple[str, bool]:
        argv: list[bytes | str] = [repr(now), repr(float(quota.rate)), str(quota.burst),
                                   str(max(1, int(quota.key_ttl * 1000)))]
        for k, v in fields.items():
            argv += [k, v]
        keys = [POSTS, BOARD + "dedupe:" + key.hex(), BOARD + "rate:" + device_id]
        with _mapped():
            post_id, created = self._hot_call(self._add_post, keys, argv)
        if created < 0:
            raise AttestgateError(ErrorCode.RATE_LIMITED, device_id)
        return post_id.decode(), bool(created)

    def read_posts(self, since: str | None, limit: int) -> Sequence[Post]:
        with _mapped():
            rows = self._r.xrange(POSTS, min="(" + since if since else "-", count=limit)
        return [post_from_fields(i.decode(), f) for i, f in rows]

    def latest_posts(self, limit: int) -> Sequence[Post]:
        with _mapped():
            rows = self._r.xrevrange(POSTS, count=limit)
        return [post_from_fields(i.decode(), f) for i, f in reversed(rows)]

    def get_post(self, post_id: str) -> Post | None:
        with _mapped():
            rows = self._r.xrange(POSTS, min=post_id, max=post_id, count=1)
        return post_from_fields(post_id, rows[0][1]) if rows else None

    def count_posts(self) -> int:
        with _mapped():
            return int(self._r.xlen(POSTS))

    # -- audit -------------------------------------------------------------------------
    def append_audit(
        self, event: str, device_id: str, detail: Mapping[str, Any], now: float
    ) -> AuditEntry:
        """Append one entry to the chain, then record a checkpoint (count, head) of it.

        The checkpoint is written after Redis acknowledged the entry, so a crash in
        between leaves the entry un-checkpointed (still HMAC-chained), never a
        checkpoint of an entry that is not there. A failed checkpoint write raises.
        """
        key = self._audit_key
        if key is None:
            raise AttestgateError(ErrorCode.INTERNAL, "no audit key: cannot append to the log")
        text = canonical(detail)
        # Chain to the head as we last saw it; if another writer moved it, the script
        # answers with the current head and nothing written, and we chain again.
        prev = self._audit_head
        if prev is None:
            prev = self.audit_head()
        for _ in range(_RETRIES):
            h = entry_hash(key, prev, now, event, device_id, text)
            with _mapped():
                answer = self._hot_call(self._append_audit, [AUDIT_LOG, AUDIT_HEAD],
                                        [prev, repr(now), event, device_id, text, h])
            if int(answer[0]) == 1:
                entry_id, count = answer[1], answer[2]
                self._audit_head = h
                break
            prev = answer[1].decode()
        else:
            self._audit_head = None
            raise AttestgateError(ErrorCode.STORE_UNAVAILABLE, "audit contention")
        if self._checkpoints is not None:
            try:
                self._checkpoints.record(make_checkpoint(key, int(count), h, now))
            except OSError as exc:
                raise AttestgateError(ErrorCode.INTERNAL,
                                      f"audit checkpoint not written: {exc.strerror}") from None
        return AuditEntry(entry_id.decode(), now, event, device_id, text, prev, h)

    def read_audit(self, device_id: str | None = None, limit: int = 10_000) -> Sequence[AuditEntry]:
        with _mapped():
            rows = self._r.xrange(AUDIT_LOG, count=limit)
        out = []
        for i, f in rows:
            e = AuditEntry(
                entry_id=i.decode(),
                ts=float(f.get(b"ts", b"0")),
                event=f.get(b"event", b"").decode(),
                device_id=f.get(b"device", b"").decode(),
                detail=f.get(b"detail", b"").decode(),
                prev=f.get(b"prev", b"").decode(),
                hash=f.get(b"hash", b"").decode(),
            )
            if device_id is None or e.device_id == device_id:
                out.append(e)
        return out

    def audit_head(self) -> str:
        with _mapped():
            raw = self._r.get(AUDIT_HEAD)
        return raw.decode() if raw else ""

    # -- operator ------------------------------------------------------------------------
    def usage(self) -> tuple[int, int]:
        """(devices, audit entries) held: what the server keys protect."""
        with _mapped():
            devices = int(self._r.hlen(REG + "idx:noise"))
            entries = int(self._r.xlen(AUDIT_LOG)) or int(self._r.exists(AUDIT_HEAD))
        return devices, entries

    def archive_audit(self, suffix: str) -> tuple[str, int, str]:
        """Move the audit log aside (to ``log:<suffix>``) and clear the head, atomically.

        Returns (archive key, entries, old head). Used only when the audit key is replaced.
        """
        archive = AUDIT_LOG + ":" + suffix
        for _ in range(_RETRIES):
            with _mapped(), self._r.pipeline() as p:
                try:
                    p.watch(AUDIT_LOG, AUDIT_HEAD)
                    count = int(p.xlen(AUDIT_LOG))
                    head_raw = p.get(AUDIT_HEAD)
                    p.multi()
                    if count:
                        p.rename(AUDIT_LOG, archive)
                    p.delete(AUDIT_HEAD)
                    p.execute()
                    return archive, count, head_raw.decode() if head_raw else ""
                except WatchError:
                    continue
        raise AttestgateError(ErrorCode.STORE_UNAVAILABLE, "audit contention")

    def any_device(self) -> Device | None:
        """One enrolled device, whichever (start-up checks that the storage key opens it)."""
        with _mapped():
            dev_id = self._r.hrandfield(REG + "idx:noise", 1, withvalues=True)
        return self.get_device(dev_id[1].decode()) if dev_id else None

    def purge(self, keep_audit: bool = False) -> int:
        n = 0
        with _mapped():
            for key in self._r.scan_iter(match="ag:*", count=500):
                if keep_audit and key.decode(errors="replace").startswith(AUDIT):
                    continue
                n += int(self._r.delete(key))
        return n

    # -- for tests of tamper evidence and operators' repair tools ---------------------------
    def raw(self) -> Any:
        """The underlying client. Only tests (tampering with the audit log) use this."""
        return self._r


def wait_ready(url: str, timeout: float = 10.0) -> None:
    """Block until Redis answers PING (used by service start-up)."""
    deadline = time.monotonic() + timeout
    store = RedisStore(url, timeout=1.0)
    try:
        while True:
            try:
                store.ping()
                return
            except AttestgateError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    finally:
        store.close()
