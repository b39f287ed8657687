"""Build the compiled core.  A failed compile fails the install: there is no
silent fallback to the pure-Python twin (set FASTPATH_NO_EXTENSIONS=1 at run
time to choose the twin explicitly)."""

import glob
import os
import platform
import subprocess
import sysconfig
import tempfile

import Cython
from Cython.Build import cythonize
from setuptools import Extension, setup

# Directives live here, in one place.
DIRECTIVES = {
    "language_level": 3,
    "embedsignature": True,
    # Argument Clinic style ("name($self, a, b=1)\n--\n\n"): CPython turns that
    # header into __text_signature__, so inspect.signature works on the core's
    # functions and methods without binding=True (whose cyfunction methods miss
    # CPython's call specialisation).  Class signatures are written by hand in
    # the class docstrings (tests/test_parity.py compares them with the twin's).
    "embedsignature.format": "clinic",
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": False,
    # Plain method descriptors (METH_NOARGS/METH_O), which CPython's call
    # specialisation handles directly, instead of cyfunction objects.
    "binding": False,
}

debug = os.environ.get("FASTPATH_DEBUG_BUILD") == "1"
sanitize = os.environ.get("FASTPATH_SANITIZE") == "1"
if debug:
    DIRECTIVES.update(linetrace=True, boundscheck=True, wraparound=True)


def cc_accepts(flag):
    """Does this build's C compiler accept `flag` (a test compile of an empty unit)?"""
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "t.c")
        with open(src, "w") as fh:
            fh.write("int fp_t;\n")
        try:
            return subprocess.run(cc + ["-Werror", flag, "-c", src, "-o", src + ".o"],
                                  capture_output=True).returncode == 0
        except OSError:
            return False


compile_args = ["-O2", "-Wall", "-Wno-unused-function", "-Wno-unused-variable"]
link_args = []
macros = []
if debug:
    compile_args = ["-O0", "-g", "-UNDEBUG"]
    macros.append(("CYTHON_TRACE_NOGIL", "1"))
if sanitize:
    compile_args = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
                    "-fno-sanitize-recover=undefined"]
    link_args = ["-fsanitize=address,undefined"]

# Release builds only: every call creates a budget, and Cython zeroes a new
# object (184 bytes) with memset, which GCC's x86-64 default expands to `rep
# stosq` (93 % of the budget's tp_new samples under perf).  Plain stores instead
# (measured: execute_with_constraints(FAST, f) - f() 111 -> 100 ns).
MEMSET_STORES = "-mmemset-strategy=unrolled_loop:256:noalign,libcall:-1:noalign"
if (not (debug or sanitize) and platform.machine() in ("x86_64", "AMD64")
        and cc_accepts(MEMSET_STORES)):
    compile_args.insert(1, MEMSET_STORES)

build_kind = "sanitize" if sanitize else ("debug" if debug else "release")
# What `python -m fastpath.selftest` reports about this build.
macros += [
    ("FASTPATH_CYTHON_VERSION", '"%s"' % Cython.__version__),
    ("FASTPATH_BUILD_KIND", '"%s"' % build_kind),
    ("FASTPATH_BUILD_CFLAGS", '"%s"' % " ".join(compile_args)),
    ("FASTPATH_BUILD_DIRECTIVES", '"%s"' % " ".join(f"{k}={v}" for k, v in DIRECTIVES.items())),
]


def extension(module, depends, **kwargs):
    """fastpath.<module> from fastpath/<module>.pyx, with this build's flags."""
    return Extension(f"fastpath.{module}", [f"fastpath/{module}.pyx"],
                     extra_compile_args=compile_args, extra_link_args=link_args,
                     define_macros=macros, depends=depends, **kwargs)


extensions = [
    extension("_budget", sorted(glob.glob("fastpath/_fp_*.h"))
              + ["fastpath/_rules.pxi", "fastpath/_budget.pxd", "fastpath/_histogram.pxd",
                 "fastpath/_quota.pxd"], include_dirs=["fastpath"]),
    extension("_histogram", ["fastpath/_histogram.pxd"]),
    extension("_quota", ["fastpath/_quota.pxd"]),
    # fastpath.wasm's per-call path.  It needs no wasmtime headers (it declares
    # the few types it uses) and links to no wasmtime library: the functions are
    # resolved at run time from the library the `wasmtime` package loaded.
    extension("_wasm", ["fastpath/_fp_wasm.h", "fastpath/_fp_rules.h", "fastpath/_fp_pytype.h",
                        "fastpath/_fp_common.h"], include_dirs=["fastpath"]),
]

setup(ext_modules=cythonize(extensions, compiler_directives=DIRECTIVES,
                            annotate=os.environ.get("FASTPATH_ANNOTATE") == "1"))
