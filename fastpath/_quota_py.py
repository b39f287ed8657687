"""Pure-Python twin of the quota core (``_quota.pyx``): the same names, the same
behaviour, a lock where the compiled core relies on the GIL."""

from __future__ import annotations

import threading
import time
from typing import Any, Dict, List, Optional

from . import _quota_config
from ._quota_config import RESOURCES
from .errors import InvalidConfiguration

__all__ = ["LocalQuotaStore", "Quota"]

_monotonic_ns = time.monotonic_ns


class _Bucket:
    __slots__ = ("level", "last_ns", "admitted", "refused")

    def __init__(self, caps: List[float], now_ns: int) -> None:
        self.level = list(caps)
        self.last_ns = now_ns
        self.admitted = 0
        self.refused = 0


class LocalQuotaStore:
    """The in-process quota store (the default): one bucket per flow key, exact
    under threads (a lock, never held while a rule runs).  One store serves one Quota."""

    def __init__(self) -> None:
        self._buckets: Dict[Any, _Bucket] = {}
        self._prune_at = 1024
        self._quota: Optional[Quota] = None
        self._lock = threading.Lock()

    def _refill(self, bucket: _Bucket, now_ns: int) -> None:
        q = self._quota
        assert q is not None
        dt = now_ns - bucket.last_ns
        if dt <= 0:
            return
        bucket.last_ns = now_ns
        for i in range(3):
            if q._mask & (1 << i) and bucket.level[i] < q._cap[i]:
                bucket.level[i] = min(q._cap[i], bucket.level[i] + q._rate[i] * dt)

    def _bucket(self, key: Any, now_ns: int) -> _Bucket:
        # Called with self._lock held.
        bucket = self._buckets.get(key)
        if bucket is not None:
            self._refill(bucket, now_ns)
            return bucket
        if len(self._buckets) >= self._prune_at:
            self._prune(now_ns)
        assert self._quota is not None
        bucket = self._buckets[key] = _Bucket(self._quota._cap, now_ns)
        return bucket

    def _admit_at(self, key: Any, now_ns: int) -> bool:
        assert self._quota is not None
        mask = self._quota._mask
        with self._lock:
            b = self._bucket(key, now_ns)
            if ((mask & 1 and b.level[0] < 1.0) or (mask & 2 and b.level[1] <= 0.0)
                    or (mask & 4 and b.level[2] <= 0.0)):
                b.refused += 1
                return False
            if mask & 1:
                b.level[0] -= 1.0
            b.admitted += 1
            return True

    def _debit_at(self, key: Any, cpu_ms: float, wall_ms: float, now_ns: int) -> None:
        assert self._quota is not None
        mask = self._quota._mask
        with self._lock:
            b = self._bucket(key, now_ns)
            if mask & 2:
                b.level[1] -= cpu_ms
            if mask & 4:
                b.level[2] -= wall_ms

    def _prune(self, now_ns: int) -> None:
        q = self._quota
        assert q is not None
        drop = []
        for key, b in self._buckets.items():
            self._refill(b, now_ns)
            if all(b.level[i] >= q._cap[i] for i in range(3) if q._mask & (1 << i)):
                drop.append(key)
        for key in drop:
            del self._buckets[key]
        self._prune_at = max(1024, 2 * len(self._buckets))

    # -- the store protocol ------------------------------------------------------
    def _bind(self, quota: "Quota") -> None:
        if self._quota is not None and self._quota is not quota:
            raise InvalidConfiguration(
                f"a LocalQuotaStore serves one Quota; {self!r} already serves {self._quota!r}"
            )
        if type(quota) is not Quota:
            raise InvalidConfiguration(
                f"a pure-Python LocalQuotaStore serves a pure-Python Quota, got {quota!r}"
            )
        self._quota = quota

    def _check_bound(self) -> "Quota":
        if self._quota is None:
            raise InvalidConfiguration(f"{self!r} is not the store of any Quota yet")
        return self._quota

    def remaining(self, key: Any) -> Dict[str, float]:
        """What is left for ``key`` now: {resource: amount} for the limited ones."""
        q = self._check_bound()
        key = _quota_config.check_key(key)
        with self._lock:
            b = self._bucket(key, _monotonic_ns())
            return {name: b.level[i] for i, name in enumerate(RESOURCES)
                    if q._mask & (1 << i)}

    def usage(self, key: Any) -> Dict[str, Any]:
        """How much of ``key``'s buckets is used now (capacity - what is left; more
        than the capacity while in debt), and how many calls it had admitted and
        refused since its bucket was last full."""
        q = self._check_bound()
        key = _quota_config.check_key(key)
        with self._lock:
            b = self._bucket(key, _monotonic_ns())
            out: Dict[str, Any] = {name: q._cap[i] - b.level[i]
                                   for i, name in enumerate(RESOURCES) if q._mask & (1 << i)}
            out["admitted"] = b.admitted
            out["refused"] = b.refused
            return out

    def reset(self, key: Any) -> None:
        """Forget ``key``: its buckets are full again."""
        key = _quota_config.check_key(key)
        with self._lock:
            self._buckets.pop(key, None)

    def keys(self) -> List[Any]:
        """The flow keys with a bucket (full buckets may have been dropped)."""
        with self._lock:
            return list(self._buckets)

    def __repr__(self) -> str:
        return f"<LocalQuotaStore keys={len(self._buckets)}>"


class _Lease:
    __slots__ = ("left", "spent", "granted_ns", "expires_ns")

    def __init__(self) -> None:
        self.left = [0.0, 0.0, 0.0]
        self.spent = [0.0, 0.0, 0.0]
        self.granted_ns = 0
        self.expires_ns = 0


class _LeaseTable:
    """Leases of capacity taken from a fleet-wide bucket, spent in this process
    (twin of the compiled table; a lock where that one relies on the GIL)."""

    def __init__(self, mask: int) -> None:
        self._leases: Dict[Any, _Lease] = {}
        self._mask = mask
        self._lock = threading.Lock()

    def spend(self, key: Any, now_ns: int) -> bool:
        mask = self._mask
        with self._lock:
            lease = self._leases.get(key)
            if lease is None:
                return False
            left = lease.left
            if (now_ns >= lease.expires_ns or (mask & 1 and left[0] < 1.0)
                    or (mask & 2 and left[1] <= 0.0) or (mask & 4 and left[2] <= 0.0)):
                return False
            if mask & 1:
                left[0] -= 1.0
                lease.spent[0] += 1.0
            return True

    def debit(self, key: Any, cpu_ms: float, wall_ms: float) -> None:
        with self._lock:
            lease = self._leases.setdefault(key, _Lease())
            lease.left[1] -= cpu_ms
            lease.spent[1] += cpu_ms
            lease.left[2] -= wall_ms
            lease.spent[2] += wall_ms

    def take(self, key: Any, now_ns: int) -> Any:
        """Empty the key's lease for a refill: (what was left, per second spent since
        it was granted), each a 3-tuple; the lease is then expired."""
        with self._lock:
            lease = self._leases.setdefault(key, _Lease())
            elapsed_s = (now_ns - lease.granted_ns) / 1e9 if lease.granted_ns else 0.0
            left = tuple(lease.left)
            rates = tuple(x / elapsed_s if elapsed_s > 0 else 0.0 for x in lease.spent)
            for i in range(3):
                lease.left[i] -= left[i]
                lease.spent[i] = 0.0
            lease.expires_ns = 0
            return left, rates

    def give(self, key: Any, grants: Any, now_ns: int, expires_ns: int) -> None:
        """Add granted capacity (a 3-tuple) to the key's lease, live until expires_ns."""
        with self._lock:
            lease = self._leases.setdefault(key, _Lease())
            for i in range(3):
                lease.left[i] += grants[i]
            lease.granted_ns = now_ns
            lease.expires_ns = expires_ns

    def left(self, key: Any) -> Any:
        with self._lock:
            lease = self._leases.get(key)
            return (0.0, 0.0, 0.0) if lease is None else tuple(lease.left)

    def drop(self, key: Any) -> None:
        with self._lock:
            self._leases.pop(key, None)

    def keys(self) -> List[Any]:
        with self._lock:
            return list(self._leases)


class Quota:
    """A quota per flow key: ``calls`` calls, ``cpu_ms`` ms of measured CPU time
    and ``wall_ms`` ms of wall time every ``per_s`` seconds, refilled
    continuously; a bucket holds at most ``burst`` periods' worth (default 1).

    ``store``: ``LocalQuotaStore()`` (default: in process) or
    ``fastpath.redis.RedisQuotaStore`` (fleet-wide); one store serves one quota.
    """

    def __init__(self, *, calls: Optional[float] = None, cpu_ms: Optional[float] = None,
                 wall_ms: Optional[float] = None, per_s: float = 1.0,
                 burst: Optional[float] = None, store: Any = None) -> None:
        rates, caps, mask = _quota_config.normalize(calls, cpu_ms, wall_ms, per_s, burst)
        self._rate = list(rates)
        self._cap = list(caps)
        self._mask = mask
        self.per_s = float(per_s)
        self.burst = burst
        self.tracks_cpu = bool(mask & 2)
        self.debits = bool(mask & 6)
        if store is None:
            store = LocalQuotaStore()
        if not hasattr(store, "_bind"):
            raise InvalidConfiguration(
                f"Quota store must be a LocalQuotaStore or a RedisQuotaStore, got {store!r}"
            )
        store._bind(self)
        self.store = store
        self._local = store if type(store) is LocalQuotaStore else None
        self._leases: Optional[_LeaseTable] = None if self._local is not None else store._leases
        self.is_async = bool(getattr(store, "is_async", False))

    def _new_lease_table(self) -> _LeaseTable:
        """A lease table of this core, for a fleet-wide store's _bind()."""
        return _LeaseTable(self._mask)

    def admit(self, key: Any) -> bool:
        """Admit one call for ``key`` now (taking one call); False: refused, nothing taken."""
        if self._local is not None:
            return self._local._admit_at(key, _monotonic_ns())
        assert self._leases is not None
        if self._leases.spend(key, _monotonic_ns()):
            return True     # spent from this process's lease: no round trip
        return bool(self.store._admit(key))

    def _spend_lease(self, key: Any) -> bool:
        """Async rules: one call from this process's lease (True), or False when
        the store must fetch one (``await store._admit_async(key)``)."""
        return self._leases is not None and self._leases.spend(key, _monotonic_ns())

    def debit(self, key: Any, cpu_ns: int, wall_ns: int) -> None:
        """Charge a finished call's measured CPU and wall time (ns) to ``key``."""
        cpu_ms = cpu_ns / 1e6 if self._mask & 2 else 0.0
        wall_ms = wall_ns / 1e6 if self._mask & 4 else 0.0
        if self._local is not None:
            self._local._debit_at(key, cpu_ms, wall_ms, _monotonic_ns())
        else:
            assert self._leases is not None
            self._leases.debit(key, cpu_ms, wall_ms)

    def remaining(self, key: Any) -> Dict[str, float]:
        """What is left for ``key`` now: {"calls": n, "cpu_ms": ms, "wall_ms": ms}
        for the limited resources (below zero while in debt)."""
        return self.store.remaining(key)  # type: ignore[no-any-return]

    def _spec(self) -> Any:
        """(rates per ns, capacities, mask): what a store needs to keep buckets."""
        return tuple(self._rate), tuple(self._cap), self._mask

    def __repr__(self) -> str:
        limits = _quota_config.describe(self._mask, self._rate, self._cap, self.per_s)
        return f"Quota({limits}, per_s={self.per_s:g}, burst={self.burst!r}, store={self.store!r})"
