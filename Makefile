# fastpath -- every target does its own set-up from nothing.
#   make test       venv + install (compiles the core) + the whole suite
#   make selftest   venv + install + python -m fastpath.selftest
#   make bench      the pytest-benchmark suite, comparison table and chart
#   make debug      rebuild with line tracing and assertions, run the suite
#   make asan       rebuild with ASan+UBSan, run the suite
#   make annotate   Cython's HTML annotation of the core (fastpath/_budget.html)
#   make lint       ruff + cython-lint + mypy --strict on the typing example

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
SOURCES := $(wildcard fastpath/*.pyx fastpath/*.pxd fastpath/*.h) setup.py pyproject.toml

.PHONY: test selftest bench debug asan annotate lint clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Dependencies come from pyproject.toml only: the editable install builds the
# extension in place (PEP 660) and installs the [test] extra.
.stamp-deps: $(BIN)/activate pyproject.toml setup.py
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# Rebuild after a source change (a no-op when the build is fresh).
.stamp-build: .stamp-deps $(SOURCES)
	$(PY) setup.py --quiet build_ext --inplace
	touch $@

test: .stamp-build
	$(PY) -m pytest -q

selftest: .stamp-build
	$(PY) -m fastpath.selftest

.stamp-bench-deps: .stamp-deps pyproject.toml
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $@

bench: .stamp-build .stamp-bench-deps
	$(PY) bench/run.py

# The debug and sanitizer builds replace the extension in place; both put the
# release build back afterwards, pass or fail.
debug: .stamp-deps
	rm -f .stamp-build
	FASTPATH_DEBUG_BUILD=1 $(PY) setup.py --quiet build_ext --inplace --force
	$(PY) -m pytest -q; status=$$?; \
	    $(PY) setup.py --quiet build_ext --inplace --force && touch .stamp-build; exit $$status

# ASan+UBSan on the extension (the interpreter itself is not instrumented, so
# the runtime is preloaded).  Leak detection is off: CPython keeps memory
# alive until exit by design.
asan: .stamp-deps
	rm -f .stamp-build
	FASTPATH_SANITIZE=1 $(PY) setup.py --quiet build_ext --inplace --force
	FASTPATH_SANITIZE=1 ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1 \
	    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	    LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	    $(PY) -m pytest -q -p no:cacheprovider; status=$$?; \
	    $(PY) setup.py --quiet build_ext --inplace --force && touch .stamp-build; exit $$status

annotate: .stamp-deps
	FASTPATH_ANNOTATE=1 $(PY) setup.py --quiet build_ext --inplace --force
	@echo "wrote fastpath/_budget.html"

lint: .stamp-deps
	$(PY) -m pip install --quiet ruff cython-lint pycodestyle
	$(BIN)/ruff check fastpath tests bench
	PATH=$(BIN):$$PATH $(BIN)/cython-lint fastpath/*.pyx
	$(PY) -m mypy

clean:
	rm -rf build dist *.egg-info fastpath/*.c fastpath/*.so fastpath/*.html .stamp-* .pytest_cache
