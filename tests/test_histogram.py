"""LatencyHistogram on both cores: accuracy, merge, reset, clamping, threads, pickling."""

from __future__ import annotations

import copy
import math
import os
import pickle
import subprocess
import sys
import textwrap
import threading
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastpath import _histogram, _histogram_py
from fastpath import _histogram_shared as shared
from tests.threads import run_threads

ROOT = Path(__file__).resolve().parent.parent
HOUR_NS = 3_600_000_000_000
QUANTILES = (50, 90, 99, 99.9)
BOUND = 1 / 256  # documented worst-case relative error of a bucket's representative


def _filled(fp, values):
    hist = fp.LatencyHistogram()
    for v in values:
        hist.record(int(v))
    return hist


def _other(fp):
    """The LatencyHistogram class of the other implementation."""
    return _histogram_py.LatencyHistogram if fp.kind == "compiled" else _histogram.LatencyHistogram


def _rel(got, want):
    return abs(got - want) / want if want else abs(got)


# ------------------------------------------------------------------- accuracy


@pytest.mark.parametrize(
    "median_ns, sigma, seed",
    [(200_000, 1.5, 1), (50_000, 2.0, 2), (5_000_000, 1.0, 3), (3_000, 2.5, 4)],
)
def test_lognormal_percentiles_match_numpy_within_one_percent(fp, median_ns, sigma, seed):
    rng = np.random.default_rng(seed)
    data = np.clip(rng.lognormal(math.log(median_ns), sigma, 50_000), 0, HOUR_NS).astype(np.int64)
    hist = _filled(fp, data)
    summary = hist.summary()
    for q, key in zip(QUANTILES, ("p50_ns", "p90_ns", "p99_ns", "p999_ns"), strict=True):
        exact = int(np.percentile(data, q, method="inverted_cdf"))
        got = hist.percentile(q)
        assert got == summary[key]
        assert _rel(got, exact) <= 0.01, (q, got, exact)
        # The documented bound: within half a bucket (1/256), exact below 256 ns.
        if exact < 256:
            assert got == exact
        else:
            assert _rel(got, exact) <= BOUND, (q, got, exact)
    assert summary["count"] == len(data)
    assert summary["min_ns"] == data.min() and summary["max_ns"] == data.max()
    assert summary["mean_ns"] == pytest.approx(float(data.mean()), rel=1e-12)


def test_extreme_ranks_are_the_exact_min_and_max(fp):
    data = np.random.default_rng(7).lognormal(10, 2, 2_000).astype(np.int64) + 1000
    hist = _filled(fp, data)
    assert hist.percentile(0) == data.min()
    assert hist.percentile(100) == data.max()
    assert hist.percentile(0) == int(np.percentile(data, 0, method="inverted_cdf"))
    assert hist.percentile(100) == int(np.percentile(data, 100, method="inverted_cdf"))


def test_values_below_256_are_exact(fp):
    rng = np.random.default_rng(11)
    data = rng.integers(0, 256, 5_000)
    hist = _filled(fp, data)
    for q in (0, 0.1, 1, 10, 25, 33.3, 50, 75, 90, 99, 99.9, 100):
        assert hist.percentile(q) == int(np.percentile(data, q, method="inverted_cdf")), q
    counts = hist.counts()
    assert np.array_equal(counts[:256], np.bincount(data, minlength=256))
    assert counts[256:].sum() == 0


@settings(max_examples=300, deadline=None)
@given(v=st.integers(min_value=1, max_value=HOUR_NS))
def test_any_value_in_range_is_within_the_error_bound(fp, v):
    hist = fp.LatencyHistogram()
    hist.record(v)
    assert hist.count == 1
    assert _rel(hist.percentile(50), v) <= 0.01
    # A single value is its own min and max, and the answer is clamped to them.
    assert hist.percentile(50) == v
    (nonzero,) = np.nonzero(hist.counts())
    assert nonzero.tolist() == [shared.bucket_index(v)]
    representative = int(hist.bucket_values()[nonzero[0]])
    if v < 256:
        assert representative == v
    else:
        assert _rel(representative, v) <= BOUND
    # With a smaller and a larger value around it, v is neither min nor max: the
    # median (rank 2 of 3) is its bucket's representative, still within the bound.
    hist.record(0)
    hist.record(HOUR_NS)
    assert hist.percentile(50) == representative
    assert hist.percentile(0) == 0 and hist.percentile(100) == HOUR_NS


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.integers(min_value=-(2**70), max_value=2**70), max_size=200))
def test_count_and_counts_sum_equal_the_number_recorded(fp, values):
    hist = fp.LatencyHistogram()
    for v in values:
        hist.record(v)
    counts = hist.counts()
    assert hist.count == len(values)
    assert int(counts.sum()) == len(values)
    summary = hist.summary()
    assert summary["clamped_low"] == sum(v < 0 for v in values)
    assert summary["clamped_high"] == sum(v > HOUR_NS for v in values)
    clamped = [min(max(v, 0), HOUR_NS) for v in values]
    if values:
        assert summary["min_ns"] == min(clamped) and summary["max_ns"] == max(clamped)
        assert summary["mean_ns"] == sum(clamped) / len(clamped)


def test_bucket_layout_is_the_same_in_c_and_python(fp):
    values = [0, 1, 255, 256, 257, 511, 512, HOUR_NS - 1, HOUR_NS]
    for e in range(8, 42):
        values += [2**e - 1, 2**e, 2**e + 1, 3 * 2 ** (e - 1)]
    for v in values:
        hist = fp.LatencyHistogram()
        hist.record(v)
        assert np.flatnonzero(hist.counts()).tolist() == [shared.bucket_index(v)], v
    assert len(fp.LatencyHistogram().counts()) == shared.NBUCKETS == 4562
    reps = fp.LatencyHistogram().bucket_values()
    assert reps.dtype == np.int64 and len(reps) == shared.NBUCKETS
    assert np.all(np.diff(reps) > 0) and reps[-1] <= HOUR_NS
    for index in range(shared.NBUCKETS):
        lower, width = shared.bucket_bounds(index)
        assert shared.bucket_index(lower) == index
        assert shared.bucket_index(min(lower + width - 1, HOUR_NS)) == index


def test_same_answers_as_the_other_implementation(fp):
    data = np.random.default_rng(5).lognormal(12, 2.5, 3_000).astype(np.int64) - 50
    mine = _filled(fp, data)
    theirs = _other(fp)()
    for v in data:
        theirs.record(int(v))
    assert np.array_equal(mine.counts(), theirs.counts())
    assert mine.summary() == theirs.summary()
    assert repr(mine) == repr(theirs)
    assert mine.__reduce__()[1] == theirs.__reduce__()[1]


# ---------------------------------------------------------------- merge, reset


def test_merge_adds_everything(fp):
    rng = np.random.default_rng(3)
    a_vals = rng.integers(100, 10**9, 1_000).tolist() + [-5, HOUR_NS + 1]
    b_vals = rng.integers(10, 10**7, 700).tolist() + [-1, -2, 2**64]
    a, b = _filled(fp, a_vals), _filled(fp, b_vals)
    expected = _filled(fp, a_vals + b_vals)
    b_before = (b.counts(), b.summary())
    assert a.merge(b) is None
    assert a.count == len(a_vals) + len(b_vals)
    assert np.array_equal(a.counts(), expected.counts())
    assert a.summary() == expected.summary()
    s = a.summary()
    assert (s["clamped_low"], s["clamped_high"]) == (3, 2)
    assert s["min_ns"] == 0 and s["max_ns"] == HOUR_NS
    assert np.array_equal(b.counts(), b_before[0]) and b.summary() == b_before[1]


def test_merging_an_empty_histogram_is_a_no_op(fp):
    hist = _filled(fp, [5, 500, 5_000_000])
    before = (hist.counts(), hist.summary(), repr(hist))
    hist.merge(fp.LatencyHistogram())
    assert np.array_equal(hist.counts(), before[0])
    assert (hist.summary(), repr(hist)) == before[1:]
    empty = fp.LatencyHistogram()
    empty.merge(fp.LatencyHistogram())
    assert empty.summary()["count"] == 0 and empty.percentile(50) is None
    empty.merge(hist)
    assert empty.summary() == hist.summary()


def test_merge_with_itself_doubles(fp):
    hist = _filled(fp, [1, 1_000, 10**12, -1])
    single = hist.summary()
    hist.merge(hist)
    doubled = hist.summary()
    assert doubled["count"] == 2 * single["count"]
    assert doubled["clamped_low"] == 2 and doubled["mean_ns"] == single["mean_ns"]
    assert (doubled["min_ns"], doubled["max_ns"]) == (single["min_ns"], single["max_ns"])


@pytest.mark.parametrize("other", [None, 5, "hist", object()])
def test_merge_rejects_anything_but_a_histogram(fp, other):
    with pytest.raises(fp.InvalidConfiguration, match="merge"):
        fp.LatencyHistogram().merge(other)


def test_merge_rejects_the_other_implementation(fp):
    with pytest.raises(fp.InvalidConfiguration, match="merge"):
        fp.LatencyHistogram().merge(_other(fp)())


def test_reset_empties_everything(fp):
    hist = _filled(fp, [-1, 7, 10**6, 2**63])
    hist.reset()
    empty = fp.LatencyHistogram()
    assert hist.count == 0 and hist.percentile(50) is None
    assert hist.summary() == empty.summary()
    assert not hist.counts().any()
    assert repr(hist) == repr(empty)
    hist.record(42)
    assert hist.summary()["min_ns"] == hist.summary()["max_ns"] == 42


# -------------------------------------------------------------- clamping, types


def test_out_of_range_values_are_clamped_and_counted(fp):
    hist = fp.LatencyHistogram()
    for v in (-1, -(2**63), -(2**200), HOUR_NS + 1, 2**63 - 1, 2**63, 2**200, HOUR_NS, 0):
        assert hist.record(v) is None
    s = hist.summary()
    assert s["count"] == hist.count == 9
    assert (s["clamped_low"], s["clamped_high"]) == (3, 4)
    assert (s["min_ns"], s["max_ns"]) == (0, HOUR_NS)
    counts = hist.counts()
    assert counts[0] == 4 and counts[-1] == 5 and counts.sum() == 9
    assert s["mean_ns"] == 5 * HOUR_NS / 9


class _Index:
    def __init__(self, value):
        self.value = value

    def __index__(self):
        return self.value


def test_int_like_values_are_accepted(fp):
    hist = fp.LatencyHistogram()
    for v in (np.int64(1234), np.uint64(99), _Index(5_000), _Index(-3), _Index(2**80)):
        hist.record(v)
    s = hist.summary()
    assert s["count"] == 5 and s["clamped_low"] == 1 and s["clamped_high"] == 1
    assert s["min_ns"] == 0 and s["max_ns"] == HOUR_NS


@pytest.mark.parametrize("bad", ["x", 1.5, 1e3, None, True, b"1", Fraction(1, 2), [1]])
def test_non_integers_raise_type_error(fp, bad):
    hist = fp.LatencyHistogram()
    with pytest.raises(TypeError, match="record"):
        hist.record(bad)
    assert hist.count == 0


@pytest.mark.parametrize(
    "q", [-1, -0.001, 100.0001, 101, float("nan"), float("inf"), "50", None, True, 1j, [50]]
)
def test_bad_percentiles_raise_invalid_configuration(fp, q):
    for hist in (fp.LatencyHistogram(), _filled(fp, [1, 2, 3])):
        with pytest.raises(fp.InvalidConfiguration, match="q must be"):
            hist.percentile(q)


@pytest.mark.parametrize("q", [0, 50, 99.9, 100, np.float64(75.5), Fraction(1, 3)])
def test_real_percentiles_are_accepted(fp, q):
    assert isinstance(_filled(fp, [10, 20, 30]).percentile(q), int)


# ------------------------------------------------------------------ empty, repr


def test_empty_histogram(fp):
    hist = fp.LatencyHistogram()
    assert hist.count == 0
    assert hist.percentile(0) is None and hist.percentile(100) is None
    assert hist.summary() == {
        "count": 0, "mean_ns": None, "min_ns": None, "max_ns": None, "p50_ns": None,
        "p90_ns": None, "p99_ns": None, "p999_ns": None, "clamped_low": 0, "clamped_high": 0,
    }  # fmt: skip
    counts = hist.counts()
    assert counts.dtype == np.uint64 and len(counts) == shared.NBUCKETS and not counts.any()
    assert repr(hist) == "LatencyHistogram(count=0)"


def test_counts_is_a_copy(fp):
    hist = _filled(fp, [3, 3])
    counts = hist.counts()
    counts[3] = 100
    assert hist.counts()[3] == 2
    values = hist.bucket_values()
    values[3] = -1
    assert hist.bucket_values()[3] == 3


def test_repr_shows_count_min_mean_max(fp):
    assert repr(_filled(fp, [10, 20])) == (
        "LatencyHistogram(count=2, min_ns=10, mean_ns=15.0, max_ns=20)"
    )


def test_summary_keys(fp):
    assert list(_filled(fp, [1]).summary()) == [
        "count", "mean_ns", "min_ns", "max_ns", "p50_ns", "p90_ns", "p99_ns", "p999_ns",
        "clamped_low", "clamped_high",
    ]  # fmt: skip


def test_mean_is_exact_for_huge_sums(fp):
    # 2**64 / 3.6e12 ~ 5.1 million hour-long values overflow a 64-bit sum; merge
    # doubling reaches far more without recording them one by one.
    hist = _filled(fp, [HOUR_NS, HOUR_NS - 1])
    for _ in range(23):  # 2 * 2**23 = 16.8 million values
        hist.merge(hist)
    s = hist.summary()
    assert s["count"] == 2**24
    assert s["mean_ns"] == (2 * HOUR_NS - 1) / 2
    restored = pickle.loads(pickle.dumps(hist))
    assert restored.summary() == s


# ---------------------------------------------------------------- threads


def test_counts_are_exact_under_threads(fp):
    hist = fp.LatencyHistogram()
    barrier = threading.Barrier(4)

    def work(offset):
        barrier.wait()
        for i in range(20_000):
            hist.record(offset + i)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        run_threads(work, [(k * 1_000_000,) for k in range(4)])
    finally:
        sys.setswitchinterval(old)
    assert hist.count == 80_000
    assert int(hist.counts().sum()) == 80_000
    s = hist.summary()
    total = sum(k * 1_000_000 * 20_000 + 20_000 * 19_999 // 2 for k in range(4))
    assert s["mean_ns"] == total / 80_000
    assert (s["min_ns"], s["max_ns"]) == (0, 3_000_000 + 19_999)


# ---------------------------------------------------------------- pickling


def test_pickle_round_trip(fp):
    data = [-4, 0, 1, 255, 256, 10**6, 10**9, HOUR_NS, 2**65]
    hist = _filled(fp, data)
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        restored = pickle.loads(pickle.dumps(hist, protocol))
        assert type(restored) is fp.LatencyHistogram
        assert restored.summary() == hist.summary()
        assert np.array_equal(restored.counts(), hist.counts())
        assert repr(restored) == repr(hist)
        restored.record(5)
        assert restored.count == hist.count + 1
    empty = pickle.loads(pickle.dumps(fp.LatencyHistogram()))
    assert empty.summary() == fp.LatencyHistogram().summary()
    clone = copy.deepcopy(hist)
    clone.record(1)
    assert clone.count == hist.count + 1 and clone.summary()["min_ns"] == 0


def _corrupt(state, position, value):
    state = list(state)
    state[position] = value
    return state


def test_a_corrupt_pickle_state_is_rejected(fp):
    restore, state = _filled(fp, [5, 300, 10**6]).__reduce__()
    bad_states = [
        _corrupt(state, 0, (256, 64, HOUR_NS)),                 # another layout
        _corrupt(state, 1, ((shared.NBUCKETS, 1),)),            # index out of range
        _corrupt(state, 1, ((-1, 1),)),
        _corrupt(state, 1, ((5, 1), (5, 1))),                   # not increasing
        _corrupt(state, 1, ((5, 2**64),)),                      # count overflows
        _corrupt(state, 3, 7),                                  # min not in the first bucket
        _corrupt(state, 2, -1),                                 # negative sum
        _corrupt(state, 5, 3),                                  # more clamped than counted
    ]
    for bad in bad_states:
        with pytest.raises(fp.InvalidConfiguration, match="cannot restore"):
            restore(*bad)


# ---------------------------------------------------------------- packaging


def test_the_histogram_is_exported_from_the_selected_core(fp):
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent("""
            import sys, fastpath
            h = fastpath.LatencyHistogram()
            h.record(5); h.record(-1); h.record(2**70)
            print(type(h).__module__, h.count, "numpy" in sys.modules)
        """)],
        capture_output=True, text=True, cwd=ROOT, check=True,
        env={**os.environ, "FASTPATH_NO_EXTENSIONS": "1" if fp.kind == "python" else "0"},
    )
    # record() never imports numpy
    assert out.stdout.split() == [fp.histogram.__name__, "3", "False"]
    assert "LatencyHistogram" in __import__("fastpath").__all__


@pytest.mark.slow
def test_another_cython_module_can_cimport_the_histogram(tmp_path):
    """The C-level API belongs to the compiled core only."""
    (tmp_path / "hprobe.pyx").write_text(textwrap.dedent("""
        # cython: language_level=3
        from fastpath._histogram cimport LatencyHistogram

        def fill(LatencyHistogram hist, long n):
            # C-level calls: no Python method call, no allocation
            cdef long i
            for i in range(n):
                hist.record_c(i)
            hist.record_c(-7)
            return hist._count, hist._clamped_low

        def merged(LatencyHistogram a, LatencyHistogram b):
            a.merge_c(b)
            b.reset_c()
            return a._count, b._count
    """))
    (tmp_path / "setup.py").write_text(textwrap.dedent(f"""
        from setuptools import setup, Extension
        from Cython.Build import cythonize
        setup(ext_modules=cythonize([Extension("hprobe", ["hprobe.pyx"])],
                                    include_path=[{str(ROOT)!r}], quiet=True))
    """))
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=tmp_path,
                   check=True, capture_output=True)
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent("""
            import hprobe
            from fastpath._histogram import LatencyHistogram
            h = LatencyHistogram()
            assert hprobe.fill(h, 1000) == (1001, 1), hprobe.fill
            s = h.summary()
            assert (s["count"], s["min_ns"], s["max_ns"], s["clamped_low"]) == (1001, 0, 999, 1), s
            assert h.percentile(50) == 499, h.percentile(50)
            other = LatencyHistogram()
            other.record(5)
            assert hprobe.merged(h, other) == (1002, 0)
            print("ok")
        """)],
        cwd=tmp_path, capture_output=True, text=True, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
