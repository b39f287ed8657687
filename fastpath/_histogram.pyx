# LatencyHistogram: a log-linear histogram of durations in nanoseconds.
#
# record() / record_c() is the hot path: a bucket index from the position of the
# value's highest bit, a few integer adds, nothing allocated, numpy untouched.
# Everything else (percentiles, summary, validation, pickling) runs off that
# path and is shared with the pure-Python twin through fastpath._histogram_shared.
cimport cython
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_FromStringAndSize
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_CheckExact
from cpython.mem cimport PyMem_Calloc, PyMem_Free
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcpy, memset

from fastpath import _histogram_shared as _shared
from fastpath.errors import InvalidConfiguration

cdef extern from "_fp_atomic.h":
    # A critical section on the histogram: nothing on GIL builds.
    ctypedef struct fp_cs:
        pass
    ctypedef struct fp_cs2:
        pass
    void fp_cs_begin(fp_cs *cs, object obj) noexcept
    void fp_cs_end(fp_cs *cs) noexcept
    void fp_cs2_begin(fp_cs2 *cs, object a, object b) noexcept
    void fp_cs2_end(fp_cs2 *cs) noexcept

cdef extern from *:
    """
    /* Bucket layout: see fastpath/_histogram_shared.py (checked at import). */
    #define FP_HIST_EXACT 256                   /* 0..255 ns: one bucket each */
    #define FP_HIST_SUB_BITS 7                  /* 128 sub-buckets per power of two */
    #define FP_HIST_MAX_NS 3600000000000LL      /* one hour: larger values clamp */
    #define FP_HIST_NBUCKETS 4562               /* fp_hist_index(FP_HIST_MAX_NS) + 1 */
    #define FP_INT64_MAX_ INT64_MAX

    /* The bucket of v in 0..FP_HIST_MAX_NS: v itself below 256, else the top
     * 8 bits of v plus 128 for every bit v has beyond those 8. */
    static inline int fp_hist_index(uint64_t v)
    {
        int shift;
        if (v < FP_HIST_EXACT)
            return (int)v;
        shift = 63 - __builtin_clzll(v) - FP_HIST_SUB_BITS;
        return (shift << FP_HIST_SUB_BITS) + (int)(v >> shift);
    }
    """
    int FP_HIST_EXACT
    int FP_HIST_SUB_BITS
    int64_t FP_HIST_MAX_NS
    int FP_HIST_NBUCKETS
    int64_t FP_INT64_MAX "FP_INT64_MAX_"
    int fp_hist_index(uint64_t v) noexcept nogil

# The C layout and the Python one (used by the twin, bucket_values() and
# pickling) must be the same function.
if (FP_HIST_EXACT != _shared.EXACT_LIMIT
        or (1 << FP_HIST_SUB_BITS) != _shared.SUB_BUCKETS
        or FP_HIST_MAX_NS != _shared.MAX_NS
        or FP_HIST_NBUCKETS != _shared.NBUCKETS
        or fp_hist_index(FP_HIST_MAX_NS) != FP_HIST_NBUCKETS - 1):
    raise ImportError("fastpath._histogram: C and Python bucket layouts differ")

cdef object _ns_from_object = _shared.ns_from_object
cdef object _check_q = _shared.check_q
cdef object _percentiles = _shared.percentiles


@cython.final
cdef class LatencyHistogram:
    """LatencyHistogram()
--

A log-linear histogram of durations in nanoseconds.

    record(ns) is O(1), allocates nothing and touches no numpy.  Buckets: one
    per value for 0..255 ns, then 128 linear sub-buckets per power of two up
    to one hour (3_600_000_000_000 ns), 4562 in all; a bucket's representative
    value (bucket_values()) is its midpoint, within 1/256 (0.39 %) of every
    value in it.  Negative values are recorded as 0 and counted in
    clamped_low; values above one hour are recorded as one hour and counted
    in clamped_high.  min, max and the sum (128-bit, exact) are kept exactly;
    the mean is that sum divided by the count.

    Thread-safe: each record is one C call under the GIL (or, on a
    free-threaded build, inside a critical section on the histogram), so
    counts stay exact with several threads recording.  Picklable; no __eq__.
    """

    def __cinit__(self):
        self._counts = <uint64_t *>PyMem_Calloc(FP_HIST_NBUCKETS, sizeof(uint64_t))
        if self._counts == NULL:
            raise MemoryError("fastpath: no memory for a LatencyHistogram")
        self._min_ns = FP_HIST_MAX_NS + 1
        self._max_ns = -1

    def __init__(self, *args, **kwargs):
        if args or kwargs:      # (a __cinit__ without arguments would ignore them)
            _shared.constructor_args(*args, **kwargs)

    def __dealloc__(self):
        PyMem_Free(self._counts)

    # -- hot path --------------------------------------------------------------
    cdef void record_c(self, int64_t ns) noexcept:
        cdef uint64_t lo
        cdef fp_cs cs
        fp_cs_begin(&cs, self)
        if ns < 0:
            ns = 0
            self._clamped_low += 1
        elif ns > FP_HIST_MAX_NS:
            ns = FP_HIST_MAX_NS
            self._clamped_high += 1
        self._counts[fp_hist_index(<uint64_t>ns)] += 1
        self._count += 1
        lo = self._sum_lo + <uint64_t>ns
        self._sum_hi += lo < self._sum_lo       # carry into the high word
        self._sum_lo = lo
        if ns < self._min_ns:
            self._min_ns = ns
        if ns > self._max_ns:
            self._max_ns = ns
        fp_cs_end(&cs)

    def record(self, ns):
        """Record one duration in ns (an int or an object with __index__).

        Out-of-range values never raise: negative ones are recorded as 0 and
        larger than one hour as one hour, and counted (summary()'s clamped_low
        / clamped_high).  A non-integer (float, str, None, bool) raises TypeError.
        """
        cdef int overflow = 0
        cdef long long value
        if PyLong_CheckExact(ns):
            value = PyLong_AsLongLongAndOverflow(ns, &overflow)
            if overflow:
                value = -1 if overflow < 0 else FP_INT64_MAX
            self.record_c(value)
        else:
            self.record_c(_ns_from_object(ns))

    # -- merge / reset ---------------------------------------------------------
    cdef int merge_c(self, LatencyHistogram other) except -1:
        cdef int i
        cdef uint64_t lo
        cdef fp_cs2 cs
        if other is None:
            raise InvalidConfiguration("merge() needs a LatencyHistogram, got None")
        fp_cs2_begin(&cs, self, other)
        for i in range(FP_HIST_NBUCKETS):
            self._counts[i] += other._counts[i]
        self._count += other._count
        lo = self._sum_lo + other._sum_lo
        self._sum_hi += other._sum_hi + (lo < self._sum_lo)
        self._sum_lo = lo
        self._min_ns = min(self._min_ns, other._min_ns)
        self._max_ns = max(self._max_ns, other._max_ns)
        self._clamped_low += other._clamped_low
        self._clamped_high += other._clamped_high
        fp_cs2_end(&cs)
        return 0

    def merge(self, other):
        """Add everything other (a LatencyHistogram; may be self) has recorded.

        Returns None; other is unchanged.  Anything but a LatencyHistogram of
        this implementation raises InvalidConfiguration.
        """
        _shared.check_other("merge", other, LatencyHistogram)
        self.merge_c(<LatencyHistogram>other)

    cdef void reset_c(self) noexcept:
        cdef fp_cs cs
        fp_cs_begin(&cs, self)
        memset(self._counts, 0, FP_HIST_NBUCKETS * sizeof(uint64_t))
        self._count = self._sum_lo = self._sum_hi = 0
        self._clamped_low = self._clamped_high = 0
        self._min_ns = FP_HIST_MAX_NS + 1
        self._max_ns = -1
        fp_cs_end(&cs)

    def reset(self):
        """Forget everything recorded (the histogram is empty again)."""
        self.reset_c()

    # -- reading ---------------------------------------------------------------
    @property
    def count(self):
        """Number of values recorded, clamped ones included."""
        return self._count

    cdef object _sum(self):
        cdef fp_cs cs
        fp_cs_begin(&cs, self)
        cdef uint64_t sum_lo = self._sum_lo, sum_hi = self._sum_hi
        fp_cs_end(&cs)
        cdef object high = sum_hi
        return (high << 64) | sum_lo

    cdef tuple _snapshot(self):
        cdef Py_ssize_t nbytes = FP_HIST_NBUCKETS * sizeof(uint64_t)
        cdef bytearray buf = PyByteArray_FromStringAndSize(NULL, nbytes)
        # Copy everything with no Python code in between (no allocation, so no
        # GC, finaliser or thread switch either), inside the histogram's critical
        # section on a free-threaded build: a consistent snapshot.
        cdef fp_cs cs
        fp_cs_begin(&cs, self)
        memcpy(PyByteArray_AS_STRING(buf), self._counts, nbytes)
        cdef uint64_t count = self._count, sum_lo = self._sum_lo, sum_hi = self._sum_hi
        cdef uint64_t low = self._clamped_low, high = self._clamped_high
        cdef int64_t min_ns = self._min_ns, max_ns = self._max_ns
        fp_cs_end(&cs)
        cdef object sum_ns = sum_hi
        sum_ns = (sum_ns << 64) | sum_lo
        return (buf, count, sum_ns, min_ns, max_ns, low, high)

    def counts(self):
        """A new numpy uint64 array (a copy) of the count of every bucket."""
        import numpy
        return numpy.frombuffer(self._snapshot()[0], dtype=numpy.uint64)

    def bucket_values(self):
        """A new numpy int64 array of every bucket's representative value: the
        value itself below 256 ns, else the bucket's midpoint (lower + width // 2)."""
        return _shared.bucket_values()

    def percentile(self, q):
        """The q-th percentile (q in [0, 100]) in ns as an int, or None when empty.

        The rank is ceil(count * q / 100) computed as
        numpy.percentile(..., method="inverted_cdf") does; the answer is the
        representative value of the first bucket whose cumulative count
        reaches it, clamped into [min, max] -- within 1/256 (relative) of the
        exact order statistic, exact below 256 ns.  Rank <= 1 gives the exact
        minimum, rank count the exact maximum.  A q that is not a real number within
        [0, 100] raises InvalidConfiguration (even when empty).
        """
        cdef double value = _check_q(q)
        buf, count, _, min_ns, max_ns, _, _ = self._snapshot()
        if count == 0:
            return None
        import numpy
        counts = numpy.frombuffer(buf, dtype=numpy.uint64)
        return _percentiles(counts, count, min_ns, max_ns, (value,))[0]

    def summary(self):
        """A dict: count, mean_ns, min_ns, max_ns, p50_ns, p90_ns, p99_ns,
        p999_ns, clamped_low, clamped_high.

        On an empty histogram count, clamped_low and clamped_high are 0 and
        every other value is None.  mean_ns is a float (the exact sum divided
        by the count); the percentiles are percentile()'s.
        """
        buf, count, sum_ns, min_ns, max_ns, low, high = self._snapshot()
        import numpy
        return _shared.summary(numpy.frombuffer(buf, dtype=numpy.uint64), count, sum_ns,
                               min_ns, max_ns, low, high)

    def __repr__(self):
        return _shared.format_repr(self._count, self._sum(), self._min_ns, self._max_ns)

    def __reduce__(self):
        buf, count, sum_ns, min_ns, max_ns, low, high = self._snapshot()
        counts = memoryview(buf).cast("Q")
        state = _shared.make_state(counts, sum_ns, count, min_ns, max_ns, low, high)
        return (_restore_histogram, state)


def _restore_histogram(*state):
    """Rebuild a pickled LatencyHistogram (the state is validated first)."""
    cdef LatencyHistogram hist = LatencyHistogram.__new__(LatencyHistogram)
    pairs, count, sum_ns, min_ns, max_ns, low, high = _shared.check_state(*state)
    for index, n in pairs:
        hist._counts[<int>index] = n
    hist._count = count
    hist._sum_lo = sum_ns & 0xFFFFFFFFFFFFFFFF
    hist._sum_hi = sum_ns >> 64
    hist._min_ns = min_ns
    hist._max_ns = max_ns
    hist._clamped_low = low
    hist._clamped_high = high
    return hist
