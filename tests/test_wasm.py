"""fastpath.wasm: WebAssembly hooks on wasmtime under a constraints profile.

Every test runs on both cores (the hook's budgets come from the core of its
constraints).  Timing facts are orderings with headroom (a spin loop under a
50 ms budget stopped before 1 s), never "fits in" claims.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time

import pytest

import fastpath

wasmtime = pytest.importorskip("wasmtime")

from fastpath import _wasm  # noqa: E402
from fastpath import wasm as fwasm  # noqa: E402
from fastpath.wasm import WasmHook, WasmTrap  # noqa: E402
from tests.threads import in_thread  # noqa: E402
from tests.wat import ADD, COUNT, SPIN  # noqa: E402

PAGE = 65536

KINDS = """
(module
  (func (export "mix") (param i32 i64 f32 f64) (result i64 f64)
    (i64.add (i64.extend_i32_s (local.get 0)) (local.get 1))
    (f64.add (f64.promote_f32 (local.get 2)) (local.get 3))))
"""

GROW = """
(module
  (memory (export "memory") 1)
  (func (export "grow") (param i32) (result i32)
    (memory.grow (local.get 0)))
  (func (export "size") (result i32) (memory.size)))
"""

TRAPS = """
(module
  (memory 1)
  (func $inner (export "boom") unreachable)
  (func (export "outer") (call $inner))
  (func (export "oob") (result i32) (i32.load (i32.const 1000000))))
"""

HOST = """
(module
  (import "env" "scale" (func $scale (param i32) (result i32)))
  (func (export "run") (param i32) (result i32)
    (i32.add (call $scale (local.get 0)) (i32.const 1))))
"""


def stopped(fp, where, hook, *args):
    """Call hook(*args) in the main or a worker thread; (its ConstraintViolation,
    seconds taken).  Fails the test if the call returned or raised anything else."""
    def call():
        start = time.monotonic()
        try:
            hook(*args)
        except fp.ConstraintViolation as exc:
            return exc, time.monotonic() - start
        return None, time.monotonic() - start

    box = {"result": call()} if where == "main" else in_thread(call)
    assert "error" not in box, box.get("error")
    exc, took = box["result"]
    assert exc is not None, "the call returned"
    return exc, took


def test_add_returns_the_sum(fp):
    hook = WasmHook(ADD, "add", constraints=fp.ExecutionConstraints(60_000))
    assert hook(1, 2) == 3
    assert hook(-5, 3) == -2
    assert hook(2**31 - 1, 1) == -(2**31)          # i32 wraps as in wasm
    assert hook.instances_created == 1              # one pooled instance served them all


def test_every_value_kind_and_several_results_round_trip(fp):
    hook = WasmHook(KINDS, "mix", constraints=fp.ExecutionConstraints(60_000))
    assert hook(2, 40, 0.5, 0.25) == (42, 0.75)


def test_the_default_profile_is_wasm_hook_10():
    hook = WasmHook(ADD, "add")
    assert hook.constraints == type(hook.constraints).wasm_hook(10)


def test_module_as_bytes_path_and_wasmtime_module(fp, tmp_path):
    c = fp.ExecutionConstraints(60_000)
    binary = wasmtime.wat2wasm(ADD)
    assert WasmHook(binary, "add", constraints=c)(2, 3) == 5
    path = tmp_path / "add.wat"
    path.write_text(ADD)
    assert WasmHook(path, "add", constraints=c)(2, 3) == 5
    assert WasmHook(str(path), "add", constraints=c)(2, 3) == 5
    engine = fwasm.new_engine()
    module = wasmtime.Module(engine, ADD)
    assert WasmHook(module, "add", constraints=c, engine=engine)(2, 3) == 5


@pytest.mark.parametrize("where", ["main", "worker"])
def test_a_spin_loop_is_stopped_by_the_epoch_deadline_in_any_thread(fp, where):
    hook = WasmHook(SPIN, "spin", constraints=fp.ExecutionConstraints(50))
    exc, took = stopped(fp, where, hook)
    assert exc.kind is fp.ConstraintViolationType.TIMEOUT_EXCEEDED
    assert exc.interrupted is True
    assert took < 1.0
    assert exc.stats.elapsed_ns >= 50_000_000


def test_fail_open_lets_a_late_guest_finish_and_stops_a_runaway_at_twice_the_budget(fp):
    c = fp.ExecutionConstraints(50, fail_closed_on_timeout=False)
    spin = WasmHook(SPIN, "spin", constraints=c)
    with pytest.raises(fp.ConstraintViolation) as info:
        spin()
    assert info.value.kind is fp.ConstraintViolationType.TIMEOUT_EXCEEDED
    assert info.value.stats.elapsed_ns >= 100_000_000         # ran on to 2x the budget
    e = fp.ConstraintEnforcer.with_constraints(
        fp.ExecutionConstraints.fast_rule(), fp.ExecutionConstraints.semantic_rule(), c,
        fp.ExecutionConstraints.observational(), fallbacks={fp.RuleType.WASM_HOOK: "fb"})
    assert e.execute_with_constraints(fp.RuleType.WASM_HOOK, spin) == "fb"


def test_an_interrupted_instance_is_replaced_and_the_next_call_works(fp):
    hook = WasmHook(COUNT, "count", constraints=fp.ExecutionConstraints(50))
    assert hook(10) == 10
    assert (hook.instances_created, hook.idle_instances) == (1, 1)
    with pytest.raises(fp.ConstraintViolation) as info:
        hook(2**62)
    assert info.value.kind is fp.ConstraintViolationType.TIMEOUT_EXCEEDED
    assert hook.idle_instances == 0             # the interrupted one was discarded
    assert hook(7) == 7
    assert (hook.instances_created, hook.idle_instances) == (2, 1)


def test_the_cpu_allowance_stops_a_runaway_guest_with_cpu_exceeded(fp):
    # 10 s wall, 1% CPU share: a 100 ms allowance, far below the deadline.
    c = fp.ExecutionConstraints(10_000, cpu_shares=1)
    hook = WasmHook(COUNT, "count", constraints=c)
    assert hook(1000) == 1000
    start = time.monotonic()
    with pytest.raises(fp.ConstraintViolation) as info:
        hook(2**62)
    assert time.monotonic() - start < 5.0
    assert fp.ConstraintViolationType.CPU_EXCEEDED in info.value.violations
    assert fp.ConstraintViolationType.TIMEOUT_EXCEEDED not in info.value.violations
    assert info.value.interrupted is True
    assert hook.idle_instances == 0


def test_fuel_calibration_is_measured_and_a_positive_rate():
    rate = fwasm.fuel_per_cpu_ms()
    assert rate > 0
    assert fwasm.fuel_per_cpu_ms() == rate          # measured once


def test_a_cpu_allowance_stops_a_loop_after_cpu_of_the_order_of_the_allowance():
    # The calibration error, with huge headroom: a 20 ms allowance of integer
    # loop work ends well within 0.05x..20x of 20 ms of thread CPU.
    c = fastpath.ExecutionConstraints(20_000, cpu_shares=1)   # 200 ms allowance
    hook = WasmHook(COUNT, "count", constraints=c)
    fuel, cpu_ns, _, _ = fwasm._limits_for(c)
    cpu0 = time.thread_time()
    with pytest.raises(fastpath.ConstraintViolation):
        hook(2**62)
    used_ms = (time.thread_time() - cpu0) * 1e3
    assert fuel == int(200 * fwasm.fuel_per_cpu_ms()) and cpu_ns == 200_000_000
    assert 10 < used_ms < 4000


def test_memory_grow_past_the_limit_fails_and_is_memory_exceeded(fp):
    c = fp.ExecutionConstraints(60_000, memory_limit_bytes=4 * PAGE)
    hook = WasmHook(GROW, "grow", constraints=c)
    budget = c.create_budget()
    assert budget.enforce(hook, 1) == 1           # 1 -> 2 pages: old size returned
    assert budget.stats().memory_used_bytes >= 2 * PAGE
    assert budget.stats().memory_used_bytes < 2 * PAGE + 8192
    assert not budget.get_violations()
    with pytest.raises(fp.ConstraintViolation) as info:
        hook(10)                                  # 2 -> 12 pages: refused
    exc = info.value
    assert exc.kind is fp.ConstraintViolationType.MEMORY_EXCEEDED
    # charged what the guest asked for, as the core charges a refused allocation
    assert exc.stats.memory_used_bytes >= 12 * PAGE
    assert exc.stats.memory_used_bytes < 12 * PAGE + 8192
    # the guest saw -1 and its memory did not grow
    size = WasmHook(GROW, "size", constraints=c)
    assert size() == 1


def test_the_guest_sees_minus_one_when_a_grow_is_refused(fp):
    # Inside a budget without a limit of its own the hook's limit still caps
    # the store; the call's result is the guest's -1.
    c = fp.ExecutionConstraints(60_000, memory_limit_bytes=2 * PAGE)
    hook = WasmHook("""
        (module (memory 1)
          (func (export "try") (result i32)
            (if (result i32) (i32.eq (memory.grow (i32.const 5)) (i32.const -1))
              (then (i32.const -1)) (else (memory.size)))))""", "try", constraints=c)
    with pytest.raises(fp.ConstraintViolation) as info:
        hook()
    assert info.value.kind is fp.ConstraintViolationType.MEMORY_EXCEEDED
    assert info.value.interrupted is False          # the guest finished: -1 was its answer


def test_a_guest_stopped_at_its_deadline_is_charged_its_linear_memory(fp):
    grow_then_spin = """
    (module (memory 1)
      (func (export "f") (drop (memory.grow (i32.const 3))) (loop $l (br $l))))"""
    hook = WasmHook(grow_then_spin, "f", constraints=fp.ExecutionConstraints(50))
    with pytest.raises(fp.ConstraintViolation) as info:
        hook()
    assert info.value.kind is fp.ConstraintViolationType.TIMEOUT_EXCEEDED
    assert 4 * PAGE <= info.value.stats.memory_used_bytes < 4 * PAGE + 8192


def test_linear_memory_is_the_calls_memory_figure(fp):
    c = fp.ExecutionConstraints(60_000)
    hook = WasmHook(GROW, "size", constraints=c)
    budget = c.create_budget()
    assert budget.enforce(hook) == 1
    used = budget.stats().memory_used_bytes
    assert PAGE <= used < PAGE + 8192


def test_a_guest_trap_is_a_wasm_trap_with_the_backtrace(fp):
    c = fp.ExecutionConstraints(60_000)
    hook = WasmHook(TRAPS, "outer", constraints=c)
    with pytest.raises(WasmTrap) as info:
        hook()
    assert not isinstance(info.value, fp.ConstraintViolation)
    assert "unreachable" in info.value.message
    assert "wasm backtrace" in info.value.message
    assert hook.idle_instances == 0
    with pytest.raises(WasmTrap, match="out of bounds"):
        WasmHook(TRAPS, "oob", constraints=c)()


def test_a_start_function_trap_is_a_wasm_trap_with_wasmtimes_message(fp):
    start_traps = '(module (func $s unreachable) (start $s) (func (export "f")))'
    with pytest.raises(WasmTrap) as info:
        WasmHook(start_traps, "f", constraints=fp.ExecutionConstraints(60_000))
    assert info.value.message.startswith("instantiating the module failed: ")
    assert "unreachable" in info.value.message


def test_a_host_import_is_called_with_the_declared_types(fp):
    seen = []

    def scale(x):
        seen.append(x)
        return x * 10

    hook = WasmHook(HOST, "run", constraints=fp.ExecutionConstraints(60_000),
                    imports={"env": {"scale": scale}})
    assert hook(4) == 41
    assert seen == [4]


def test_a_host_import_error_propagates_unchanged_and_drops_the_instance(fp):
    class Boom(Exception):
        pass

    def scale(x):
        raise Boom(x)

    hook = WasmHook(HOST, "run", constraints=fp.ExecutionConstraints(60_000),
                    imports={"env": {"scale": scale}})
    with pytest.raises(Boom):
        hook(1)
    assert hook.idle_instances == 0


def test_keyboard_interrupt_in_a_host_import_is_not_swallowed(fp):
    def scale(x):
        raise KeyboardInterrupt

    hook = WasmHook(HOST, "run", constraints=fp.ExecutionConstraints(60_000),
                    imports={"env": {"scale": scale}})
    with pytest.raises(KeyboardInterrupt):
        hook(1)


@pytest.mark.parametrize("where", ["main", "worker"])
def test_a_python_spin_inside_a_host_import_is_preempted(fp, where):
    def scale(x):
        while True:
            x += 1

    hook = WasmHook(HOST, "run", constraints=fp.ExecutionConstraints(50),
                    imports={"env": {"scale": scale}})
    exc, took = stopped(fp, where, hook, 1)
    assert exc.kind is fp.ConstraintViolationType.TIMEOUT_EXCEEDED
    assert took < 1.0
    assert hook.idle_instances == 0


def test_concurrent_hooks_on_one_engine_trap_only_the_late_store(fp):
    engine = fwasm.new_engine()
    quick = WasmHook(COUNT, "count", constraints=fp.ExecutionConstraints(60_000),
                     engine=engine)
    spin = WasmHook(SPIN, "spin", constraints=fp.ExecutionConstraints(100), engine=engine)
    results: dict[int, object] = {}
    stop_at = time.monotonic() + 0.6

    def worker(i):
        if i == 0:
            try:
                spin()
                results[i] = "returned"
            except fp.ConstraintViolation as exc:
                results[i] = exc.kind
            return
        n = 0
        try:
            while time.monotonic() < stop_at:     # calls span the spinner's deadline
                assert quick(20_000) == 20_000
                n += 1
            results[i] = n
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results[0] is fp.ConstraintViolationType.TIMEOUT_EXCEEDED
    for i in (1, 2, 3):
        assert isinstance(results[i], int) and results[i] > 0, results[i]


def test_the_enforcer_pipeline_runs_a_hook_with_audit_events(fp):
    got = []
    c = fp.ExecutionConstraints(50)
    e = fp.ConstraintEnforcer.with_constraints(
        fp.ExecutionConstraints.fast_rule(), fp.ExecutionConstraints.semantic_rule(), c,
        fp.ExecutionConstraints.observational(), audit_sink=got.append)
    add = WasmHook(ADD, "add", constraints=c)
    assert e.execute_with_constraints(fp.RuleType.WASM_HOOK, add, 20, 22) == 42
    spin = WasmHook(SPIN, "spin", constraints=c)
    with pytest.raises(fp.ConstraintViolation) as info:
        e.execute_with_constraints(fp.RuleType.WASM_HOOK, spin)
    assert info.value.kind is fp.ConstraintViolationType.TIMEOUT_EXCEEDED
    assert len(got) == 1
    event = got[0]
    assert event.rule_type is fp.RuleType.WASM_HOOK
    assert event.outcome == "deny"
    assert event.interrupted is True
    assert event.violations == (fp.ConstraintViolationType.TIMEOUT_EXCEEDED,)


def test_run_async_awaits_the_result_and_stops_a_spin(fp):
    c = fp.ExecutionConstraints(50)
    add = WasmHook(ADD, "add", constraints=c)
    spin = WasmHook(SPIN, "spin", constraints=c)

    async def main():
        assert await add.run_async(1, 2) == 3
        start = time.monotonic()
        with pytest.raises(fp.ConstraintViolation) as info:
            await spin.run_async()
        assert info.value.kind is fp.ConstraintViolationType.TIMEOUT_EXCEEDED
        assert time.monotonic() - start < 1.0

    asyncio.run(main())


def test_the_ticker_is_idle_when_no_call_is_in_flight(fp):
    hook = WasmHook(ADD, "add", constraints=fp.ExecutionConstraints(60_000))
    hook(1, 1)
    time.sleep(0.01)                    # the ticker's last period ends
    ticks, inflight = _wasm.ticker_info()
    assert inflight == 0
    time.sleep(0.05)
    assert _wasm.ticker_info()[0] == ticks
    spin = WasmHook(SPIN, "spin", constraints=fp.ExecutionConstraints(20))
    with pytest.raises(fp.ConstraintViolation):
        spin()
    assert _wasm.ticker_info()[0] > ticks     # it ticked while the spin ran


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_ticker_wakes_without_timer_slack_and_takes_no_signals(fp):
    # The default timer slack (50 us) let the ticker's sleep to a call's
    # deadline end up to 50 us late; and a process-directed signal it took
    # would not interrupt the main thread.
    WasmHook(ADD, "add", constraints=fp.ExecutionConstraints(60_000))(1, 1)
    tickers = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as f:
                if f.read().strip() != "fastpath-wasm":
                    continue
            with open(f"/proc/{task}/timerslack_ns") as f:      # (not under task/)
                slack = int(f.read())
            with open(f"/proc/self/task/{task}/status") as f:
                blocked = [line.split()[1] for line in f if line.startswith("SigBlk:")][0]
        except FileNotFoundError:
            continue                    # a thread that ended meanwhile
        tickers.append((slack, int(blocked, 16)))
    assert len(tickers) == 1
    slack, blocked = tickers[0]
    assert slack == 1
    assert blocked & (1 << (signal.SIGINT - 1)) and blocked & (1 << (signal.SIGTERM - 1))


def _simulate_ticker(rng, deadline):
    # The ticker's arithmetic, driven by a simulated clock: it sleeps to
    # min(next grid tick, the call's deadline) and wakes `late` after it (a
    # timer's slack, a busy CPU).  The store's epoch deadline comes from its
    # callback, which runs on every tick it asked for and asks again while time
    # is left.  Returns (the first wake-up at or after the deadline, the epoch
    # then, the epoch the store is stopped at).
    T = _wasm.TICK_NS
    next_tick = rng.randrange(T)
    now = 0
    epoch = 0
    stop_at = epoch + _wasm._ticks_until(deadline, now, next_tick)
    wake_at = deadline
    while True:
        now = min(wake_at, next_tick) + rng.choice([0, 0, 1_000, 50_000, rng.randrange(2 * T)])
        due = wake_at <= now
        if due:
            wake_at = 2**62
        ticks, next_tick = _wasm._ticks_at_wake(next_tick, now, due)
        epoch += ticks
        if now >= deadline:
            return now, epoch, stop_at
        if epoch >= stop_at:            # an early callback: time is left, ask again
            stop_at = epoch + _wasm._ticks_until(deadline, now, next_tick)
            wake_at = min(wake_at, deadline)


def test_a_guest_is_stopped_at_the_tickers_first_wake_up_past_its_deadline():
    # Whatever the wake-ups' lateness, the tick at which the ticker finds the
    # deadline due reaches the store's epoch deadline: a grid tick that falls
    # due in the same wake-up does not swallow the deadline's own tick (which
    # left the guest running until the next grid tick, a period later).
    import random
    rng = random.Random(15)
    missed = []
    for _ in range(5000):
        deadline = rng.randrange(1, 12 * _wasm.TICK_NS)
        now, epoch, stop_at = _simulate_ticker(rng, deadline)
        if epoch < stop_at:
            missed.append((deadline, now, epoch, stop_at))
    assert missed == []


@pytest.mark.parametrize("args, error, match", [
    ((1,), TypeError, "takes 2 arguments, got 1"),
    ((1, 2, 3), TypeError, "takes 2 arguments, got 3"),
    (("1", 2), TypeError, "argument 0 must be an int"),
    ((1.5, 2), TypeError, "argument 0 must be an int"),
    ((True, 2), TypeError, "argument 0 must be an int"),
    ((2**40, 2), OverflowError, "does not fit an i32"),
])
def test_bad_arguments_raise_before_the_guest_runs(fp, args, error, match):
    hook = WasmHook(ADD, "add", constraints=fp.ExecutionConstraints(60_000))
    with pytest.raises(error, match=match):
        hook(*args)
    assert hook(1, 2) == 3


@pytest.mark.parametrize("kwargs, match", [
    ({"module": "(module", "export": "add"}, "does not compile"),
    ({"module": 42, "export": "add"}, "module must be WAT text"),
    ({"module": "/no/such/file.wasm", "export": "add"}, "no file"),
    ({"module": ADD, "export": "sub"}, "'sub' is not a function export"),
    ({"module": ADD, "export": ""}, "export must be a non-empty str"),
    ({"module": ADD, "export": "add", "pool": 0}, "pool must be an int in 1..4096, got 0"),
    ({"module": ADD, "export": "add", "pool": True}, "pool must be an int"),
    ({"module": ADD, "export": "add", "constraints": "fast"},
     "constraints must be an ExecutionConstraints"),
    ({"module": ADD, "export": "add", "engine": "nope"}, "engine must come from"),
    ({"module": HOST, "export": "run"}, "imports the function env.scale"),
    ({"module": HOST, "export": "run", "imports": {"env": {"scale": 3}}},
     "must be a callable"),
    ({"module": HOST, "export": "run",
      "imports": {"env": {"scale": abs, "extra": abs}}}, "does not import"),
    ({"module": HOST, "export": "run", "imports": ["env"]}, "imports must be a mapping"),
    ({"module": "(module (func (export \"v\") (param v128)))", "export": "v"}, "v128"),
    ({"module": "(module (import \"m\" \"f\" (func (result v128))) (func (export \"v\")))",
      "export": "v"}, "v128"),
])
def test_bad_configuration_is_invalid_configuration(fp, kwargs, match):
    kwargs = dict(kwargs)
    module, export = kwargs.pop("module"), kwargs.pop("export")
    with pytest.raises(fp.InvalidConfiguration, match=match):
        WasmHook(module, export, **kwargs)


NON_NUMERIC = [
    # WAT using v128 or a reference type in the export's or an imported
    # function's signature (the imported one is m.f): wasmtime's
    # wasm_valtype_kind aborts on v128 and on non-nullable or concrete
    # references, and names externref
    '(module (func (export "v") (param v128)))',
    '(module (func (export "v") (result v128) (v128.const i64x2 0 0)))',
    '(module (func (export "v") (param (ref func))))',
    '(module (type $t (func)) (func (export "v") (param (ref null $t))))',
    '(module (func (export "v") (param externref)))',
    '(module (import "m" "f" (func (result v128))) (func (export "v")))',
    '(module (import "m" "f" (func (param anyref))) (func (export "v")))',
]


def _imports_of(wat):
    return {"m": {"f": abs}} if '(import "m" "f"' in wat else None


@pytest.mark.parametrize("wat", NON_NUMERIC)
def test_a_compiled_module_with_v128_or_reference_signatures_is_invalid_configuration(wat):
    # A wasmtime.Module carries no binary: the signature is read through the C
    # API.  In a child process, so that an abort fails this test, not the run.
    import subprocess
    imports = "{'m': {'f': abs}}" if _imports_of(wat) else "None"
    code = (f"import wasmtime\n"
            f"from fastpath.wasm import WasmHook, new_engine, InvalidConfiguration\n"
            f"engine = new_engine()\n"
            f"module = wasmtime.Module(engine, {wat!r})\n"
            f"try:\n"
            f"    WasmHook(module, 'v', engine=engine, imports={imports})\n"
            f"except InvalidConfiguration as exc:\n"
            f"    print('refused:', exc)\n"
            f"else:\n"
            f"    print('accepted')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("refused:"), out.stdout
    assert "i32, i64, f32 and f64" in out.stdout
    assert ("v128" if "v128" in wat else "a reference type") in out.stdout


@pytest.mark.parametrize("wat", NON_NUMERIC)
def test_wat_with_v128_or_reference_signatures_is_invalid_configuration(wat):
    with pytest.raises(fwasm.InvalidConfiguration, match="i32, i64, f32 and f64"):
        WasmHook(wat, "v", imports=_imports_of(wat))


@pytest.mark.parametrize("make", [
    wasmtime.Engine,
    # even one configured as new_engine() configures its own, but for the memory
    lambda: wasmtime.Engine(_epoch_and_fuel_config()),
])
def test_an_engine_not_from_new_engine_is_refused_saying_why(make):
    with pytest.raises(fwasm.InvalidConfiguration) as info:
        WasmHook(ADD, "add", engine=make())
    message = str(info.value)
    assert "new_engine()" in message and "cannot be checked" in message


def _epoch_and_fuel_config():
    config = wasmtime.Config()
    config.epoch_interruption = True
    config.consume_fuel = True
    return config


def test_a_module_from_a_foreign_engine_is_invalid_configuration():
    foreign = wasmtime.Module(wasmtime.Engine(), ADD)
    with pytest.raises(fwasm.InvalidConfiguration, match="cannot link"):
        WasmHook(foreign, "add")


def test_import_fastpath_does_not_import_wasmtime():
    import subprocess
    import sys
    code = ("import sys, fastpath; fastpath.ConstraintEnforcer(); "
            "print('wasmtime' in sys.modules, 'fastpath.wasm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]


def test_raise_limit_stops_the_running_call_for_any_limit_kind(fp):
    # The core hook fastpath.wasm uses to report its own findings.
    V = fp.ConstraintViolationType
    for kind in (V.TIMEOUT_EXCEEDED, V.MEMORY_EXCEEDED, V.CPU_EXCEEDED):
        budget = fp.ExecutionConstraints(60_000).create_budget()
        with pytest.raises(fp.ConstraintViolation) as info:
            budget.enforce(budget._raise_limit, kind)
        assert info.value.kind is kind and info.value.interrupted is True
    budget = fp.ExecutionConstraints(60_000).create_budget()
    with pytest.raises(fp.InvalidConfiguration, match="SAMPLED_OUT"):
        budget.enforce(budget._raise_limit, V.SAMPLED_OUT)


def test_running_out_of_fuel_is_cpu_exceeded_before_the_clock_would_say_so(fp, monkeypatch):
    # With a calibration of 1,000 fuel units per CPU ms a 100 ms allowance is
    # 100,000 units: a loop spends them within a fraction of a millisecond, so
    # the stop is fuel's, not the thread CPU clock's (which waits for 100 ms).
    fwasm.fuel_per_cpu_ms()
    monkeypatch.setattr(fwasm, "_fuel_per_ms", 1000.0)
    c = fp.ExecutionConstraints(10_000, cpu_shares=1)
    hook = WasmHook(COUNT, "count", constraints=c)
    assert hook(100) == 100
    cpu0 = time.thread_time()
    with pytest.raises(fp.ConstraintViolation) as info:
        hook(2**62)
    used_ms = (time.thread_time() - cpu0) * 1e3
    assert fp.ConstraintViolationType.CPU_EXCEEDED in info.value.violations
    assert info.value.interrupted is True
    assert used_ms < 50
    assert hook.idle_instances == 0


IDENTITY = """
(module
  (func (export "i32") (param i32) (result i32) (local.get 0))
  (func (export "i64") (param i64) (result i64) (local.get 0))
  (func (export "f32") (param f32) (result f32) (local.get 0))
  (func (export "f64") (param f64) (result f64) (local.get 0)))
"""


def test_integers_take_the_signed_and_unsigned_range_and_wrap(fp):
    c = fp.ExecutionConstraints(60_000)
    i32, i64 = (WasmHook(IDENTITY, name, constraints=c) for name in ("i32", "i64"))
    assert [i32(v) for v in (0, -1, 2**31 - 1, -2**31, 2**31, 2**32 - 1)] == [
        0, -1, 2**31 - 1, -2**31, -2**31, -1]
    assert [i64(v) for v in (0, -1, 2**63 - 1, -2**63, 2**63, 2**64 - 1)] == [
        0, -1, 2**63 - 1, -2**63, -2**63, -1]
    for hook, bad, kind in ((i32, 2**32, "i32"), (i32, -2**31 - 1, "i32"),
                            (i64, 2**64, "i64"), (i64, -2**63 - 1, "i64"), (i64, 2**200, "i64")):
        with pytest.raises(OverflowError, match=f"argument 0 does not fit an {kind}: {bad}"):
            hook(bad)
    import enum

    class Level(enum.IntEnum):
        HIGH = 7

    assert i32(Level.HIGH) == 7                     # an int subclass (not a bool) is an int
    with pytest.raises(TypeError, match="argument 0 must be an int"):
        i64(False)


def test_floats_take_ints_and_refuse_other_types(fp):
    c = fp.ExecutionConstraints(60_000)
    f32, f64 = (WasmHook(IDENTITY, name, constraints=c) for name in ("f32", "f64"))
    assert f32(1.5) == 1.5 and f32(3) == 3.0
    assert f64(0.1) == 0.1 and f64(-2) == -2.0
    with pytest.raises(TypeError, match="argument 0 must be a float"):
        f64("1.0")
    with pytest.raises(TypeError, match="argument 0 must be a float"):
        f32(True)


def test_a_hook_takes_positional_arguments_only_and_can_be_subclassed(fp):
    hook = WasmHook(ADD, "add", constraints=fp.ExecutionConstraints(60_000))
    with pytest.raises(TypeError, match="positional arguments only"):
        hook(1, b=2)
    assert hook.__call__(2, 3) == 5                 # the explicit call takes the same path

    class Named(WasmHook):
        __slots__ = ("name",)

    named = Named(ADD, "add", constraints=fp.ExecutionConstraints(60_000))
    assert named(4, 5) == 9


def test_a_host_import_may_call_the_same_hook_again(fp):
    # run(n) = scale(n) + 1 and scale(n) = run(n - 1) for n > 0: the nested
    # calls run under the outer call's budget, each on an instance of its own.
    def scale(n):
        return hook(n - 1) if n > 0 else 0

    hook = WasmHook(HOST, "run", constraints=fp.ExecutionConstraints(60_000),
                    imports={"env": {"scale": scale}})
    assert hook(3) == 4
    assert hook.idle_instances >= 2
    assert hook(0) == 1


def test_other_threads_run_while_a_long_guest_runs(fp):
    # The GIL is kept for a guest's first epoch tick at most (a short call is
    # not worth the hand-off); a guest running on lets Python threads run.
    spin = WasmHook(SPIN, "spin", constraints=fp.ExecutionConstraints(400))
    seen: list[float] = []
    stop = threading.Event()

    def tick():
        while not stop.is_set():
            seen.append(time.monotonic())       # needs the GIL
            time.sleep(0.001)

    worker = threading.Thread(target=tick)
    worker.start()
    try:
        time.sleep(0.02)
        start = time.monotonic()
        with pytest.raises(fp.ConstraintViolation):
            spin()
        end = time.monotonic()
    finally:
        stop.set()
        worker.join(30)
    # the worker ran in the middle of the guest's 400 ms, not only around it
    assert any(start + 0.1 < t < end - 0.1 for t in seen), (start, end, len(seen))
