"""What `import fastpath` loads, the cimport path, and the typing of the API."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

import fastpath

ROOT = Path(__file__).resolve().parent.parent


def _run(code: str, **env: str) -> str:
    full_env = {k: v for k, v in os.environ.items() if k != "FASTPATH_NO_EXTENSIONS"}
    full_env.update(env)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=full_env, cwd=ROOT, check=True)
    return out.stdout.strip()


def test_compiled_core_is_what_import_fastpath_loads_by_default():
    out = _run("import fastpath; print(fastpath.IMPLEMENTATION,"
               " type(fastpath.ExecutionBudget).__name__,"
               " fastpath.core.__file__)")
    kind, meta, path = out.split()
    assert kind == "compiled"
    assert meta == "type" and path.endswith(".so")


@pytest.mark.skipif(not sysconfig.get_config_var("Py_GIL_DISABLED"),
                    reason="a free-threaded build only")
def test_a_free_threaded_build_turns_the_gil_on_for_the_compiled_core():
    """The core does not declare Py_mod_gil (its counters, slots and memory table rely on
    the GIL), so importing it re-enables the GIL, and CPython says so; the twin leaves
    it off."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("FASTPATH_NO_EXTENSIONS", "PYTHON_GIL")}
    code = "import sys, fastpath; print(fastpath.IMPLEMENTATION, sys._is_gil_enabled())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, cwd=ROOT, check=True)
    assert out.stdout.split() == ["compiled", "True"]
    assert "has been enabled to load module 'fastpath._budget'" in out.stderr
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**env, "FASTPATH_NO_EXTENSIONS": "1"}, cwd=ROOT, check=True)
    assert out.stdout.split() == ["python", "False"]


def test_the_twin_is_an_explicit_choice():
    out = _run("import fastpath; print(fastpath.IMPLEMENTATION, fastpath.core.__name__)",
               FASTPATH_NO_EXTENSIONS="1")
    assert out == "python fastpath._budget_py"


def test_compiled_classes_are_extension_types():
    from fastpath import _budget

    for cls in (_budget.ExecutionConstraints, _budget.ExecutionBudget, _budget.ExecutionStats):
        assert not hasattr(cls, "__dict__") or "__slots__" not in cls.__dict__
        assert cls.__module__ == "fastpath._budget"


def test_pxd_and_header_ship_with_the_package():
    pkg = Path(fastpath.__file__).parent
    for name in ("_budget.pxd", "_fp_runtime.h", "py.typed"):
        assert (pkg / name).exists(), name
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"*.pxd"' in pyproject and '"*.h"' in pyproject and '"py.typed"' in pyproject


@pytest.mark.slow
def test_another_cython_module_can_cimport_the_core(tmp_path):
    pytest.importorskip("Cython")
    (tmp_path / "probe.pyx").write_text(textwrap.dedent("""
        # cython: language_level=3
        from fastpath._budget cimport ExecutionBudget, ExecutionConstraints

        def deadline_state(ExecutionBudget budget):
            # C-level calls: no Python method call, no allocation
            return budget.is_timeout_c(), budget.remaining_ns_c()

        def sample(ExecutionConstraints constraints):
            return constraints.should_sample_c()

        def fresh(ExecutionConstraints constraints):
            return constraints.create_budget_c()
    """))
    (tmp_path / "setup.py").write_text(textwrap.dedent(f"""
        from setuptools import setup, Extension
        from Cython.Build import cythonize
        setup(ext_modules=cythonize(
            [Extension("probe", ["probe.pyx"], include_dirs=[{str(ROOT / 'fastpath')!r}])],
            include_path=[{str(ROOT)!r}], quiet=True))
    """))
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=tmp_path,
                   check=True, capture_output=True)
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent("""
            import time, probe
            from fastpath import _budget
            c = _budget.ExecutionConstraints(2)
            b = c.create_budget()
            late, left = probe.deadline_state(b)
            assert late is False and 0 < left <= 2_000_000, (late, left)
            time.sleep(0.003)
            assert probe.deadline_state(b) == (True, 0)
            assert probe.sample(c) is True
            assert type(probe.fresh(c)) is _budget.ExecutionBudget
            print("ok")
        """)],
        cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.slow
def test_mypy_strict_passes_on_the_usage_example():
    pytest.importorskip("mypy")
    out = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental",
                          str(ROOT / "tests" / "typing_example.py")],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("twin", ["", "1"])
def test_bad_environment_switches_are_rejected_at_import(twin):
    env = {k: v for k, v in os.environ.items() if k != "FASTPATH_NO_EXTENSIONS"}
    env.update(FASTPATH_PREEMPT="maybe")
    if twin:
        env["FASTPATH_NO_EXTENSIONS"] = "1"
    out = subprocess.run([sys.executable, "-c", "import fastpath"], capture_output=True,
                         text=True, env=env, cwd=ROOT)
    assert out.returncode != 0
    assert ("FASTPATH_PREEMPT must be one of 1/true/yes/on (on) or 0/false/no/off or empty "
            "(off), got 'maybe'") in out.stderr
    env["FASTPATH_PREEMPT"] = "off"
    out = subprocess.run([sys.executable, "-c", "import fastpath; "
                          "print(fastpath.preemption_info()['enabled'])"],
                         capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("header", sorted(p.name for p in (ROOT / "fastpath").glob("_fp_*.h")))
def test_every_c_header_compiles_on_its_own(header, tmp_path):
    # One header per concept, each including what it uses.
    import shutil
    import sysconfig

    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("no gcc")
    src = tmp_path / "one.c"
    src.write_text(f'#include "{header}"\n')
    proc = subprocess.run(
        [gcc, "-fsyntax-only", "-Wall", "-Wno-unused-function", "-Werror",
         "-I", str(ROOT / "fastpath"), "-I", sysconfig.get_paths()["include"], str(src)],
        capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
