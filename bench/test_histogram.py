"""LatencyHistogram.record(v), compiled core vs pure-Python twin (peer in test_peers)."""

from __future__ import annotations

from _support import HIST_VALUE, measure


def test_histogram_record(benchmark, fp):
    histogram = fp.LatencyHistogram()
    measure(benchmark, "histogram record", "record", fp.kind, histogram.record, HIST_VALUE)
    assert histogram.count > 0
