# The C-level API of fastpath's latency histogram.
#
# Another Cython module can ``from fastpath._histogram cimport LatencyHistogram``
# and record a duration with ``hist.record_c(ns)`` -- a C call, no Python call,
# no allocation, never an error.  Call it with the GIL held: the GIL is what
# keeps the counts exact when several threads record into one histogram.
# Field layout is part of this API.

cimport cython
from libc.stdint cimport int64_t, uint64_t


@cython.final
cdef class LatencyHistogram:
    cdef uint64_t *_counts        # 4562 bucket counts (PyMem, owned; layout in .pyx)
    cdef uint64_t _count          # values recorded, clamped ones too (== sum of counts)
    cdef uint64_t _sum_lo         # exact sum of recorded (clamped) values: low word
    cdef uint64_t _sum_hi         # ... high word (a 128-bit sum cannot overflow)
    cdef int64_t _min_ns          # smallest recorded value; MAX_NS + 1 while empty
    cdef int64_t _max_ns          # largest recorded value; -1 while empty
    cdef uint64_t _clamped_low    # negative values seen (recorded as 0)
    cdef uint64_t _clamped_high   # values above 1 hour seen (recorded as MAX_NS)

    # Record one duration in ns: O(1), no allocation, clamps out-of-range values.
    cdef void record_c(self, int64_t ns) noexcept
    # Add everything other recorded (other may be self); raises if other is None.
    cdef int merge_c(self, LatencyHistogram other) except -1
    # Forget everything recorded.
    cdef void reset_c(self) noexcept
    # (bytearray of the counts, count, sum_ns, min_ns, max_ns, clamped_low,
    # clamped_high): one consistent copy, taken without running Python code.
    cdef tuple _snapshot(self)
    # The exact 128-bit sum as a Python int.
    cdef object _sum(self)
