"""The pure-Python twin of the compiled LatencyHistogram (``_histogram.pyx``).

Same public API, same bucket layout (``fastpath._histogram_shared``) and the
same answers; it is the reference for benchmarks, the implementation used with
``FASTPATH_NO_EXTENSIONS=1`` and the source of the type annotations.  Updates
take a ``threading.Lock`` so that counts stay exact under threads; the compiled
core gets the same guarantee from the GIL.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, final

from . import _histogram_shared as _shared
from ._histogram_shared import EXACT_LIMIT, MAX_NS, NBUCKETS, HistogramSummary, bucket_index

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import numpy.typing as npt

__all__ = ["HistogramSummary", "LatencyHistogram"]

_EMPTY_MIN = MAX_NS + 1
_EMPTY_MAX = -1

# (counts, count, sum_ns, min_ns, max_ns, clamped_low, clamped_high)
_Snapshot = tuple[list[int], int, int, int, int, int, int]


@final
class LatencyHistogram:
    """A log-linear histogram of durations in nanoseconds.

    ``record(ns)`` is O(1) and never raises for an out-of-range int.  Buckets:
    one per value for 0..255 ns, then 128 linear sub-buckets per power of two
    up to one hour (3_600_000_000_000 ns), 4562 in all; a bucket's
    representative value (``bucket_values()``) is its midpoint, within 1/256
    (0.39 %) of every value in it.  Negative values are recorded as 0 and
    counted in ``clamped_low``; values above one hour are recorded as one hour
    and counted in ``clamped_high``.  min, max and the sum are kept exactly;
    the mean is that sum divided by the count.

    Thread-safe (a lock around every update).  Picklable; no ``__eq__``.
    """

    __slots__ = (
        "_clamped_high",
        "_clamped_low",
        "_count",
        "_counts",
        "_lock",
        "_max_ns",
        "_min_ns",
        "_sum_ns",
    )

    _lock: threading.Lock
    _counts: list[int]
    _count: int
    _sum_ns: int
    _min_ns: int
    _max_ns: int
    _clamped_low: int
    _clamped_high: int

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clear()

    __init__.__qualname__ = "LatencyHistogram"   # wrong arguments name LatencyHistogram()

    def _clear(self) -> None:
        self._counts = [0] * NBUCKETS
        self._count = 0
        self._sum_ns = 0
        self._min_ns = _EMPTY_MIN
        self._max_ns = _EMPTY_MAX
        self._clamped_low = 0
        self._clamped_high = 0

    # -- hot path --------------------------------------------------------------
    def record(self, ns: int) -> None:
        """Record one duration in ns (an int or an object with ``__index__``).

        Out-of-range values never raise: negative ones are recorded as 0 and
        larger than one hour as one hour, and counted (``summary()``'s
        ``clamped_low`` / ``clamped_high``).  A non-integer (float, str, None,
        bool) raises ``TypeError``.
        """
        if type(ns) is not int:
            ns = _shared.ns_from_object(ns)
        low = high = 0
        if ns < 0:
            ns, low = 0, 1
        elif ns > MAX_NS:
            ns, high = MAX_NS, 1
        index = ns if ns < EXACT_LIMIT else bucket_index(ns)
        with self._lock:
            self._counts[index] += 1
            self._count += 1
            self._sum_ns += ns
            self._min_ns = min(self._min_ns, ns)
            self._max_ns = max(self._max_ns, ns)
            self._clamped_low += low
            self._clamped_high += high

    # -- merge / reset ---------------------------------------------------------
    def merge(self, other: LatencyHistogram) -> None:
        """Add everything ``other`` (a LatencyHistogram; may be self) has recorded.

        Returns None; ``other`` is unchanged.  Anything but a LatencyHistogram
        of this implementation raises ``InvalidConfiguration``.
        """
        _shared.check_other("merge", other, LatencyHistogram)
        counts, count, sum_ns, min_ns, max_ns, low, high = other._snapshot()
        with self._lock:
            mine = self._counts
            for index, n in enumerate(counts):
                if n:
                    mine[index] += n
            self._count += count
            self._sum_ns += sum_ns
            self._min_ns = min(self._min_ns, min_ns)
            self._max_ns = max(self._max_ns, max_ns)
            self._clamped_low += low
            self._clamped_high += high

    def reset(self) -> None:
        """Forget everything recorded (the histogram is empty again)."""
        with self._lock:
            self._clear()

    # -- reading ---------------------------------------------------------------
    @property
    def count(self) -> int:
        """Number of values recorded, clamped ones included."""
        return self._count

    def _snapshot(self) -> _Snapshot:
        with self._lock:
            return (
                list(self._counts),
                self._count,
                self._sum_ns,
                self._min_ns,
                self._max_ns,
                self._clamped_low,
                self._clamped_high,
            )

    def counts(self) -> npt.NDArray[np.uint64]:
        """A new numpy uint64 array (a copy) of the count of every bucket."""
        import numpy

        return numpy.array(self._snapshot()[0], dtype=numpy.uint64)

    def bucket_values(self) -> npt.NDArray[np.int64]:
        """A new numpy int64 array of every bucket's representative value: the
        value itself below 256 ns, else the bucket's midpoint (lower + width // 2)."""
        return _shared.bucket_values()

    def percentile(self, q: float) -> int | None:
        """The q-th percentile (q in [0, 100]) in ns as an int, or None when empty.

        The rank is ceil(count * q / 100) computed as
        ``numpy.percentile(..., method="inverted_cdf")`` does; the answer is the
        representative value of the first bucket whose cumulative count
        reaches it, clamped into [min, max] -- within 1/256 (relative) of the
        exact order statistic, exact below 256 ns.  Rank <= 1 gives the exact
        minimum, rank count the exact maximum.  A q that is not a real number
        within [0, 100] raises ``InvalidConfiguration`` (even when empty).
        """
        value = _shared.check_q(q)
        counts, count, _, min_ns, max_ns, _, _ = self._snapshot()
        if count == 0:
            return None
        import numpy

        array = numpy.array(counts, dtype=numpy.uint64)
        return _shared.percentiles(array, count, min_ns, max_ns, (value,))[0]

    def summary(self) -> HistogramSummary:
        """A dict: count, mean_ns, min_ns, max_ns, p50_ns, p90_ns, p99_ns,
        p999_ns, clamped_low, clamped_high.

        On an empty histogram count, clamped_low and clamped_high are 0 and
        every other value is None.  mean_ns is a float (the exact sum divided
        by the count); the percentiles are ``percentile()``'s.
        """
        counts, count, sum_ns, min_ns, max_ns, low, high = self._snapshot()
        import numpy

        array = numpy.array(counts, dtype=numpy.uint64)
        return _shared.summary(array, count, sum_ns, min_ns, max_ns, low, high)

    def __repr__(self) -> str:
        return _shared.format_repr(self._count, self._sum_ns, self._min_ns, self._max_ns)

    def __reduce__(self) -> tuple[Any, _shared.State]:
        counts, count, sum_ns, min_ns, max_ns, low, high = self._snapshot()
        return (
            _restore_histogram,
            _shared.make_state(counts, sum_ns, count, min_ns, max_ns, low, high),
        )


def _restore_histogram(*state: Any) -> LatencyHistogram:
    """Rebuild a pickled LatencyHistogram (the state is validated first)."""
    pairs, count, sum_ns, min_ns, max_ns, low, high = _shared.check_state(*state)
    hist = LatencyHistogram()
    for index, n in pairs:
        hist._counts[index] = n
    hist._count = count
    hist._sum_ns = sum_ns
    hist._min_ns = min_ns
    hist._max_ns = max_ns
    hist._clamped_low = low
    hist._clamped_high = high
    return hist
