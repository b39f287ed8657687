# fastpath -- every target does its own set-up from nothing.
#   make test       venv + install (compiles the core) + the whole suite
#   make selftest   venv + install + python -m fastpath.selftest
#   make bench      the pytest-benchmark suite, comparison table and chart
#   make costs      only the enforce/execute benchmark rows (ratios to f())
#   make debug      rebuild with line tracing and assertions, run the suite
#   make asan       rebuild with ASan+UBSan, run the suite
#   make annotate   Cython's HTML annotation of the core (fastpath/_budget.html)
#   make lint       ruff + cython-lint + mypy --strict on the typing example
#   make matrix     the suite, selftest and bench goal table on CPython 3.11, 3.13,
#                   free-threaded 3.13t, 3.14 and 3.14t (tools/matrix.sh; builds and
#                   caches the interpreters in ~/.cache/fastpath/cpython; 3.14 runs as
#                   Debian's binary, 3.14-deb, and 3.14t is listed unavailable while
#                   the archive does not serve the python3.14 source)
#
# Another interpreter in its own venv: make VENV=.venv-3.13 PYTHON=/path/python3.13 test
# (each venv has its own stamps; the compiled modules carry the ABI in their names).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
SOURCES := $(wildcard fastpath/*.pyx fastpath/*.pxd fastpath/*.h) setup.py pyproject.toml
# Stamps per venv: .stamp-deps for .venv, .stamp-3.13-deps for .venv-3.13, ...
STAMP := .stamp$(if $(filter .venv,$(notdir $(VENV))),,-$(patsubst .venv-%,%,$(notdir $(VENV))))
# Arguments for bench/run.py (e.g. BENCH_ARGS=--quick).
BENCH_ARGS ?=

.PHONY: build test selftest bench costs debug asan annotate lint matrix clean redis-server

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Dependencies come from pyproject.toml only: the editable install builds the
# extension in place and installs the [test] extra.  editable_mode=compat puts
# the checkout on sys.path with a .pth file, which mypy (and other static
# tools) read; setuptools' default PEP 660 finder hook is invisible to them
# (tests/test_typing.py runs mypy from outside the checkout).
EDITABLE := --config-settings editable_mode=compat
$(STAMP)-deps: $(BIN)/activate pyproject.toml setup.py Makefile
	$(PY) -m pip install --quiet $(EDITABLE) -e '.[test]'
	touch $@

# Rebuild after a source change (a no-op when the build is fresh).
$(STAMP)-build: $(STAMP)-deps $(SOURCES)
	$(PY) setup.py --quiet build_ext --inplace
	touch $@

build: $(STAMP)-build

# The quota tests and benchmarks run a real redis-server (Debian's package).
redis-server:
	@command -v redis-server >/dev/null || apt-get install -y redis-server \
	    || (apt-get update && apt-get install -y redis-server)

test: $(STAMP)-build redis-server
	$(PY) -m pytest -q

selftest: $(STAMP)-build
	$(PY) -m fastpath.selftest

$(STAMP)-bench-deps: $(STAMP)-deps pyproject.toml
	$(PY) -m pip install --quiet $(EDITABLE) -e '.[test,bench]'
	touch $@

bench: $(STAMP)-build $(STAMP)-bench-deps redis-server
	$(PY) bench/run.py $(BENCH_ARGS)

# The enforce/execute rows alone, as ratios to f() in one run (make matrix's
# "costs" step; needs only the test extra): COSTS_OUT=.matrix/<tag>/costs.json
COSTS_OUT ?= bench/results/costs.json
costs: $(STAMP)-build
	@mkdir -p $(dir $(COSTS_OUT))
	$(PY) tools/matrix_costs.py $(COSTS_OUT)

# The debug and sanitizer builds replace the extension in place; both put the
# release build back afterwards, pass or fail.
debug: $(STAMP)-deps
	rm -f $(STAMP)-build
	FASTPATH_DEBUG_BUILD=1 $(PY) setup.py --quiet build_ext --inplace --force
	$(PY) -m pytest -q; status=$$?; \
	    $(PY) setup.py --quiet build_ext --inplace --force && touch $(STAMP)-build; exit $$status

# ASan+UBSan on the extension (the interpreter itself is not instrumented, so
# the runtime is preloaded).  Leak detection is off: CPython keeps memory
# alive until exit by design.
asan: $(STAMP)-deps
	rm -f $(STAMP)-build
	FASTPATH_SANITIZE=1 $(PY) setup.py --quiet build_ext --inplace --force
	FASTPATH_SANITIZE=1 ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1 \
	    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	    LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	    $(PY) -m pytest -q -p no:cacheprovider; status=$$?; \
	    $(PY) setup.py --quiet build_ext --inplace --force && touch $(STAMP)-build; exit $$status

annotate: $(STAMP)-deps
	FASTPATH_ANNOTATE=1 $(PY) setup.py --quiet build_ext --inplace --force
	@echo "wrote fastpath/_budget.html"

lint: $(STAMP)-deps
	$(PY) -m pip install --quiet ruff cython-lint pycodestyle
	$(BIN)/ruff check fastpath tests bench
	PATH=$(BIN):$$PATH $(BIN)/cython-lint fastpath/*.pyx
	$(PY) -m mypy

# CI (.ci/run) runs it after `make test`, with its own versions and steps; the
# variables it reads are listed at the top of tools/matrix.sh.
matrix:
	bash tools/matrix.sh

clean:
	rm -rf build dist *.egg-info fastpath/*.c fastpath/*.so fastpath/*.html .stamp-* .pytest_cache
