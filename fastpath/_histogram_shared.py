"""Bucket layout, validation and the numpy side of LatencyHistogram.

Shared by the compiled histogram (``_histogram.pyx``) and its pure-Python twin
(``_histogram_py.py``) so that both lay out buckets, reject bad input and
compute percentiles identically.  Nothing here is on the ``record`` path of the
compiled core (it only handles the slow path for non-``int`` arguments), and
numpy is imported only by the functions that need it.

Layout (the C helper ``fp_hist_index`` in ``_histogram.pyx`` computes the same
index):

* values 0..255 ns have one bucket each (exact);
* from 256 ns up, each power of two [2**e, 2**(e+1)) is split into 128 equal
  sub-buckets of width 2**(e-7), up to 1 hour (3.6e12 ns): the bucket of ``v``
  is ``(e - 7) * 128 + (v >> (e - 7))`` where ``e`` is the index of ``v``'s
  highest set bit.  4562 buckets in all.

A bucket's representative value is its midpoint, ``lower + width // 2`` (the
value itself below 256), so it is within ``width / 2 <= lower / 256`` of any
value in the bucket: a relative error of at most 1/256 (0.39 %) for every value
of 256 ns or more, and none below.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypedDict

from .errors import InvalidConfiguration

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import numpy.typing as npt

    CountsArray = npt.NDArray[np.uint64]
    ValuesArray = npt.NDArray[np.int64]

#: Values below this have a bucket of their own.
EXACT_LIMIT = 256
#: log2 of the number of linear sub-buckets per power of two.
SUB_BUCKET_BITS = 7
#: Linear sub-buckets per power of two.
SUB_BUCKETS = 1 << SUB_BUCKET_BITS
#: The largest value recorded: one hour in nanoseconds (larger ones are clamped).
MAX_NS = 3_600_000_000_000
INT64_MAX = 2**63 - 1
#: What the pickled state's first item must be (a change of layout breaks it).
LAYOUT: tuple[int, int, int] = (EXACT_LIMIT, SUB_BUCKETS, MAX_NS)

#: Percentiles reported by summary(), with their keys.
SUMMARY_QUANTILES: tuple[tuple[str, float], ...] = (
    ("p50_ns", 50.0),
    ("p90_ns", 90.0),
    ("p99_ns", 99.0),
    ("p999_ns", 99.9),
)


class HistogramSummary(TypedDict):
    """What ``LatencyHistogram.summary()`` returns (a plain dict at run time)."""

    count: int
    mean_ns: float | None
    min_ns: int | None
    max_ns: int | None
    p50_ns: int | None
    p90_ns: int | None
    p99_ns: int | None
    p999_ns: int | None
    clamped_low: int
    clamped_high: int


def bucket_index(ns: int) -> int:
    """The bucket of a value in 0..MAX_NS (the same function as the C core's)."""
    if ns < EXACT_LIMIT:
        return ns
    shift = ns.bit_length() - 1 - SUB_BUCKET_BITS
    return (shift << SUB_BUCKET_BITS) + (ns >> shift)


#: Number of buckets: the last one holds MAX_NS.
NBUCKETS = bucket_index(MAX_NS) + 1


def bucket_bounds(index: int) -> tuple[int, int]:
    """The smallest value of bucket ``index`` and its width."""
    if index < EXACT_LIMIT:
        return index, 1
    shift = (index >> SUB_BUCKET_BITS) - 1
    top = (index & (SUB_BUCKETS - 1)) | SUB_BUCKETS
    return top << shift, 1 << shift


def representative(index: int) -> int:
    """A bucket's representative value: its midpoint (never above MAX_NS)."""
    lower, width = bucket_bounds(index)
    return min(lower + width // 2, MAX_NS)


_BUCKET_VALUES: ValuesArray | None = None


def _bucket_values() -> ValuesArray:
    global _BUCKET_VALUES
    if _BUCKET_VALUES is None:
        import numpy as np

        values = np.array([representative(i) for i in range(NBUCKETS)], dtype=np.int64)
        values.flags.writeable = False
        _BUCKET_VALUES = values
    return _BUCKET_VALUES


def bucket_values() -> ValuesArray:
    """A new int64 array of every bucket's representative value."""
    return _bucket_values().copy()


# ------------------------------------------------------------------ validation


def ns_from_object(value: Any) -> int:
    """The slow path of ``record``: an ``__index__`` object as an int clamped to
    [-1, INT64_MAX] (the C core's int64 range; it then clamps to [0, MAX_NS])."""
    if isinstance(value, bool):
        raise TypeError("record() needs an int number of nanoseconds, got bool")
    try:
        ns = operator.index(value)
    except TypeError:
        raise TypeError(
            f"record() needs an int number of nanoseconds, got {type(value).__name__}"
        ) from None
    if ns < 0:
        return -1
    return min(ns, INT64_MAX)


def check_q(q: Any) -> float:
    """A percentile in [0, 100] as a float, or InvalidConfiguration."""
    if isinstance(q, bool) or not isinstance(q, numbers.Real):
        raise InvalidConfiguration(f"q must be a real number within [0, 100], got {q!r}")
    value = float(q)
    if math.isnan(value) or not 0.0 <= value <= 100.0:
        raise InvalidConfiguration(f"q must be within [0, 100], got {q!r}")
    return value


def check_other(name: str, other: Any, cls: type) -> None:
    if type(other) is not cls:
        raise InvalidConfiguration(
            f"{name}() needs a {cls.__module__}.{cls.__qualname__}, got {type(other).__name__}"
        )


# ------------------------------------------------------------- numpy side


def percentiles(
    counts: CountsArray, count: int, min_ns: int, max_ns: int, qs: Sequence[float]
) -> list[int]:
    """The percentiles ``qs`` (validated floats) of a non-empty histogram.

    The rank of q is ``ceil(count * (q / 100))`` in float64, exactly as
    ``numpy.percentile(..., method="inverted_cdf")`` computes it.  Rank 1 or
    less is the exact minimum and rank ``count`` the exact maximum; any other
    rank is the representative value of the first bucket whose cumulative
    count reaches it, clamped into [min_ns, max_ns].
    """
    import numpy as np

    ranks = np.ceil(count * (np.asarray(qs, dtype=np.float64) / 100.0))
    cumulative = np.cumsum(counts, dtype=np.uint64)
    # side="left": the first bucket whose cumulative count is >= the rank.
    where = np.searchsorted(cumulative, np.clip(ranks, 1, count).astype(np.uint64), side="left")
    values = np.clip(_bucket_values()[where], min_ns, max_ns)
    values[ranks <= 1] = min_ns
    values[ranks >= count] = max_ns
    return [int(v) for v in values]


def summary(
    counts: CountsArray,
    count: int,
    sum_ns: int,
    min_ns: int,
    max_ns: int,
    clamped_low: int,
    clamped_high: int,
) -> HistogramSummary:
    """summary() from a consistent snapshot of a histogram."""
    if count == 0:
        return HistogramSummary(
            count=0, mean_ns=None, min_ns=None, max_ns=None, p50_ns=None, p90_ns=None,
            p99_ns=None, p999_ns=None, clamped_low=clamped_low, clamped_high=clamped_high,
        )  # fmt: skip
    p50, p90, p99, p999 = percentiles(
        counts, count, min_ns, max_ns, [q for _, q in SUMMARY_QUANTILES]
    )
    return HistogramSummary(
        count=count, mean_ns=sum_ns / count, min_ns=min_ns, max_ns=max_ns, p50_ns=p50,
        p90_ns=p90, p99_ns=p99, p999_ns=p999, clamped_low=clamped_low, clamped_high=clamped_high,
    )  # fmt: skip


def format_repr(count: int, sum_ns: int, min_ns: int, max_ns: int) -> str:
    if count == 0:
        return "LatencyHistogram(count=0)"
    return (
        f"LatencyHistogram(count={count}, min_ns={min_ns}, "
        f"mean_ns={sum_ns / count:.1f}, max_ns={max_ns})"
    )


# ------------------------------------------------------------------- pickling

#: (layout, ((bucket, count), ...) for non-empty buckets, sum_ns, min_ns, max_ns,
#:  clamped_low, clamped_high); min_ns/max_ns are None when empty.
State = tuple[
    tuple[int, int, int], tuple[tuple[int, int], ...], int, int | None, int | None, int, int
]


def make_state(
    counts: Sequence[int],
    sum_ns: int,
    count: int,
    min_ns: int,
    max_ns: int,
    clamped_low: int,
    clamped_high: int,
) -> State:
    pairs = tuple((i, int(c)) for i, c in enumerate(counts) if c)
    if count == 0:
        return LAYOUT, (), 0, None, None, clamped_low, clamped_high
    return LAYOUT, pairs, sum_ns, min_ns, max_ns, clamped_low, clamped_high


def check_state(
    layout: Any,
    pairs: Any,
    sum_ns: Any,
    min_ns: Any,
    max_ns: Any,
    clamped_low: Any,
    clamped_high: Any,
) -> tuple[list[tuple[int, int]], int, int, int, int, int, int]:
    """Validate a pickled state; returns (pairs, count, sum, min, max, low, high)
    with min/max as the empty sentinels (MAX_NS + 1, -1) when empty."""

    def bad(why: str) -> InvalidConfiguration:
        return InvalidConfiguration(f"cannot restore a LatencyHistogram: {why}")

    if tuple(layout) != LAYOUT:
        raise bad(f"bucket layout {layout!r} is not {LAYOUT!r}")
    checked: list[tuple[int, int]] = []
    count = 0
    for index, n in pairs:
        if type(index) is not int or not 0 <= index < NBUCKETS:
            raise bad(f"bucket index {index!r} out of range")
        if checked and index <= checked[-1][0]:
            raise bad("bucket indices must be strictly increasing")
        if type(n) is not int or not 0 < n < 2**64:
            raise bad(f"bucket count {n!r} out of range")
        checked.append((index, n))
        count += n
    if count >= 2**64:
        raise bad("total count out of range")
    for name, value in (("sum_ns", sum_ns), ("clamped_low", clamped_low),
                        ("clamped_high", clamped_high)):  # fmt: skip
        if type(value) is not int or value < 0:
            raise bad(f"{name} {value!r} out of range")
    first = checked[0][1] if checked and checked[0][0] == 0 else 0
    last = checked[-1][1] if checked and checked[-1][0] == NBUCKETS - 1 else 0
    if clamped_low > first or clamped_high > last:
        raise bad("more clamped values than values in the first / last bucket")
    if count == 0:
        if min_ns is not None or max_ns is not None or sum_ns:
            raise bad("an empty histogram has no min, max or sum")
        return checked, 0, 0, MAX_NS + 1, -1, clamped_low, clamped_high
    if type(min_ns) is not int or type(max_ns) is not int or not 0 <= min_ns <= max_ns <= MAX_NS:
        raise bad(f"min_ns {min_ns!r} / max_ns {max_ns!r} out of range")
    if bucket_index(min_ns) != checked[0][0] or bucket_index(max_ns) != checked[-1][0]:
        raise bad("min_ns / max_ns do not fall in the first / last non-empty bucket")
    if not min_ns * count <= sum_ns <= max_ns * count:
        raise bad(f"sum_ns {sum_ns!r} is not between count * min_ns and count * max_ns")
    return checked, count, sum_ns, min_ns, max_ns, clamped_low, clamped_high


def constructor_args() -> None:
    """The compiled ``LatencyHistogram.__init__(*args, **kwargs)``: it takes no
    arguments, and a wrong call's TypeError names ``LatencyHistogram()``."""


constructor_args.__qualname__ = constructor_args.__name__ = "LatencyHistogram"
