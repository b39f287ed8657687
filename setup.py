"""Build the compiled core.  A failed compile fails the install: there is no
silent fallback to the pure-Python twin (set FASTPATH_NO_EXTENSIONS=1 at run
time to choose the twin explicitly)."""

import glob
import os

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
