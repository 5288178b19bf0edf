"""Admission control for handshakes: a pure policy, the clock a parameter, no asyncio.

A connection goes through three stages (``server.py`` is the thin asyncio part):

1. **Opening** (no slot): the gateway reads the preamble and message 1 within
   MESSAGE1_TIMEOUT in total. Silent and slowloris sockets never get further, so
   they never hold a handshake slot. Openings are bounded per source address and in
   total, but a full table *evicts the oldest opening* (of that address, or of the
   address with most openings) instead of refusing the newcomer: a real client sends
   its message 1 in one round trip, so a flood from the same address (a NAT) cannot
   keep it out.
2. **Classification**: a CONNECT message 1 reveals the caller's static key after one
   DH. A key the gateway has seen accepted by the registry, with a timestamp newer than
   the last accepted one, is evidence of a real device (it needs the device's static
   private key; a replay has an old timestamp) and goes to the PRIORITY lane. A key not
   known here (a cold gateway, a replay) is looked up in the registry first, a bounded
   number at a time and charged to the source address's token bucket; if the registry
   knows it, PRIORITY too. Everything else (enrollment, garbage) is ANONYMOUS and must
   take a token from its source address's bucket (WireGuard: 20/s, burst 5).
3. **Slots**: at most ``max_slots`` handshakes run at once; ANONYMOUS ones may use
   at most ``max_anonymous_slots`` of them and ``max_anonymous_per_address`` per
   address, so the rest is reserved for devices. A connection without a free slot
   waits in its lane's bounded queue (PRIORITY served first); a full queue means
   "busy" at once. How long it may wait is the caller's business (its deadline).

``KnownKeys`` is the gateway's bounded memory of accepted static keys (LRU), fed by
every successful registry lookup and enrollment; it only decides the lane, never
whether a device is accepted (the registry does that, every time). ``DeviceSessions``
counts live sessions per device for the per-device cap.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from enum import Enum, auto

from services.gateway import limits as L


class Lane(Enum):
    PRIORITY = auto()
    ANONYMOUS = auto()


class Verdict(Enum):
    ADMIT = auto()  # a slot is yours; call release() when done
    WAIT = auto()  # queued: wait for grant (or cancel at your deadline)
    RATE_LIMITED = auto()  # the source address's token bucket is empty
    BUSY = auto()  # no slot and the queue is full


@dataclass(frozen=True)
class AdmissionLimits:
    max_slots: int = L.MAX_CONCURRENT_HANDSHAKES
    max_anonymous_slots: int = L.MAX_ANONYMOUS_HANDSHAKES
    max_anonymous_per_address: int = L.MAX_ANONYMOUS_HANDSHAKES_PER_ADDRESS
    max_waiting: int = L.MAX_WAITING_HANDSHAKES  # per lane
    max_openings: int = L.MAX_OPENINGS
    max_openings_per_address: int = L.MAX_OPENINGS_PER_ADDRESS
    rate: float = L.ANONYMOUS_HANDSHAKE_RATE  # tokens per second per source address
    burst: float = L.ANONYMOUS_HANDSHAKE_BURST
    max_buckets: int = L.MAX_RATE_BUCKETS


@dataclass
class _Bucket:
    tokens: float
    at: float


class TokenBuckets:
    """One token bucket per source address; the table is bounded (least recently used go).

    A forgotten address starts again with a full bucket, which is what an idle one
    would have had anyway.
    """

    def __init__(self, rate: float, burst: float, max_buckets: int) -> None:
        self._rate = rate
        self._burst = burst
        self._max = max_buckets
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, address: str, now: float) -> bool:
        b = self._buckets.pop(address, None)
        if b is None:
            b = _Bucket(self._burst, now)
        else:
            b.tokens = min(self._burst, b.tokens + max(0.0, now - b.at) * self._rate)
            b.at = now
        ok = b.tokens >= 1.0
        if ok:
            b.tokens -= 1.0
        self._buckets[address] = b
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return ok

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass(eq=False)
class Ticket:
    """A place in a lane's queue; ``granted`` once the policy gave it a slot."""

    lane: Lane
    address: str
    granted: bool = False


@dataclass
class _Slots:
    total: int = 0
    anonymous: int = 0
    per_address: dict[str, int] = field(default_factory=dict)  # anonymous, per address


class Admission:
    def __init__(self, limits: AdmissionLimits | None = None) -> None:
        self.limits = limits or AdmissionLimits()
        self._buckets = TokenBuckets(self.limits.rate, self.limits.burst, self.limits.max_buckets)
        self._slots = _Slots()
        self._queues: dict[Lane, deque[Ticket]] = {Lane.PRIORITY: deque(), Lane.ANONYMOUS: deque()}
        self._openings: dict[str, OrderedDict[int, None]] = {}
        self._opening_count = 0

    # -- stage 1: openings -----------------------------------------------------------
    def open(self, conn: int, address: str) -> list[int]:
        """Register an opening connection; returns the connections to close to make room
        (oldest of this address, else oldest of the address with most openings)."""
        evict: list[int] = []
        mine = self._openings.setdefault(address, OrderedDict())
        mine[conn] = None
        self._opening_count += 1
        if len(mine) > self.limits.max_openings_per_address:
            evict.append(self._drop_oldest(address))
        if self._opening_count > self.limits.max_openings:
            heaviest = max(self._openings, key=lambda a: len(self._openings[a]))
            evict.append(self._drop_oldest(heaviest))
        return evict

    def _drop_oldest(self, address: str) -> int:
        conns = self._openings[address]
        conn, _ = conns.popitem(last=False)
        self._opening_count -= 1
        if not conns:
            del self._openings[address]
        return conn

    def opened(self, conn: int, address: str) -> None:
        """The opening is over (message 1 read, or the connection closed/evicted)."""
        conns = self._openings.get(address)
        if conns is None or conn not in conns:
            return  # evicted earlier
        del conns[conn]
        self._opening_count -= 1
        if not conns:
            del self._openings[address]

    @property
    def openings(self) -> int:
        return self._opening_count

    # -- stage 2: rate ---------------------------------------------------------------
    def charge(self, address: str, now: float) -> bool:
        """Take one token from ``address``'s bucket (anonymous work); False when empty."""
        return self._buckets.take(address, now)

    # -- stage 3: slots ----------------------------------------------------------------
    def admit(self, lane: Lane, address: str, now: float) -> tuple[Verdict, Ticket | None]:
        """Ask for a handshake slot. ANONYMOUS asks are charged to the address's bucket."""
        if lane is Lane.ANONYMOUS and not self.charge(address, now):
            return Verdict.RATE_LIMITED, None
        ticket = Ticket(lane, address)
        queue = self._queues[lane]
        # A free slot that fits is taken at once: while any PRIORITY ticket waits, all slots
        # are in use, so nobody overtakes a device; an ANONYMOUS newcomer only overtakes
        # anonymous waiters held back by their own address's cap.
        if self._fits(ticket):
            self._take(ticket)
            return Verdict.ADMIT, ticket
        if len(queue) >= self.limits.max_waiting:
            return Verdict.BUSY, None
        queue.append(ticket)
        return Verdict.WAIT, ticket

    def _fits(self, t: Ticket) -> bool:
        s, lim = self._slots, self.limits
        if s.total >= lim.max_slots:
            return False
        if t.lane is Lane.PRIORITY:
            return True
        return (s.anonymous < lim.max_anonymous_slots
                and s.per_address.get(t.address, 0) < lim.max_anonymous_per_address)

    def _take(self, t: Ticket) -> None:
        s = self._slots
        s.total += 1
        if t.lane is Lane.ANONYMOUS:
            s.anonymous += 1
            s.per_address[t.address] = s.per_address.get(t.address, 0) + 1
        t.granted = True

    def release(self, ticket: Ticket) -> list[Ticket]:
        """Give back a granted slot; returns the waiters granted a slot now (wake them)."""
        assert ticket.granted
        ticket.granted = False
        s = self._slots
        s.total -= 1
        if ticket.lane is Lane.ANONYMOUS:
            s.anonymous -= 1
            n = s.per_address[ticket.address] - 1
            if n:
                s.per_address[ticket.address] = n
            else:
                del s.per_address[ticket.address]
        return self._grant()

    def _grant(self) -> list[Ticket]:
        woken: list[Ticket] = []
        prio = self._queues[Lane.PRIORITY]
        while prio and self._fits(prio[0]):
            t = prio.popleft()
            self._take(t)
            woken.append(t)
        if prio:
            return woken  # devices first: nothing for anonymous while a device waits
        anon = self._queues[Lane.ANONYMOUS]
        for t in list(anon):
            if self._slots.total >= self.limits.max_slots:
                break
            if self._fits(t):
                anon.remove(t)
                self._take(t)
                woken.append(t)
        return woken

    def cancel(self, ticket: Ticket) -> bool:
        """Leave the queue (deadline reached). False if the ticket was granted meanwhile:
        then the caller holds a slot and must release() it."""
        if ticket.granted:
            return False
        queue = self._queues[ticket.lane]
        if ticket in queue:
            queue.remove(ticket)
        return True

    # -- observability -----------------------------------------------------------------
    @property
    def in_use(self) -> tuple[int, int]:
        """(all slots in use, of which anonymous)."""
        return self._slots.total, self._slots.anonymous

    def waiting(self, lane: Lane) -> int:
        return len(self._queues[lane])


class KnownKeys:
    """Static keys the registry accepted, with the newest accepted message-1 timestamp and
    the device they belong to (LRU, bounded)."""

    def __init__(self, capacity: int = L.MAX_KNOWN_KEYS) -> None:
        self._cap = capacity
        self._keys: OrderedDict[bytes, tuple[int, str]] = OrderedDict()

    def lane(self, key: bytes, ts: int) -> Lane:
        """PRIORITY for a known key with a newer timestamp than the last accepted one."""
        known = self._keys.get(key)
        return Lane.PRIORITY if known is not None and ts > known[0] else Lane.ANONYMOUS

    def learn(self, key: bytes, ts: int, device_id: str) -> None:
        last, _ = self._keys.pop(key, (-1, ""))
        self._keys[key] = (max(last, ts), device_id)
        while len(self._keys) > self._cap:
            self._keys.popitem(last=False)

    def forget_device(self, device_id: str) -> None:
        """A revoked or locked device loses its priority (O(n); revocations are rare)."""
        for key in [k for k, (_, d) in self._keys.items() if d == device_id]:
            del self._keys[key]

    def __len__(self) -> int:
        return len(self._keys)


class DeviceSessions:
    """Live (and confirmed-but-attesting) sessions per device, capped."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._n: dict[str, int] = {}

    def reserve(self, device_id: str) -> bool:
        n = self._n.get(device_id, 0)
        if n >= self.cap:
            return False
        self._n[device_id] = n + 1
        return True

    def release(self, device_id: str) -> None:
        n = self._n.get(device_id, 0) - 1
        if n > 0:
            self._n[device_id] = n
        else:
            self._n.pop(device_id, None)

    def count(self, device_id: str) -> int:
        return self._n.get(device_id, 0)
