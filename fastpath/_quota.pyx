# The compiled quota core: Quota and LocalQuotaStore (twin: _quota_py.py).
#
# A token bucket per flow key and resource (calls, CPU ms, wall ms), refilled
# continuously at rate = amount / per_s and capped at amount * burst.  A call
# is admitted when every limited resource is above zero (calls: at least one
# whole call left); admission takes one call, and the call's measured CPU and
# wall time are debited when it ends (a bucket may go below zero: the debt
# refuses the next calls until the refill pays it back).  A refused call takes
# nothing.  Everything runs with the GIL held and never calls Python code
# between reading and writing a bucket, so the buckets are exact under threads;
# on a free-threaded build the store's and the lease table's methods run inside
# a critical section on the store / table (fp_cs_*, _fp_atomic.h), which a key's
# __eq__ / __hash__ run during a lookup cannot deadlock.
cimport cython
from libc.stdint cimport int64_t
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from fastpath import _quota_config
from fastpath._quota_config import RESOURCES
from fastpath.errors import InvalidConfiguration

cdef tuple _RESOURCES = RESOURCES


cdef inline int64_t _mono_ns() noexcept:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


def _monotonic_ns():
    """The clock the buckets are refilled by (CLOCK_MONOTONIC, ns)."""
    return _mono_ns()


@cython.final
@cython.no_gc
cdef class _Bucket:
    pass


@cython.final
cdef class LocalQuotaStore:
    """The in-process quota store (the default): one bucket per flow key, in
    compiled code, exact under threads.  One store serves one Quota."""

    def __init__(self):
        self._buckets = {}
        self._prune_at = 1024

    cdef _Bucket _bucket(self, object key, int64_t now_ns):
        cdef object found
        cdef _Bucket bucket
        cdef int i
        if key is self._last_key and self._last_bucket is not None:
            bucket = self._last_bucket      # the same object again: no hashing, no lookup
            quota_refill(self._quota, bucket, now_ns)
            return bucket
        found = self._buckets.get(key)
        if found is not None:
            bucket = <_Bucket>found
            quota_refill(self._quota, bucket, now_ns)
            self._last_key = key
            self._last_bucket = bucket
            return bucket
        if len(self._buckets) >= self._prune_at:
            self._prune(now_ns)
        bucket = _Bucket.__new__(_Bucket)
        for i in range(3):
            bucket.level[i] = self._quota._cap[i]
        bucket.last_ns = now_ns
        # setdefault: a key with a custom __eq__ may run Python code (and let
        # another thread in) during the lookup; both threads then share one bucket.
        bucket = <_Bucket>self._buckets.setdefault(key, bucket)
        self._last_key = key
        self._last_bucket = bucket
        return bucket

    cdef int admit_c(self, object key, int64_t now_ns) except -1:
        cdef fp_cs cs
        fp_cs_begin(&cs, self)
        try:
            return quota_take(self._quota, self._bucket(key, now_ns))
        finally:
            fp_cs_end(&cs)

    cdef int debit_c(self, object key, double cpu_ms, double wall_ms, int64_t now_ns) except -1:
        cdef _Bucket b
        cdef int mask = self._quota._mask
        cdef fp_cs cs
        fp_cs_begin(&cs, self)
        try:
            b = self._bucket(key, now_ns)
            if mask & 2:
                b.level[1] -= cpu_ms
            if mask & 4:
                b.level[2] -= wall_ms
        finally:
            fp_cs_end(&cs)
        return 0

    def _prune(self, int64_t now_ns):
        # Full buckets hold no information (a new bucket starts full): drop them
        # so that a stream of one-off keys does not grow the dict without bound.
        cdef _Bucket b
        cdef int i
        cdef bint full
        cdef list drop = []
        self._last_key = self._last_bucket = None
        for key, value in self._buckets.items():
            b = <_Bucket>value
            quota_refill(self._quota, b, now_ns)
            full = True
            for i in range(3):
                if self._quota._mask & (1 << i) and b.level[i] < self._quota._cap[i]:
                    full = False
            if full:
                drop.append(key)
        for key in drop:
            del self._buckets[key]
        self._prune_at = max(1024, 2 * len(self._buckets))

    # -- the store protocol (Python level, off the per-call path) -------------
    def _bind(self, quota):
        if self._quota is not None and self._quota is not quota:
            raise InvalidConfiguration(
                f"a LocalQuotaStore serves one Quota; {self!r} already serves {self._quota!r}"
            )
        if type(quota) is not Quota:
            raise InvalidConfiguration(
                f"a compiled LocalQuotaStore serves a compiled Quota, got {quota!r}"
            )
        self._quota = quota

    def _check_bound(self):
        if self._quota is None:
            raise InvalidConfiguration(f"{self!r} is not the store of any Quota yet")

    def remaining(self, key):
        """What is left for ``key`` now: {resource: amount} for the limited ones."""
        self._check_bound()
        key = _quota_config.check_key(key)
        cdef fp_cs cs
        cdef double level[3]
        fp_cs_begin(&cs, self)
        try:
            b = self._bucket(key, _mono_ns())
            level = b.level
        finally:
            fp_cs_end(&cs)
        return {name: level[i] for i, name in enumerate(_RESOURCES)
                if self._quota._mask & (1 << i)}

    def usage(self, key):
        """How much of ``key``'s buckets is used now (capacity - what is left; more
        than the capacity while in debt), and how many calls it had admitted and
        refused since its bucket was last full."""
        self._check_bound()
        key = _quota_config.check_key(key)
        cdef fp_cs cs
        cdef double level[3]
        cdef uint64_t admitted, refused
        fp_cs_begin(&cs, self)
        try:
            b = self._bucket(key, _mono_ns())
            level = b.level
            admitted = b.admitted
            refused = b.refused
        finally:
            fp_cs_end(&cs)
        out = {name: self._quota._cap[i] - level[i] for i, name in enumerate(_RESOURCES)
               if self._quota._mask & (1 << i)}
        out["admitted"] = admitted
        out["refused"] = refused
        return out

    def reset(self, key):
        """Forget ``key``: its buckets are full again."""
        key = _quota_config.check_key(key)
        cdef fp_cs cs
        fp_cs_begin(&cs, self)
        try:
            self._last_key = self._last_bucket = None
            self._buckets.pop(key, None)
        finally:
            fp_cs_end(&cs)

    def keys(self):
        """The flow keys with a bucket (full buckets may have been dropped)."""
        return list(self._buckets)

    def __repr__(self):
        return f"<LocalQuotaStore keys={len(self._buckets)}>"


@cython.final
@cython.no_gc
cdef class _Lease:
    pass


@cython.final
cdef class _LeaseTable:
    """Leases of capacity taken from a fleet-wide bucket, spent in this process.

    spend_c / debit_c are the per-call path (C, GIL held: exact under threads);
    take / give / drop are the store's refill path.  give() adds to what is
    left and take() subtracts, so debits landing while a refill is in flight
    are never lost."""

    def __init__(self, int mask):
        self._leases = {}
        self._mask = mask

    cdef int spend_c(self, object key, int64_t now_ns) except -1:
        cdef object found = self._leases.get(key)
        cdef _Lease lease
        cdef int mask = self._mask
        cdef int spent = 0
        cdef fp_cs cs
        if found is None:
            return 0
        lease = <_Lease>found
        fp_cs_begin(&cs, self)
        if not (now_ns >= lease.expires_ns or (mask & 1 and lease.left[0] < 1.0)
                or (mask & 2 and lease.left[1] <= 0.0) or (mask & 4 and lease.left[2] <= 0.0)):
            if mask & 1:
                lease.left[0] -= 1.0
                lease.spent[0] += 1.0
            spent = 1
        fp_cs_end(&cs)
        return spent

    cdef int debit_c(self, object key, double cpu_ms, double wall_ms) except -1:
        cdef object found = self._leases.get(key)
        cdef _Lease lease
        cdef fp_cs cs
        if found is None:
            found = self._leases.setdefault(key, _new_lease())
        lease = <_Lease>found
        fp_cs_begin(&cs, self)
        lease.left[1] -= cpu_ms
        lease.spent[1] += cpu_ms
        lease.left[2] -= wall_ms
        lease.spent[2] += wall_ms
        fp_cs_end(&cs)
        return 0

    def spend(self, key, int64_t now_ns):
        """spend_c from Python (the store's slow path, after a refill)."""
        return self.spend_c(key, now_ns) == 1

    def debit(self, key, double cpu_ms, double wall_ms):
        self.debit_c(key, cpu_ms, wall_ms)

    def take(self, key, int64_t now_ns):
        """Empty the key's lease for a refill: (what was left, per second spent since
        it was granted), each a 3-tuple; the lease is then expired."""
        cdef _Lease lease = <_Lease>self._leases.setdefault(key, _new_lease())
        cdef double elapsed_s
        cdef double left[3]
        cdef double spent[3]
        cdef int i
        cdef fp_cs cs
        fp_cs_begin(&cs, self)
        elapsed_s = (now_ns - lease.granted_ns) / 1e9 if lease.granted_ns else 0.0
        for i in range(3):
            left[i] = lease.left[i]
            spent[i] = lease.spent[i]
            lease.left[i] -= left[i]
            lease.spent[i] = 0.0
        lease.expires_ns = 0
        fp_cs_end(&cs)
        rates = tuple([spent[i] / elapsed_s if elapsed_s > 0 else 0.0 for i in range(3)])
        return (left[0], left[1], left[2]), rates

    def give(self, key, grants, int64_t now_ns, int64_t expires_ns):
        """Add granted capacity (a 3-tuple) to the key's lease, live until expires_ns."""
        cdef _Lease lease = <_Lease>self._leases.setdefault(key, _new_lease())
        cdef double add[3]
        cdef int i
        cdef fp_cs cs
        for i in range(3):
            add[i] = grants[i]
        fp_cs_begin(&cs, self)
        for i in range(3):
            lease.left[i] += add[i]
        lease.granted_ns = now_ns
        lease.expires_ns = expires_ns
        fp_cs_end(&cs)

    def left(self, key):
        """What is left of the key's lease (a 3-tuple of zeros without one)."""
        cdef object found = self._leases.get(key)
        cdef _Lease lease
        if found is None:
            return (0.0, 0.0, 0.0)
        lease = <_Lease>found
        return (lease.left[0], lease.left[1], lease.left[2])

    def drop(self, key):
        self._leases.pop(key, None)

    def keys(self):
        return list(self._leases)


cdef _Lease _new_lease():
    cdef _Lease lease = _Lease.__new__(_Lease)
    return lease


@cython.final
cdef class Quota:
    """A quota per flow key: ``calls`` calls, ``cpu_ms`` ms of measured CPU time
    and ``wall_ms`` ms of wall time every ``per_s`` seconds, refilled
    continuously; a bucket holds at most ``burst`` periods' worth (default 1).

    ``store``: ``LocalQuotaStore()`` (default: in process) or
    ``fastpath.redis.RedisQuotaStore`` (fleet-wide); one store serves one quota.
    """

    def __init__(self, *, calls=None, cpu_ms=None, wall_ms=None, per_s=1.0, burst=None,
                 store=None):
        cdef int i
        rates, caps, mask = _quota_config.normalize(calls, cpu_ms, wall_ms, per_s, burst)
        for i in range(3):
            self._rate[i] = rates[i]
            self._cap[i] = caps[i]
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
        if self._local is None:
            self._leases = store._leases
        self.is_async = bool(getattr(store, "is_async", False))

    def _new_lease_table(self):
        """A lease table of this core, for a fleet-wide store's _bind()."""
        return _LeaseTable(self._mask)

    cdef int admit_c(self, object key, int64_t now_ns) except -1:
        if self._local is not None:
            return self._local.admit_c(key, now_ns)
        if self._leases.spend_c(key, now_ns):
            return 1        # spent from this process's lease: no round trip
        return 2 if self.store._admit(key) else 0      # 2: admitted after the store's work

    cdef int debit_c(self, object key, int64_t cpu_ns, int64_t wall_ns, int64_t now_ns) except -1:
        cdef double cpu_ms = cpu_ns / 1e6 if self._mask & 2 else 0.0
        cdef double wall_ms = wall_ns / 1e6 if self._mask & 4 else 0.0
        if self._local is not None:
            return self._local.debit_c(key, cpu_ms, wall_ms, now_ns)
        return self._leases.debit_c(key, cpu_ms, wall_ms)

    # -- Python level: the twin enforcer path, async rules, tests -------------
    def admit(self, key):
        """Admit one call for ``key`` now (taking one call); False: refused, nothing taken."""
        return self.admit_c(key, _mono_ns()) != 0

    def _spend_lease(self, key):
        """Async rules: one call from this process's lease (True), or False when
        the store must fetch one (``await store._admit_async(key)``)."""
        return self._leases is not None and self._leases.spend_c(key, _mono_ns()) == 1

    def debit(self, key, cpu_ns, wall_ns):
        """Charge a finished call's measured CPU and wall time (ns) to ``key``."""
        self.debit_c(key, cpu_ns, wall_ns, _mono_ns())

    def remaining(self, key):
        """What is left for ``key`` now: {"calls": n, "cpu_ms": ms, "wall_ms": ms}
        for the limited resources (below zero while in debt)."""
        return self.store.remaining(key)

    def _spec(self):
        """(rates per ns, capacities, mask): what a store needs to keep buckets."""
        return ((self._rate[0], self._rate[1], self._rate[2]),
                (self._cap[0], self._cap[1], self._cap[2]), self._mask)

    def __repr__(self):
        limits = _quota_config.describe(self._mask, self._spec()[0], self._spec()[1],
                                        self.per_s)
        return f"Quota({limits}, per_s={self.per_s:g}, burst={self.burst!r}, store={self.store!r})"
