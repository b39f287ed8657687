"""Types of the compiled histogram (``_histogram.pyx``): the pure-Python twin's,
whose API ``tests/test_parity.py`` keeps identical to the compiled one."""

from ._histogram_py import LatencyHistogram as LatencyHistogram
