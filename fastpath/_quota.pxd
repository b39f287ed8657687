# The C-level API of fastpath's quota core.
#
# The compiled enforcer (``_budget.pyx``) does ``from fastpath._quota cimport
# Quota`` and calls ``admit_c`` / ``debit_c`` through the vtable: with a
# LocalQuotaStore that is C all the way (a dict lookup and a few doubles),
# no Python call.  Call them with the GIL held: the GIL is what keeps the
# buckets exact under threads (on a free-threaded build, a critical section
# on the store or lease table: _fp_atomic.h).  Field layout is part of this API.

cimport cython
from libc.stdint cimport int64_t, uint64_t


cdef extern from "_fp_atomic.h":
    # A critical section on an object: nothing on GIL builds.
    ctypedef struct fp_cs:
        pass
    void fp_cs_begin(fp_cs *cs, object obj) noexcept
    void fp_cs_end(fp_cs *cs) noexcept


@cython.final
cdef class _Bucket:
    cdef double level[3]               # what is left of calls, cpu ms, wall ms (may be < 0: debt)
    cdef int64_t last_ns               # when level was last refilled (monotonic ns)
    cdef uint64_t admitted             # calls admitted for this key
    cdef uint64_t refused              # calls refused for this key


@cython.final
cdef class LocalQuotaStore:
    cdef dict _buckets                 # flow key -> _Bucket; a full bucket is the same as none
    cdef Py_ssize_t _prune_at          # drop full buckets when the dict grows past this
    cdef object _last_key              # the key looked up last (a flow calls many times) ...
    cdef _Bucket _last_bucket          # ... and its bucket; both None after a prune or reset
    cdef Quota _quota                  # the one quota this store serves (None until bound)

    # 1: admitted (one call taken), 0: refused (nothing taken).
    cdef int admit_c(self, object key, int64_t now_ns) except -1
    # Charge a finished call's measured CPU and wall time (ms); never refuses.
    cdef int debit_c(self, object key, double cpu_ms, double wall_ms, int64_t now_ns) except -1
    cdef _Bucket _bucket(self, object key, int64_t now_ns)


@cython.final
cdef class _Lease:
    cdef double left[3]                # capacity of the lease not spent yet (< 0: debt)
    cdef double spent[3]               # spent since granted_ns (sizes the next lease)
    cdef int64_t granted_ns            # when the current lease was granted (monotonic ns)
    cdef int64_t expires_ns            # past this, the lease is returned at the next call


@cython.final
cdef class _LeaseTable:
    # The leases a fleet-wide store (RedisQuotaStore) holds in this process: the
    # per-call path spends them here, in C; the store's Python code refills them.
    cdef dict _leases                  # flow key -> _Lease
    cdef int _mask                     # the quota's limited resources

    # 1: spent one call from a live lease, 0: the store must fetch (no round trip here).
    cdef int spend_c(self, object key, int64_t now_ns) except -1
    # Charge a finished call's measured CPU and wall ms to the key's lease.
    cdef int debit_c(self, object key, double cpu_ms, double wall_ms) except -1


@cython.final
cdef class Quota:
    cdef double _rate[3]               # refill per ns: calls, cpu ms, wall ms
    cdef double _cap[3]                # the most each bucket holds (burst)
    cdef int _mask                     # bit i set: resource i is limited
    cdef readonly double per_s         # the refill period, seconds
    cdef readonly object burst         # periods' worth a bucket holds (None: 1)
    cdef readonly object store         # LocalQuotaStore or a Python store (RedisQuotaStore)
    cdef LocalQuotaStore _local        # store, when it is a LocalQuotaStore; else None
    cdef _LeaseTable _leases           # the leases of a fleet-wide store; else None
    cdef readonly bint tracks_cpu      # cpu_ms is limited: the enforcer reads the CPU clock
    cdef readonly bint debits          # cpu_ms or wall_ms is limited: calls are debited after
    cdef readonly bint is_async        # the store needs awaiting (redis.asyncio)

    # 1: admitted, 2: admitted after a fleet-wide store's refill (time passed: a budget
    # made before is stale), 0: refused; a store's own errors are its policy, never raised.
    cdef int admit_c(self, object key, int64_t now_ns) except -1
    # Debit a finished call: measured CPU and wall time in ns.
    cdef int debit_c(self, object key, int64_t cpu_ns, int64_t wall_ns, int64_t now_ns) except -1


# -- the per-call admission, inlined into the enforcer's pipeline -----------------

cdef inline void quota_refill(Quota q, _Bucket bucket, int64_t now_ns) noexcept:
    # Add what q refilled into bucket since it was last refilled (capped at burst).
    cdef int64_t dt = now_ns - bucket.last_ns
    cdef int i
    if dt <= 0:
        return      # same instant, or two clocks a hair apart: nothing to add
    bucket.last_ns = now_ns
    for i in range(3):
        if q._mask & (1 << i) and bucket.level[i] < q._cap[i]:
            bucket.level[i] += q._rate[i] * dt
            if bucket.level[i] > q._cap[i]:
                bucket.level[i] = q._cap[i]


cdef inline int quota_take(Quota q, _Bucket b) noexcept:
    # Admit one call from a refilled bucket: 1 (one call taken) or 0 (refused,
    # nothing taken: a resource is at or below zero, or less than a call is left).
    cdef int mask = q._mask
    if ((mask & 1 and b.level[0] < 1.0) or (mask & 2 and b.level[1] <= 0.0)
            or (mask & 4 and b.level[2] <= 0.0)):
        b.refused += 1
        return 0
    if mask & 1:
        b.level[0] -= 1.0
    b.admitted += 1
    return 1


cdef inline int quota_admit(Quota q, object key, int64_t now_ns) except -1:
    # Quota.admit_c, with a local store's usual case (the flow key of the last
    # call again) done here: no call, no hashing, no dict lookup.
    cdef LocalQuotaStore store = q._local
    cdef _Bucket bucket
    cdef fp_cs cs
    cdef int taken
    if store is not None:
        fp_cs_begin(&cs, store)
        if key is store._last_key and store._last_bucket is not None:
            bucket = store._last_bucket
            quota_refill(q, bucket, now_ns)
            taken = quota_take(q, bucket)
            fp_cs_end(&cs)
            return taken
        fp_cs_end(&cs)
    return q.admit_c(key, now_ns)
