"""fastpath.wasm (goals 22a-22e): a hook call against wasmtime-py's own call of the same
export, instantiation from the pool's pre-linked module, and what epoch and
fuel instrumentation cost a guest loop.

Deadline -> trap lateness and the fuel calibration error are measured by
``bench/wasm_lateness.py`` (plain script, run by ``bench/run.py``).
"""

from __future__ import annotations

import pytest
from _support import measure

wasmtime = pytest.importorskip("wasmtime")

from fastpath import ExecutionConstraints  # noqa: E402
from fastpath.wasm import WasmHook  # noqa: E402
from tests.wat import ADD, COUNT  # noqa: E402


# The wasm_hook profile (20 % CPU as fuel, 5 MB linear memory) with a deadline
# no benchmark round reaches on a loaded machine.
PROFILE = ExecutionConstraints.wasm_hook(10).replace(max_exec_ms=60_000)
LOOP_N = 1_000_000


def test_hook_add(benchmark):
    """``hook(1, 2)``: budget, epoch deadline, fuel, pooled instance, C call."""
    hook = WasmHook(ADD, "add", constraints=PROFILE)
    assert hook(1, 2) == 3
    measure(benchmark, "wasm", "wasm_call", "fastpath", hook, 1, 2)


def test_hook_add_no_limits_but_the_deadline(benchmark):
    hook = WasmHook(ADD, "add", constraints=ExecutionConstraints(60_000))
    measure(benchmark, "wasm", "wasm_call", "fastpath-deadline-only", hook, 1, 2)


def test_wasmtime_py_call(benchmark):
    """wasmtime-py's ``Func.__call__`` of the same export (plain engine)."""
    store = wasmtime.Store()
    instance = wasmtime.Instance(store, wasmtime.Module(store.engine, ADD), [])
    add = instance.exports(store)["add"]
    assert add(store, 1, 2) == 3
    measure(benchmark, "wasm", "wasm_call", "wasmtime-py", add, store, 1, 2)


def test_pool_instantiation(benchmark):
    """A new store + instance from the pre-linked module (a call finding the pool empty)."""
    hook = WasmHook(ADD, "add", constraints=PROFILE)
    measure(benchmark, "wasm", "wasm_instantiate", "fastpath", hook._fresh_instance)


def _loop_func(epoch: bool, fuel: bool):
    config = wasmtime.Config()
    config.epoch_interruption = epoch
    config.consume_fuel = fuel
    store = wasmtime.Store(wasmtime.Engine(config))
    if epoch:
        store.set_epoch_deadline(1 << 40)
    if fuel:
        store.set_fuel(1 << 62)
    instance = wasmtime.Instance(store, wasmtime.Module(store.engine, COUNT), [])
    return store, instance.exports(store)["count"]


@pytest.mark.parametrize("impl, epoch, fuel", [
    ("plain", False, False), ("epoch", True, False), ("epoch+fuel", True, True)])
def test_guest_loop(benchmark, impl, epoch, fuel):
    """``count(1_000_000)``: a tight guest loop (~1 ms; the call's own cost is noise)."""
    store, count = _loop_func(epoch, fuel)
    assert count(store, 10) == 10
    if fuel:
        store.set_fuel(1 << 62)
    measure(benchmark, "wasm guest loop", "wasm_loop", impl, count, store, LOOP_N,
            inner=1, iterations_per_call=LOOP_N)
