"""ExecutionConstraints: validation, presets, value semantics, serialisation."""

from __future__ import annotations

import json
import math
import pickle
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

MB = 1024 * 1024

PRESETS = {
    "fast_rule": ((), dict(max_exec_ms=5, cpu_shares=10, memory_limit_bytes=MB, sampling_rate=1.0,
                           fail_closed_on_timeout=True, max_retries=None, retry_backoff_ms=None)),
    "semantic_rule": ((), dict(max_exec_ms=100, cpu_shares=50, memory_limit_bytes=10 * MB,
                               sampling_rate=1.0, fail_closed_on_timeout=False, max_retries=2,
                               retry_backoff_ms=10)),
    "wasm_hook": ((), dict(max_exec_ms=10, cpu_shares=20, memory_limit_bytes=5 * MB,
                           sampling_rate=1.0, fail_closed_on_timeout=True, max_retries=None,
                           retry_backoff_ms=None)),
    "observational": ((), dict(max_exec_ms=2, cpu_shares=5, memory_limit_bytes=512 * 1024,
                               sampling_rate=1.0, fail_closed_on_timeout=False, max_retries=None,
                               retry_backoff_ms=None)),
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_match_the_design_table(fp, name):
    args, expected = PRESETS[name]
    c = getattr(fp.ExecutionConstraints, name)(*args)
    assert c.to_dict() == expected
    for field, value in expected.items():
        assert getattr(c, field) == value


def test_parametrised_presets(fp):
    assert fp.ExecutionConstraints.wasm_hook(25).max_exec_ms == 25
    assert fp.ExecutionConstraints.wasm_hook(max_ms=3).max_exec_ms == 3
    assert fp.ExecutionConstraints.observational(0.25).sampling_rate == 0.25
    with pytest.raises(fp.InvalidConfiguration, match="sampling_rate"):
        fp.ExecutionConstraints.observational(2.0)
    with pytest.raises(fp.InvalidConfiguration, match="max_exec_ms"):
        fp.ExecutionConstraints.wasm_hook(0)


def test_defaults(fp):
    c = fp.ExecutionConstraints(7)
    assert c.to_dict() == dict(max_exec_ms=7, cpu_shares=None, memory_limit_bytes=None,
                               sampling_rate=1.0, fail_closed_on_timeout=True, max_retries=None,
                               retry_backoff_ms=None)
    assert c.cpu_allowance_ms is None


def test_cpu_allowance_is_max_exec_times_shares(fp):
    assert fp.ExecutionConstraints.fast_rule().cpu_allowance_ms == 0.5
    assert fp.ExecutionConstraints(100, cpu_shares=0).cpu_allowance_ms == 0.0
    assert fp.ExecutionConstraints(3, cpu_shares=100).cpu_allowance_ms == 3.0


@pytest.mark.parametrize(
    "field",
    ["max_exec_ms", "cpu_shares", "memory_limit_bytes", "sampling_rate",
     "fail_closed_on_timeout", "max_retries", "retry_backoff_ms", "brand_new"],
)
def test_attributes_are_read_only(fp, field):
    c = fp.ExecutionConstraints.fast_rule()
    with pytest.raises(AttributeError):
        setattr(c, field, 1)
    assert c == fp.ExecutionConstraints.fast_rule()


def test_init_cannot_mutate_an_existing_instance(fp):
    c = fp.ExecutionConstraints(5)
    with pytest.raises(AttributeError):
        c.__init__(50)
    assert c.max_exec_ms == 5


BAD = [
    ("max_exec_ms", 0), ("max_exec_ms", -1), ("max_exec_ms", 2**53 + 1), ("max_exec_ms", 5.0),
    ("max_exec_ms", "5"), ("max_exec_ms", None), ("max_exec_ms", True),
    ("cpu_shares", -1), ("cpu_shares", 101), ("cpu_shares", 150), ("cpu_shares", 10.0),
    ("cpu_shares", "10"), ("cpu_shares", False),
    ("memory_limit_bytes", 0), ("memory_limit_bytes", -5), ("memory_limit_bytes", 1.5),
    ("memory_limit_bytes", 2**63), ("memory_limit_bytes", "1MB"),
    ("sampling_rate", -0.1), ("sampling_rate", 1.5), ("sampling_rate", math.nan),
    ("sampling_rate", math.inf), ("sampling_rate", "0.5"), ("sampling_rate", None),
    ("sampling_rate", True), ("sampling_rate", 1j),
    ("fail_closed_on_timeout", 1), ("fail_closed_on_timeout", "yes"),
    ("fail_closed_on_timeout", None),
    ("max_retries", -1), ("max_retries", 1.0), ("max_retries", "2"),
    ("retry_backoff_ms", -1), ("retry_backoff_ms", 0.5), ("retry_backoff_ms", [10]),
]


@pytest.mark.parametrize("field,value", BAD, ids=[f"{f}={v!r}" for f, v in BAD])
def test_bad_values_raise_invalid_configuration_naming_field_and_value(fp, field, value):
    kwargs = {"max_exec_ms": 5, field: value}
    with pytest.raises(fp.InvalidConfiguration) as info:
        fp.ExecutionConstraints(**kwargs)
    message = str(info.value)
    assert field in message
    assert repr(value) in message or str(value) in message
    assert isinstance(info.value, ValueError)


def test_message_format_matches_spec(fp):
    with pytest.raises(fp.InvalidConfiguration,
                       match=r"^sampling_rate must be within \[0\.0, 1\.0\], got 1\.5$"):
        fp.ExecutionConstraints(5, sampling_rate=1.5)
    with pytest.raises(fp.InvalidConfiguration,
                       match=r"^cpu_shares must be an int in 0\.\.100, got 150$"):
        fp.ExecutionConstraints(5, cpu_shares=150)


def test_real_numbers_are_accepted_for_the_rate(fp):
    assert fp.ExecutionConstraints(5, sampling_rate=Fraction(1, 4)).sampling_rate == 0.25
    assert fp.ExecutionConstraints(5, sampling_rate=1).sampling_rate == 1.0
    assert isinstance(fp.ExecutionConstraints(5, sampling_rate=0).sampling_rate, float)


def test_equality_and_hash_are_by_value(fp):
    a = fp.ExecutionConstraints(5, cpu_shares=10)
    b = fp.ExecutionConstraints(5, cpu_shares=10)
    c = fp.ExecutionConstraints(5, cpu_shares=11)
    assert a == b and hash(a) == hash(b)
    assert a != c
    assert a != "not constraints"
    assert len({a, b, c}) == 2


def test_repr_shows_every_field_and_evaluates_back(fp):
    c = fp.ExecutionConstraints.semantic_rule()
    text = repr(c)
    for field in c.to_dict():
        assert f"{field}=" in text
    assert eval(text, {"ExecutionConstraints": fp.ExecutionConstraints}) == c


def test_pickle_round_trips(fp):
    for c in (fp.ExecutionConstraints.fast_rule(), fp.ExecutionConstraints.observational(0.3),
              fp.ExecutionConstraints(9, max_retries=0, retry_backoff_ms=0)):
        clone = pickle.loads(pickle.dumps(c))
        assert clone == c and type(clone) is type(c)


def test_to_dict_from_dict_round_trip_through_json(fp):
    c = fp.ExecutionConstraints.semantic_rule()
    assert fp.ExecutionConstraints.from_dict(json.loads(json.dumps(c.to_dict()))) == c


def test_from_dict_rejects_unknown_missing_and_non_mappings(fp):
    with pytest.raises(fp.InvalidConfiguration, match="'timeout'"):
        fp.ExecutionConstraints.from_dict({"max_exec_ms": 5, "timeout": 3})
    with pytest.raises(fp.InvalidConfiguration, match="max_exec_ms"):
        fp.ExecutionConstraints.from_dict({"cpu_shares": 5})
    with pytest.raises(fp.InvalidConfiguration, match="mapping"):
        fp.ExecutionConstraints.from_dict([("max_exec_ms", 5)])
    with pytest.raises(fp.InvalidConfiguration, match="max_exec_ms"):
        fp.ExecutionConstraints.from_dict({"max_exec_ms": 5.0})


def test_replace_returns_a_validated_copy(fp):
    c = fp.ExecutionConstraints.fast_rule()
    d = c.replace(max_exec_ms=50, sampling_rate=0.5)
    assert (d.max_exec_ms, d.sampling_rate, d.cpu_shares) == (50, 0.5, 10)
    assert c.max_exec_ms == 5
    assert c.replace() == c
    with pytest.raises(fp.InvalidConfiguration, match="cpu_shares"):
        c.replace(cpu_shares=101)
    with pytest.raises(fp.InvalidConfiguration, match="'colour'"):
        c.replace(colour="red")


optional_int = lambda lo, hi: st.none() | st.integers(lo, hi)  # noqa: E731
valid_fields = st.fixed_dictionaries({
    "max_exec_ms": st.integers(1, 2**53),
    "cpu_shares": optional_int(0, 100),
    "memory_limit_bytes": optional_int(1, 2**63 - 1),
    "sampling_rate": st.floats(0.0, 1.0, allow_nan=False),
    "fail_closed_on_timeout": st.booleans(),
    "max_retries": optional_int(0, 2**40),
    "retry_backoff_ms": optional_int(0, 2**53),
})


@settings(max_examples=200, deadline=None)
@given(fields=valid_fields)
def test_property_valid_fields_round_trip(fp, fields):
    c = fp.ExecutionConstraints(**fields)
    assert c.to_dict() == fields
    assert fp.ExecutionConstraints.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert pickle.loads(pickle.dumps(c)) == c
    assert hash(fp.ExecutionConstraints(**fields)) == hash(c)


@settings(max_examples=200, deadline=None)
@given(
    field=st.sampled_from(["max_exec_ms", "cpu_shares", "memory_limit_bytes", "max_retries",
                           "retry_backoff_ms"]),
    value=st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=3),
)
def test_property_out_of_range_or_wrong_type_is_rejected(fp, field, value):
    bounds = {"max_exec_ms": (1, 2**53), "cpu_shares": (0, 100),
              "memory_limit_bytes": (1, 2**63 - 1), "max_retries": (0, 2**63 - 1),
              "retry_backoff_ms": (0, 2**53)}[field]
    kwargs = {"max_exec_ms": 5, field: value}
    if isinstance(value, int) and bounds[0] <= value <= bounds[1]:
        assert getattr(fp.ExecutionConstraints(**kwargs), field) == value
    else:
        with pytest.raises(fp.InvalidConfiguration, match=field):
            fp.ExecutionConstraints(**kwargs)


@settings(max_examples=200, deadline=None)
@given(rate=st.floats(allow_nan=True, allow_infinity=True))
def test_property_sampling_rate_bounds(fp, rate):
    if 0.0 <= rate <= 1.0:
        assert fp.ExecutionConstraints(5, sampling_rate=rate).sampling_rate == rate
    else:
        with pytest.raises(fp.InvalidConfiguration, match="sampling_rate"):
            fp.ExecutionConstraints(5, sampling_rate=rate)


def test_presets_are_built_once_and_keep_their_values(fp):
    C = fp.ExecutionConstraints
    assert C.fast_rule() is C.fast_rule() and C.semantic_rule() is C.semantic_rule()
    assert C.wasm_hook(10) is C.wasm_hook(10) is C.wasm_hook()
    assert C.observational(0.25) is C.observational(0.25)
    assert C.fast_rule() == C(5, cpu_shares=10, memory_limit_bytes=1024 * 1024)
    # More distinct arguments than the cache keeps: every one still gets its own value.
    for n in range(1, 200):
        assert C.wasm_hook(n) == C(n, cpu_shares=20, memory_limit_bytes=5 * 1024 * 1024), n
        assert C.observational(n / 200).sampling_rate == n / 200
    # The cache never takes a bool for 1 or an int for a float's key.
    C.wasm_hook(1)
    with pytest.raises(fp.InvalidConfiguration, match="max_exec_ms must be an int, got True"):
        C.wasm_hook(True)
    assert repr(C.observational(1)) == repr(C.observational(1.0))
    with pytest.raises(fp.InvalidConfiguration, match="sampling_rate"):
        C.observational(True)
    if fp.kind == "python":
        assert len(fp.core._WASM_HOOKS) <= fp.core._PRESET_CACHE_MAX
