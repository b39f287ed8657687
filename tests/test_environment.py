"""The FASTPATH_* variables read at import: one parser per kind, the same on both cores.

Each import runs in a subprocess with the variable set; ``core`` selects the
compiled core or the pure-Python twin (FASTPATH_NO_EXTENSIONS).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fastpath import InvalidConfiguration, _config

ROOT = Path(__file__).resolve().parent.parent
CORES = ["compiled", "python"]
VARIABLES = ("FASTPATH_NO_EXTENSIONS", "FASTPATH_PREEMPT", "FASTPATH_FAST_GIL", "FASTPATH_CLOCK",
             "FASTPATH_PREEMPT_SIGNAL")
SHOW = ("import fastpath; i = fastpath.preemption_info(); "
        "print(fastpath.IMPLEMENTATION, i['enabled'], i['signal'], i['signal_route'])")


def _import(core: str | None, code: str = "import fastpath", **variables: str
            ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    if core == "python":
        env["FASTPATH_NO_EXTENSIONS"] = "1"
    env.update(variables)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=60)


def _rejected(out: subprocess.CompletedProcess[str], message: str) -> None:
    assert out.returncode != 0, out.stdout
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("fastpath.errors.InvalidConfiguration: "), out.stderr
    assert message in last, last


# ---------------------------------------------------------- FASTPATH_PREEMPT_SIGNAL

# SIGTERM, SIGUSR1, SIGKILL, SIGSTOP, glibc's reserved 32, "no signal", junk, empty,
# one past SIGRTMAX, a name out of range, a lower-case-sensitive junk word.
BAD_SIGNALS = ["15", "10", "9", "19", "32", "0", "bogus", "", "65", "SIGRTMAX+1", "SIGTERM",
               "Off-ish", " 12 ", "-40"]


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("value", ["15", "10", "9", "19", "32", "0", "bogus", "", "BoGuS"])
def test_a_bad_preempt_signal_fails_the_import_naming_the_variable_and_value(core, value):
    out = _import(core, FASTPATH_PREEMPT_SIGNAL=value)
    _rejected(out, "FASTPATH_PREEMPT_SIGNAL must be a real-time signal")
    # The value as given: not stripped, not lower-cased.
    assert out.stderr.strip().endswith(f"got {value!r}"), out.stderr


@pytest.mark.parametrize("value", BAD_SIGNALS)
def test_the_signal_parser_accepts_only_real_time_signals_or_off(value):
    with pytest.raises(InvalidConfiguration, match="FASTPATH_PREEMPT_SIGNAL") as info:
        _config.parse_preempt_signal(value)
    assert str(info.value).endswith(f"got {value!r}")


def test_real_time_signals_by_number_and_by_name():
    lo, hi = int(signal.SIGRTMIN), int(signal.SIGRTMAX)
    parse = _config.parse_preempt_signal
    assert [parse(str(n)) for n in (lo, hi)] == [lo, hi]
    assert parse("SIGRTMIN") == lo and parse("SIGRTMAX") == hi
    assert parse("SIGRTMIN+3") == lo + 3 and parse("sigrtmax-5") == hi - 5
    assert parse(" 40 ") == 40
    assert parse("off") is None and parse("OFF") is None
    assert parse(_config.DEFAULT_PREEMPT_SIGNAL) == hi - 5


def test_a_named_signal_is_installed_and_off_means_the_gil_path():
    hi = int(signal.SIGRTMAX)
    out = _import("compiled", SHOW, FASTPATH_PREEMPT_SIGNAL="SIGRTMAX-3")
    assert out.stdout.split() == ["compiled", "True", str(hi - 3), "ours"], out.stderr
    out = _import("compiled", SHOW, FASTPATH_PREEMPT_SIGNAL="Off")
    assert out.stdout.split() == ["compiled", "True", "None", "off"], out.stderr
    out = _import("compiled", SHOW)
    assert out.stdout.split() == ["compiled", "True", str(hi - 5), "ours"], out.stderr


# ------------------------------------------------------------------ on/off switches

TRUE = ["1", "true", "yes", "on", "TRUE", " On "]
FALSE = ["0", "false", "no", "off", "", "No"]


@pytest.mark.parametrize("value", TRUE + FALSE)
def test_one_vocabulary_for_every_switch(value, monkeypatch):
    expected = value.strip().lower() in ("1", "true", "yes", "on")
    for name in ("FASTPATH_NO_EXTENSIONS", "FASTPATH_PREEMPT", "FASTPATH_FAST_GIL"):
        monkeypatch.setenv(name, value)
        assert _config.env_flag(name, not expected) is expected


def test_an_unset_switch_takes_its_default(monkeypatch):
    monkeypatch.delenv("FASTPATH_PREEMPT", raising=False)
    assert _config.env_flag("FASTPATH_PREEMPT", True) is True
    assert _config.env_flag("FASTPATH_PREEMPT", False) is False


@pytest.mark.parametrize("value", ["2", "maybe", "Enabled", "y", "-1"])
def test_a_switch_outside_the_vocabulary_is_an_error_naming_it(value, monkeypatch):
    monkeypatch.setenv("FASTPATH_FAST_GIL", value)
    with pytest.raises(InvalidConfiguration, match="FASTPATH_FAST_GIL") as info:
        _config.env_flag("FASTPATH_FAST_GIL", True)
    assert str(info.value).endswith(f"got {value!r}")


@pytest.mark.parametrize("value,core", [("false", "compiled"), ("0", "compiled"),
                                        ("", "compiled"), ("no", "compiled"),
                                        ("true", "python"), ("YES", "python")])
def test_no_extensions_false_selects_the_compiled_core(value, core):
    out = _import(None, "import fastpath; print(fastpath.IMPLEMENTATION)",
                  FASTPATH_NO_EXTENSIONS=value)
    assert out.stdout.strip() == core, out.stderr


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("name", ["FASTPATH_PREEMPT", "FASTPATH_FAST_GIL"])
def test_every_switch_is_checked_at_import_by_both_cores(core, name):
    _rejected(_import(core, **{name: "Maybe"}), f"{name} must be one of")


@pytest.mark.parametrize("core", CORES)
def test_no_extensions_outside_the_vocabulary_fails_the_import(core):
    out = _import(None, FASTPATH_NO_EXTENSIONS="python" if core == "python" else "compiled")
    _rejected(out, "FASTPATH_NO_EXTENSIONS must be one of")


# ------------------------------------------------------------------ FASTPATH_CLOCK

@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("value", ["bogus", "", "TSC2"])
def test_a_bad_clock_is_rejected_by_both_cores(core, value):
    out = _import(core, FASTPATH_CLOCK=value)
    _rejected(out, f"FASTPATH_CLOCK must be one of 'tsc', 'monotonic', got {value!r}")


def test_the_clock_choice_is_case_insensitive():
    out = _import("compiled", "import fastpath; print(fastpath.preemption_info()['clock'])",
                  FASTPATH_CLOCK="Monotonic")
    assert out.stdout.strip() == "CLOCK_MONOTONIC", out.stderr
    assert _import("python", FASTPATH_CLOCK="TSC").returncode == 0


def test_the_readme_lists_every_variable_read_at_import():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Environment variables", 1)[1].split("\n## ", 1)[0]
    for name in VARIABLES:
        assert f"`{name}`" in section, name
