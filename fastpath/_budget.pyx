# The compiled core: ExecutionConstraints, ExecutionBudget, ExecutionStats.
#
# The per-call path is ExecutionBudget.run_c (enforce) and the few inline
# helpers it calls; everything else (validation, repr, pickling) is off that
# path and shares its logic with the pure-Python twin through fastpath._config.
cimport cython
from cpython.object cimport PyObject
from libc.stdint cimport int64_t, uint32_t, uint64_t

import atexit as _atexit
import os as _os
import signal as _signal
import sys as _sys
import threading as _threading

from fastpath import _config
from fastpath._histogram cimport LatencyHistogram
from fastpath.errors import (
    ConstraintViolation,
    ConstraintViolationType,
    EnforcementFailure,
    ExecutionInterrupted,
    InvalidConfiguration,
)

cdef extern from "Python.h":
    int PyThreadState_SetAsyncExc(unsigned long id, PyObject *exc)

cdef extern from "_fp_runtime.h":
    ctypedef struct fp_mem_session:
        int active
        int tripped
        int killed
        uint64_t owner_gen
    ctypedef struct fp_mem:
        fp_mem_session s
    ctypedef struct fp_mem_owner:
        int64_t live
        int64_t peak
        int64_t gross
        int64_t refused
    ctypedef struct fp_mem_table_info:
        uint64_t capacity
        uint64_t blocks
        uint64_t max_slots
        uint64_t max_blocks
        uint64_t untracked
        uint64_t owners
        int64_t dead_blocks
        int sweeping
    ctypedef struct fp_slot:
        uint64_t fire_gen
        int fire_kind
        int64_t fire_ns
        unsigned long py_ident
        int is_main
        fp_mem mem
    ctypedef struct fp_saved:
        fp_mem_session mem
    int64_t FP_INT64_MAX
    int FP_TIMEOUT
    int FP_MEMORY
    int FP_CPU
    int64_t FP_WD_TICK_NS
    const char *fp_build_cython
    const char *fp_build_kind
    const char *fp_build_cflags
    const char *fp_build_directives
    int64_t fp_now_ns() noexcept nogil
    int64_t fp_thread_cpu_ns() noexcept nogil
    int64_t fp_sat_add(int64_t a, int64_t b) noexcept nogil
    uint64_t fp_rng_next() noexcept nogil
    void fp_rng_reseed(uint64_t seed) noexcept nogil
    fp_slot *fp_slot_get() noexcept
    fp_slot *fp_slot_peek() noexcept
    uint64_t fp_arm(fp_slot *s, fp_saved *sv, int64_t interrupt_at, int interrupt_kind,
                    int64_t cpu_limit_ns, int cpu_interrupt) noexcept
    int fp_disarm(fp_slot *s, const fp_saved *sv, uint64_t gen) noexcept
    int fp_cpu_sample(fp_slot *s, uint64_t gen, int64_t *cpu_ns, int64_t *wall_ns) noexcept
    int fp_main_should_raise(fp_slot *s) noexcept
    void fp_set_main_thread(int signum) noexcept
    int fp_wd_start() noexcept
    void fp_wd_shutdown() noexcept
    object fp_run_call(fp_slot *s, fp_saved *sv, int mem_on, fp_mem_session *mem_out, object fn,
                       PyObject **args, Py_ssize_t nargs, PyObject *kwnames)
    void fp_mem_install() noexcept
    void fp_mem_ensure() noexcept
    void fp_mem_arm(fp_mem *m, fp_mem_session *saved, uint32_t *rec, uint64_t gen, int64_t limit,
                    int64_t charged, int enforce_cap) noexcept
    void fp_mem_charge(uint32_t rec, int64_t nbytes) noexcept
    void fp_mem_release(uint32_t rec) noexcept
    fp_mem_owner *fp_own(uint32_t i) noexcept
    void fp_mem_get_info(fp_mem_table_info *info) noexcept
    uint32_t fp_mem_set_max_slots(uint32_t slots) noexcept
    ctypedef object (*fp_fastcall_fn)(object, PyObject **, Py_ssize_t, PyObject *)
    int fp_install_fastcall(type tp, const char *name, fp_fastcall_fn fn, const char *doc) except -1
    PyObject *fp_interrupt_type
    int fp_preempt_enabled
    int fp_preempt_signal
    int fp_wd_running
    int fp_wd_membarrier
    int fp_tsc_usable
    int fp_fast_gil
    int fp_tsc_ready
    double fp_ns_per_tick
    uint64_t fp_wd_ticks
    uint64_t fp_wd_fires

# How long after an interrupt was due (the deadline, or the moment the watchdog
# saw the CPU allowance crossed) the call may take to stop and still count as
# "interruptible": it stopped at an eval-breaker check, not when a blocking C
# call finally returned.  Other threads wait for the GIL, hence the switch
# interval.
cdef int64_t DELIVERY_SLACK_NS = 2000000


cdef bint _stopped_in_time(int64_t end, int64_t due) except -1:
    return end - due <= DELIVERY_SLACK_NS + <int64_t>(_sys.getswitchinterval() * 1e9)


cdef bint _from_memory_error(object exc) except -1:
    # Is exc a MemoryError, or was it raised while one was being handled?
    cdef int _
    for _ in range(64):         # a __context__ chain can be a cycle
        if exc is None:
            return False
        if isinstance(exc, MemoryError):
            return True
        exc = exc.__context__
    return False


cdef tuple _KIND_OBJS = (
    None,
    ConstraintViolationType.TIMEOUT_EXCEEDED,
    ConstraintViolationType.MEMORY_EXCEEDED,
    ConstraintViolationType.CPU_EXCEEDED,
    ConstraintViolationType.SAMPLED_OUT,
)
# Order in which limits are checked and therefore recorded (seed: timeout first).
cdef int[3] _CHECK_ORDER = [1, 2, 3]
cdef object _normalize = _config.normalize


cdef inline int _ensure_watchdog() except -1:
    if not fp_wd_running:
        if fp_wd_start() != 0:
            raise EnforcementFailure("fastpath: could not start the watchdog thread")
    return 0


# ------------------------------------------------------------------ constraints

@cython.final
@cython.freelist(8)
cdef class ExecutionConstraints:
    """Limits for one rule evaluation: immutable, hashable, picklable.

    ExecutionConstraints(max_exec_ms, *, cpu_shares=None, memory_limit_bytes=None,
                         sampling_rate=1.0, fail_closed_on_timeout=True,
                         max_retries=None, retry_backoff_ms=None)
    """

    def __init__(self, max_exec_ms, *, cpu_shares=None, memory_limit_bytes=None,
                 sampling_rate=1.0, fail_closed_on_timeout=True, max_retries=None,
                 retry_backoff_ms=None):
        if self._max_exec_ms:
            raise AttributeError("ExecutionConstraints is immutable; use replace()")
        self._assign(_normalize(max_exec_ms, cpu_shares, memory_limit_bytes, sampling_rate,
                                fail_closed_on_timeout, max_retries, retry_backoff_ms))

    cdef _assign(self, tuple values):
        max_exec_ms, cpu_shares, memory_limit, rate, fail_closed, retries, backoff = values
        self._max_exec_ms = max_exec_ms
        self._max_exec_ns = (
            max_exec_ms * 1000000 if max_exec_ms <= FP_INT64_MAX // 1000000 else FP_INT64_MAX
        )
        self._cpu_shares = -1 if cpu_shares is None else cpu_shares
        if cpu_shares is None:
            self._cpu_allowance_ns = -1
        else:
            self._cpu_allowance_ns = min(max_exec_ms * cpu_shares * 10000, FP_INT64_MAX)
        self._memory_limit = -1 if memory_limit is None else memory_limit
        self._sampling_rate = rate
        if rate >= 1.0:
            self._sample_mode = 1
        elif rate <= 0.0:
            self._sample_mode = 0
        else:
            self._sample_mode = 2
            self._sample_threshold = <uint64_t>(rate * 18446744073709551616.0)
        self._fail_closed = fail_closed
        self._max_retries = -1 if retries is None else retries
        self._retry_backoff_ms = -1 if backoff is None else backoff

    cdef tuple _values(self):
        return (
            self._max_exec_ms,
            None if self._cpu_shares < 0 else self._cpu_shares,
            None if self._memory_limit < 0 else self._memory_limit,
            self._sampling_rate,
            self._fail_closed,
            None if self._max_retries < 0 else self._max_retries,
            None if self._retry_backoff_ms < 0 else self._retry_backoff_ms,
        )

    # -- read-only attributes --------------------------------------------------
    @property
    def max_exec_ms(self):
        return self._max_exec_ms

    @property
    def cpu_shares(self):
        return None if self._cpu_shares < 0 else self._cpu_shares

    @property
    def memory_limit_bytes(self):
        return None if self._memory_limit < 0 else self._memory_limit

    @property
    def sampling_rate(self):
        return self._sampling_rate

    @property
    def fail_closed_on_timeout(self):
        return self._fail_closed

    @property
    def max_retries(self):
        return None if self._max_retries < 0 else self._max_retries

    @property
    def retry_backoff_ms(self):
        return None if self._retry_backoff_ms < 0 else self._retry_backoff_ms

    @property
    def cpu_allowance_ms(self):
        """CPU time allowed per call (max_exec_ms * cpu_shares / 100), or None."""
        return None if self._cpu_allowance_ns < 0 else self._cpu_allowance_ns / 1e6

    # -- presets ---------------------------------------------------------------
    @classmethod
    def fast_rule(cls):
        """5 ms, 10 CPU shares, 1 MB, fail closed."""
        return _constraints_from(_config.fast_rule_args())

    @classmethod
    def semantic_rule(cls):
        """100 ms, 50 CPU shares, 10 MB, fail open, 2 retries 10 ms apart."""
        return _constraints_from(_config.semantic_rule_args())

    @classmethod
    def wasm_hook(cls, max_ms=10):
        """max_ms, 20 CPU shares, 5 MB, fail closed."""
        return _constraints_from(_config.wasm_hook_args(max_ms))

    @classmethod
    def observational(cls, sampling_rate=1.0):
        """2 ms, 5 CPU shares, 512 KB, the given sampling rate, fail open."""
        return _constraints_from(_config.observational_args(sampling_rate))

    # -- value semantics -------------------------------------------------------
    def __eq__(self, other):
        if type(other) is not ExecutionConstraints:
            return NotImplemented
        return self._values() == (<ExecutionConstraints>other)._values()

    def __hash__(self):
        return hash(self._values())

    def __repr__(self):
        return _config.format_repr(self._values())

    def __reduce__(self):
        return (_restore_constraints, self._values())

    def to_dict(self):
        """The fields as a dict of JSON types (round-trips through from_dict)."""
        return _config.as_dict(self._values())

    @classmethod
    def from_dict(cls, data):
        """Build from a mapping such as to_dict() returns; unknown keys are errors."""
        return ExecutionConstraints(**_config.kwargs_from_dict(data))

    def replace(self, **changes):
        """A validated copy with some fields changed."""
        _config.check_replace_keys(changes)
        fields = _config.as_dict(self._values())
        fields.update(changes)
        return ExecutionConstraints(**fields)

    # -- hot path --------------------------------------------------------------
    def should_sample(self):
        """True with probability sampling_rate (exactly at 0.0 and 1.0)."""
        return self.should_sample_c()

    cdef bint should_sample_c(self) noexcept:
        if self._sample_mode == 2:
            return fp_rng_next() < self._sample_threshold
        return self._sample_mode == 1

    def create_budget(self):
        """A started ExecutionBudget for these constraints."""
        return self.create_budget_c()

    cdef ExecutionBudget create_budget_c(self):
        cdef ExecutionBudget budget
        if not fp_wd_running:
            _ensure_watchdog()
        budget = ExecutionBudget.__new__(ExecutionBudget)
        budget._constraints = self
        budget._preempt = True
        budget._start_ns = fp_now_ns()
        budget._deadline_ns = fp_sat_add(budget._start_ns, self._max_exec_ns)
        return budget


cdef ExecutionConstraints _constraints_from(tuple values):
    cdef ExecutionConstraints c = ExecutionConstraints.__new__(ExecutionConstraints)
    c._assign(values)
    return c


def _restore_constraints(*values):
    return _constraints_from(_normalize(*values))


# ------------------------------------------------------------------------ stats

@cython.final
@cython.no_gc      # holds only a tuple of enum members: no reference cycle possible
@cython.freelist(16)
cdef class ExecutionStats:
    """What one budget measured.  See the README's "What the figures mean"."""

    def __init__(self, *, elapsed_ns, memory_used_bytes=0, cpu_time_us=0,
                 cpu_time_measured=False, violations=(), memory_allocated_bytes=0,
                 memory_peak_bytes=0):
        self.elapsed_ns = elapsed_ns
        self.memory_used_bytes = memory_used_bytes
        self.memory_allocated_bytes = memory_allocated_bytes
        self.memory_peak_bytes = memory_peak_bytes
        self.cpu_time_us = cpu_time_us
        self.cpu_time_measured = cpu_time_measured
        self.violations = tuple(ConstraintViolationType(v) for v in violations)

    @property
    def elapsed_ms(self):
        return self.elapsed_ns / 1e6

    @property
    def violation_count(self):
        return len(self.violations)

    cdef tuple _values(self):
        return (self.elapsed_ns, self.memory_used_bytes, self.cpu_time_us,
                self.cpu_time_measured, self.violations, self.memory_allocated_bytes,
                self.memory_peak_bytes)

    def __eq__(self, other):
        if type(other) is not ExecutionStats:
            return NotImplemented
        return self._values() == (<ExecutionStats>other)._values()

    def __hash__(self):
        return hash(self._values())

    def __repr__(self):
        return (
            f"ExecutionStats(elapsed_ns={self.elapsed_ns}, "
            f"memory_used_bytes={self.memory_used_bytes}, cpu_time_us={self.cpu_time_us}, "
            f"cpu_time_measured={self.cpu_time_measured}, violations={self.violations!r}, "
            f"memory_allocated_bytes={self.memory_allocated_bytes}, "
            f"memory_peak_bytes={self.memory_peak_bytes})"
        )

    def __reduce__(self):
        return (_restore_stats, self._values())


def _restore_stats(elapsed_ns, memory_used_bytes, cpu_time_us, cpu_time_measured, violations,
                   memory_allocated_bytes=0, memory_peak_bytes=0):
    return ExecutionStats(elapsed_ns=elapsed_ns, memory_used_bytes=memory_used_bytes,
                          cpu_time_us=cpu_time_us, cpu_time_measured=cpu_time_measured,
                          violations=violations, memory_allocated_bytes=memory_allocated_bytes,
                          memory_peak_bytes=memory_peak_bytes)


# ------------------------------------------------------------- per-call helper

cdef inline int _end_call(ExecutionBudget self, fp_slot *slot, fp_saved *saved, uint64_t gen,
                          uint64_t outer_gen, int64_t fn_start, int64_t cpu_start, bint mem_on,
                          fp_mem_session *mem_out, int *fired) noexcept:
    # Disarm, measure the call that just ended, return the mask of broken limits.
    cdef ExecutionConstraints c = self._constraints
    cdef int mask = 0
    cdef int64_t end, wall, cpu_sample, wall_sample
    cdef fp_mem_owner *rec
    fired[0] = fp_disarm(slot, saved, gen)
    end = fp_now_ns()
    self._gen = outer_gen
    if fired[0]:
        # Drop an interrupt still pending for this call (GIL path).
        PyThreadState_SetAsyncExc(slot.py_ident, NULL)
    if mem_on and self._mem_rec:
        # The figures live in the budget's record (frees after the call still
        # lower `live`); the _mem_* fields keep a snapshot for C-level readers.
        rec = fp_own(self._mem_rec)
        self._mem_gross = rec.gross
        self._mem_net = rec.live
        self._mem_peak = rec.peak
        self._mem_refused = rec.refused
    self._stop_ns = end
    wall = end - fn_start
    if end >= self._deadline_ns:
        mask |= 1 << FP_TIMEOUT
    if c._memory_limit >= 0 and self._memory_used() > c._memory_limit:
        mask |= 1 << FP_MEMORY
    if cpu_start >= 0:
        # cpu_shares=0 allows no CPU at all: every call was measured directly.
        self._cpu_measured_ns += fp_thread_cpu_ns() - cpu_start
        if self._cpu_measured_ns > c._cpu_allowance_ns:
            mask |= 1 << FP_CPU
    elif c._cpu_allowance_ns > 0 and wall <= c._cpu_allowance_ns:
        # A thread cannot use more CPU than the wall time that passed: no
        # clock read needed, the figure is that bound.
        self._cpu_bound_ns += wall
        self._cpu_unmeasured = True
    elif c._cpu_allowance_ns >= 0 and fp_cpu_sample(slot, gen, &cpu_sample, &wall_sample):
        self._cpu_measured_ns += fp_thread_cpu_ns() - cpu_sample
        if self._cpu_measured_ns > c._cpu_allowance_ns:
            mask |= 1 << FP_CPU
    else:
        self._cpu_bound_ns += wall
        self._cpu_unmeasured = True
    if mask:
        self._record_mask(mask)
    return mask


# ----------------------------------------------------------------------- budget

@cython.final
@cython.no_gc      # holds only its ExecutionConstraints, which holds no objects
@cython.freelist(32)
cdef class ExecutionBudget:
    """The running limits of one evaluation; its clock starts when it is created.

    Single-threaded: create it, use it and enforce with it on one thread.
    """

    def __init__(self, constraints, *, preempt=True):
        if self._constraints is not None:
            raise AttributeError("ExecutionBudget is already started")
        _config.check_budget_args(constraints, ExecutionConstraints, preempt)
        _ensure_watchdog()
        self._constraints = <ExecutionConstraints>constraints
        self._preempt = preempt
        self._start_ns = fp_now_ns()
        self._deadline_ns = fp_sat_add(self._start_ns, self._constraints._max_exec_ns)

    def __dealloc__(self):
        if self._mem_rec:
            fp_mem_release(self._mem_rec)     # its blocks stop counting for it

    @property
    def constraints(self):
        return self._constraints

    cdef int64_t _now_or_stop(self) noexcept:
        return self._stop_ns if self._stop_ns else fp_now_ns()

    def elapsed_ns(self):
        """Nanoseconds since creation (frozen when an enforce() call returns)."""
        return self._now_or_stop() - self._start_ns

    def elapsed_ms(self):
        return (self._now_or_stop() - self._start_ns) / 1e6

    def remaining_ms(self):
        """Milliseconds left before the deadline, never below 0.0."""
        return self.remaining_ns_c() / 1e6

    def is_timeout(self):
        return self.is_timeout_c()

    cdef bint is_timeout_c(self) noexcept:
        return self._now_or_stop() >= self._deadline_ns

    cdef int64_t remaining_ns_c(self) noexcept:
        cdef int64_t left = self._deadline_ns - self._now_or_stop()
        return left if left > 0 else 0

    cdef void record_c(self, int kind) noexcept:
        if not (self._violation_mask & (1 << kind)):
            self._violation_mask |= 1 << kind
            self._violation_order[self._violation_count] = <unsigned char>kind
            self._violation_count += 1

    cdef int64_t _memory_used(self) noexcept:
        # High-water mark of the live bytes of its blocks (or what the cap
        # refused), plus charges; the record is kept up to date while a call
        # runs, and by frees of its blocks at any time, on any thread.
        cdef int64_t used = 0
        cdef fp_mem_owner *rec
        if self._mem_rec:
            rec = fp_own(self._mem_rec)
            used = rec.peak if rec.peak > rec.refused else rec.refused
        return fp_sat_add(used, self._memory_charged)

    cdef int check_c(self) except -1:
        cdef int mask = 0
        cdef int64_t now = self._now_or_stop()
        cdef ExecutionConstraints c = self._constraints
        if now >= self._deadline_ns:
            mask |= 1 << FP_TIMEOUT
        if c._memory_limit >= 0 and self._memory_used() > c._memory_limit:
            mask |= 1 << FP_MEMORY
        if c._cpu_allowance_ns >= 0 and self._cpu_total_now() > c._cpu_allowance_ns:
            mask |= 1 << FP_CPU
        self._record_mask(mask)
        return mask

    cdef void _record_mask(self, int mask) noexcept:
        cdef int i
        for i in range(3):
            if mask & (1 << _CHECK_ORDER[i]):
                self.record_c(_CHECK_ORDER[i])

    cdef int64_t _cpu_total_now(self) noexcept:
        # CPU already measured, plus -- while an enforce() of this budget runs on
        # this thread -- what the thread used since the watchdog's sample.
        cdef int64_t cpu_ns, wall_ns
        cdef int64_t total = self._cpu_measured_ns
        cdef fp_slot *slot = fp_slot_peek()
        if self._gen and slot != NULL and fp_cpu_sample(slot, self._gen, &cpu_ns, &wall_ns):
            total += fp_thread_cpu_ns() - cpu_ns
        return total

    def check(self):
        """Record every limit violated now; raise ConstraintViolation if any is."""
        cdef int mask = self.check_c()
        if mask:
            raise self._violation(mask, False, None)

    def charge_memory(self, nbytes):
        """Add memory the caller accounts for itself (e.g. a sandbox's memory)."""
        if isinstance(nbytes, bool) or not isinstance(nbytes, int):
            raise InvalidConfiguration(f"nbytes must be an int >= 0, got {nbytes!r}")
        if nbytes < 0:
            raise InvalidConfiguration(f"nbytes must be an int >= 0, got {nbytes!r}")
        self._memory_charged = min(self._memory_charged + nbytes, FP_INT64_MAX)
        if self._mem_rec:
            fp_mem_charge(self._mem_rec, min(nbytes, FP_INT64_MAX))

    def get_violations(self):
        """The violation kinds recorded so far, in the order recorded."""
        cdef int i
        return [_KIND_OBJS[self._violation_order[i]] for i in range(self._violation_count)]

    def stats(self):
        """An ExecutionStats snapshot."""
        return self._stats()

    cdef ExecutionStats _stats(self):
        cdef ExecutionStats st = ExecutionStats.__new__(ExecutionStats)
        cdef int i
        st.elapsed_ns = self._now_or_stop() - self._start_ns
        st.memory_used_bytes = self._memory_used()
        if self._mem_rec:
            st.memory_allocated_bytes = fp_own(self._mem_rec).gross
            st.memory_peak_bytes = fp_own(self._mem_rec).peak
        st.cpu_time_us = (self._cpu_measured_ns + self._cpu_bound_ns) // 1000
        st.cpu_time_measured = not self._cpu_unmeasured
        st.violations = tuple([_KIND_OBJS[self._violation_order[i]]
                               for i in range(self._violation_count)])
        return st

    cdef object _violation(self, int mask, bint interrupted, object interruptible):
        cdef int i
        cdef list kinds = [_KIND_OBJS[self._violation_order[i]]
                           for i in range(self._violation_count)
                           if mask & (1 << self._violation_order[i])]
        return ConstraintViolation(kinds, self._stats(), interrupted=interrupted,
                                   interruptible=interruptible)

    # -- the per-call path (enforce() is installed below as a fastcall method) --
    cdef object run_c(self, object fn, PyObject **args, Py_ssize_t nargs, PyObject *kwnames,
                      bint preempt):
        cdef ExecutionConstraints c = self._constraints
        cdef fp_slot *slot
        cdef fp_saved saved
        cdef fp_mem_session mem_out
        cdef uint64_t gen, outer_gen
        cdef int64_t fn_start, interrupt_at, cpu_limit, cpu_start
        cdef int fired = 0, mask
        cdef bint stop_it = preempt and c._fail_closed
        cdef bint mem_on = c._memory_limit >= 0
        cdef object result

        self._raised = False
        fn_start = fp_now_ns()
        if fn_start >= self._deadline_ns:
            # An expired budget does not run fn.
            self._stop_ns = fn_start
            self.record_c(FP_TIMEOUT)
            self._raised = True
            raise self._violation(1 << FP_TIMEOUT, False, None)
        slot = fp_slot_get()
        if slot == NULL:
            raise MemoryError("fastpath: no memory for the thread's enforcement slot")
        if not preempt:
            interrupt_at = FP_INT64_MAX
        elif c._fail_closed:
            interrupt_at = self._deadline_ns
        else:
            # Fail open: let a late call finish; stop only a runaway at 2x its budget.
            interrupt_at = fp_sat_add(self._deadline_ns, c._max_exec_ns)
        cpu_limit = c._cpu_allowance_ns
        cpu_start = -1
        if cpu_limit == 0:
            cpu_limit = -1      # no CPU allowed at all: read the clock around the call
            cpu_start = fp_thread_cpu_ns()
        self._stop_ns = 0
        outer_gen = self._gen
        gen = fp_arm(slot, &saved, interrupt_at, FP_TIMEOUT, cpu_limit, stop_it)
        self._gen = gen
        mem_out.tripped = mem_out.killed = 0     # (fp_run_call sets mem_out when mem_on)
        if mem_on:
            fp_mem_ensure()     # re-wraps allocators someone restored underneath us
            fp_mem_arm(&slot.mem, &saved.mem, &self._mem_rec, gen, c._memory_limit,
                       self._memory_charged, stop_it and fp_preempt_enabled)
        try:
            result = fp_run_call(slot, &saved, mem_on, &mem_out, fn, args, nargs, kwnames)
        except BaseException as exc:
            mask = _end_call(self, slot, &saved, gen, outer_gen, fn_start, cpu_start, mem_on,
                             &mem_out, &fired)
            if isinstance(exc, ExecutionInterrupted):
                if not fired:
                    if mem_on and mem_out.killed:
                        # The memory interrupt: this call's cap refused past its
                        # grace margin and the callee kept allocating.
                        if not (mask & (1 << FP_MEMORY)):
                            self.record_c(FP_MEMORY)
                            mask |= 1 << FP_MEMORY
                        self._raised = True
                        raise self._violation(mask, True, False)
                    raise       # meant for an enclosing enforce() on this thread
                if slot.fire_kind and not (mask & (1 << slot.fire_kind)):
                    self.record_c(slot.fire_kind)
                    mask |= 1 << slot.fire_kind
                self._raised = True
                raise self._violation(mask, True, _stopped_in_time(
                    self._stop_ns, interrupt_at if slot.fire_kind == FP_TIMEOUT else slot.fire_ns))
            if mem_on and mem_out.tripped and _from_memory_error(exc):
                # This call's cap refused an allocation and fn ended with that
                # MemoryError (or an error raised while handling it): a
                # MEMORY_EXCEEDED violation, not fn's own error.
                if not (mask & (1 << FP_MEMORY)):
                    self.record_c(FP_MEMORY)
                    mask |= 1 << FP_MEMORY
                self._raised = True
                raise self._violation(mask, True, not mem_out.killed)
            raise
        mask = _end_call(self, slot, &saved, gen, outer_gen, fn_start, cpu_start, mem_on,
                         &mem_out, &fired)
        if mask:
            self._raised = True
            raise self._violation(
                mask, False,
                False if (fired or (mem_on and mem_out.tripped)) else None)
        return result


cdef object _enforce_fastcall(object self, PyObject **args, Py_ssize_t nargs, PyObject *kwnames):
    if nargs < 1:
        raise TypeError("enforce() missing required positional argument: 'fn'")
    return (<ExecutionBudget>self).run_c(<object>args[0], args + 1, nargs - 1, kwnames,
                                         (<ExecutionBudget>self)._preempt)


cdef const char *_ENFORCE_DOC = (
    "enforce($self, fn, /, *args, **kwargs)\n--\n\n"
    "Run fn(*args, **kwargs) under this budget and return its value.\n\n"
    "Raises ConstraintViolation (with .stats) when a limit was broken, whether\n"
    "the call was interrupted or finished late.  fn's own exceptions propagate\n"
    "unchanged."
)
fp_install_fastcall(ExecutionBudget, "enforce", _enforce_fastcall, _ENFORCE_DOC)


# ------------------------------------------------------------------ the enforcer

cdef int _SAMPLED_OUT = 4


@cython.final
cdef class _RuleState:
    """One rule type's profile and counters (see ConstraintEnforcer)."""

    def __init__(self, key, ExecutionConstraints constraints, fallback, bint preempt):
        self.key = key
        self.constraints = constraints
        self.fallback = fallback
        self.preempt = preempt
        self.histogram = LatencyHistogram()
        self.max_attempts = 1 + (constraints._max_retries if constraints._max_retries > 0 else 0)
        self.backoff_ns = (constraints._retry_backoff_ms * 1000000
                           if constraints._retry_backoff_ms > 0 else 0)

    def counters(self):
        """A snapshot: (calls, executed, sampled_out, fail_open, fail_closed, errors,
        retries, {violation kind value: count})."""
        cdef int k
        return (self.calls, self.executed, self.sampled_out, self.fail_open, self.fail_closed,
                self.errors, self.retries, {k: self.violations[k] for k in range(1, 5)})

    def reset(self):
        cdef int k
        self.calls = self.executed = self.sampled_out = 0
        self.fail_open = self.fail_closed = self.errors = self.retries = 0
        for k in range(6):
            self.violations[k] = 0
        self.histogram.reset_c()


cdef class _EnforcerCore:
    """The per-call pipeline of ConstraintEnforcer (fastpath/enforcer.py).

    execute_with_constraints(rule_type, fn, /, *args, **kwargs) is installed
    below as a fastcall method; everything that is not per-call (validation,
    audit events, metrics) lives in the Python subclass.
    """

    def _core_setup(self, tuple rules, tuple transient, sleep):
        for rule in rules:
            if type(rule) is not _RuleState:
                raise TypeError("rules must be _RuleState objects")
        self._rules = rules
        self._transient = transient
        self._sleep = sleep

    def _rule_state(self, rule_type):
        return self._rule_for(rule_type)

    cdef _RuleState _rule_for(self, object rule_type):
        cdef _RuleState rule
        for rule in self._rules:
            if rule.key is rule_type:
                return rule
        raise InvalidConfiguration(f"rule_type must be a RuleType, got {rule_type!r}")

    def _audit(self, rule_type, rule_id, fn, violation, outcome):
        pass    # ConstraintEnforcer emits the audit event

    cdef object _pipeline(self, _RuleState rule, object rule_id, object fn, PyObject **args,
                          Py_ssize_t nargs, PyObject *kwnames):
        cdef ExecutionConstraints c = rule.constraints
        cdef ExecutionBudget budget
        cdef int64_t attempt = 1
        cdef object result
        cdef int i
        rule.calls += 1
        if not c.should_sample_c():
            rule.sampled_out += 1
            rule.violations[_SAMPLED_OUT] += 1
            return rule.fallback
        rule.executed += 1
        budget = c.create_budget_c()
        while True:
            try:
                result = budget.run_c(fn, args, nargs, kwnames, rule.preempt)
            except BaseException as exc:
                if budget._raised:
                    # This budget's own violation: count it, audit it, apply the policy.
                    rule.histogram.record_c(budget._stop_ns - budget._start_ns)
                    for i in range(budget._violation_count):
                        rule.violations[budget._violation_order[i]] += 1
                    if c._fail_closed:
                        rule.fail_closed += 1
                        self._audit(rule.key, rule_id, fn, exc, "deny")
                        raise
                    rule.fail_open += 1
                    self._audit(rule.key, rule_id, fn, exc, "fallback")
                    return rule.fallback
                if _will_retry(self, rule, budget, attempt, exc):
                    # Transient: retry inside the same budget, if it can cover the delay.
                    attempt += 1
                    rule.retries += 1
                    if rule.backoff_ns:
                        self._sleep(rule.backoff_ns / 1e9)
                    continue
                rule.errors += 1
                rule.histogram.record_c(budget._stop_ns - budget._start_ns)
                if budget._violation_count:
                    # Late and then failed: fn's exception propagates, the
                    # violation is still counted and audited.
                    for i in range(budget._violation_count):
                        rule.violations[budget._violation_order[i]] += 1
                    self._audit(rule.key, rule_id, fn,
                                budget._violation(-1, False, None), "error")
                raise
            rule.histogram.record_c(budget._stop_ns - budget._start_ns)
            return result


cdef inline bint _will_retry(_EnforcerCore core, _RuleState rule, ExecutionBudget budget,
                             int64_t attempt, object exc) except -1:
    return (attempt < rule.max_attempts and isinstance(exc, core._transient)
            and budget.remaining_ns_c() >= rule.backoff_ns)


cdef object _execute_fastcall(object self, PyObject **args, Py_ssize_t nargs, PyObject *kwnames):
    if nargs < 2:
        raise TypeError("execute_with_constraints() needs rule_type and fn")
    cdef _EnforcerCore core = <_EnforcerCore>self
    return core._pipeline(core._rule_for(<object>args[0]), None, <object>args[1], args + 2,
                          nargs - 2, kwnames)


cdef object _execute_as_fastcall(object self, PyObject **args, Py_ssize_t nargs, PyObject *kwnames):
    if nargs < 3:
        raise TypeError("_execute_as() needs rule_type, rule_id and fn")
    cdef _EnforcerCore core = <_EnforcerCore>self
    return core._pipeline(core._rule_for(<object>args[0]), <object>args[1], <object>args[2],
                          args + 3, nargs - 3, kwnames)


fp_install_fastcall(_EnforcerCore, "execute_with_constraints", _execute_fastcall,
                    "execute_with_constraints($self, rule_type, fn, /, *args, **kwargs)\n--\n\n"
                    "Run fn under the rule type's constraints: sampling, budget, transient\n"
                    "retries, then the failure policy (see ConstraintEnforcer).")
fp_install_fastcall(_EnforcerCore, "_execute_as", _execute_as_fastcall,
                    "_execute_as($self, rule_type, rule_id, fn, /, *args, **kwargs)\n--\n\n"
                    "execute_with_constraints with a rule id for audit events.")


# ------------------------------------------------------------- preemption setup

def _preempt_signal_handler(signum, frame):
    # Runs in the main thread at an eval-breaker check.  Raise only if the call
    # the watchdog fired for is still the one armed: never a stray interrupt.
    if fp_main_should_raise(fp_slot_peek()):
        raise ExecutionInterrupted()


def _install_preempt_signal():
    spec = _os.environ.get("FASTPATH_PREEMPT_SIGNAL", "").strip().lower()
    if spec in ("0", "off", "none", "no"):
        return 0
    if _threading.current_thread() is not _threading.main_thread():
        return 0
    if spec:
        try:
            signum = int(spec)
        except ValueError:
            raise InvalidConfiguration(
                f"FASTPATH_PREEMPT_SIGNAL must be a signal number or 'off', got {spec!r}"
            ) from None
        if not 1 <= signum < _signal.NSIG:
            raise InvalidConfiguration(
                f"FASTPATH_PREEMPT_SIGNAL must be within 1..{_signal.NSIG - 1}, got {signum}"
            )
    else:
        signum = int(_signal.SIGRTMAX) - 5
    current = _signal.getsignal(signum)
    if current is _preempt_signal_handler:
        return signum
    if current not in (_signal.SIG_DFL, None):
        return 0        # the application owns that signal: use the GIL path
    _signal.signal(signum, _preempt_signal_handler)
    fp_set_main_thread(signum)
    return signum


def set_preemption(enabled):
    """Enable or disable interrupting calls process-wide (limits are still reported)."""
    global fp_preempt_enabled
    fp_preempt_enabled = 1 if _config.check_bool("enabled", enabled) else 0


def preemption_info():
    """How calls are interrupted in this process."""
    return {
        "enabled": bool(fp_preempt_enabled),
        "main_thread": "signal" if fp_preempt_signal else "gil",
        "signal": fp_preempt_signal or None,
        "watchdog_running": bool(fp_wd_running),
        "watchdog_tick_ns": FP_WD_TICK_NS,
        "membarrier": bool(fp_wd_membarrier),
        "fast_gil_handover": bool(fp_fast_gil),
        "clock": "tsc" if fp_tsc_ready else "CLOCK_MONOTONIC",
        "ticks": fp_wd_ticks,
        "interrupts_sent": fp_wd_fires,
    }


def _measure_arm_disarm(Py_ssize_t n):
    """Nanoseconds per arm+disarm pair of this thread's slot, over n pairs.

    What enforce() adds for preemption, measured in C because it cannot be
    isolated from Python (benchmarks and the selftest report it)."""
    cdef fp_slot *slot = fp_slot_get()
    cdef fp_saved saved
    cdef Py_ssize_t _
    cdef uint64_t gen
    cdef int64_t t0, deadline
    if slot == NULL:
        raise MemoryError()
    if n < 1:
        raise InvalidConfiguration(f"n must be >= 1, got {n}")
    deadline = fp_now_ns() + 3600 * 1000000000
    t0 = fp_now_ns()
    for _ in range(n):
        gen = fp_arm(slot, &saved, deadline, FP_TIMEOUT, 500000, 1)
        fp_disarm(slot, &saved, gen)
    return (fp_now_ns() - t0) / n


def _memory_table_info():
    """The process-wide live-block table of the memory accounting (for tests).

    blocks: blocks tracked now; max_blocks: what the table holds at its largest;
    untracked_blocks: blocks counted when allocated but never tracked because the
    table was full (their frees are not subtracted: the figures are upper bounds)."""
    cdef fp_mem_table_info i
    fp_mem_get_info(&i)
    return {
        "capacity": i.capacity,
        "bytes": i.capacity * 16,
        "blocks": i.blocks,
        "max_blocks": i.max_blocks,
        "untracked_blocks": i.untracked,
        "owners": i.owners,
        "dead_blocks": i.dead_blocks,
        "sweeping": bool(i.sweeping),
    }


def _memory_table_limit(uint32_t slots):
    """Tests only: the table's largest size, in slots (rounded up to a power of
    two, 512 .. 4194304); returns the previous one."""
    return fp_mem_set_max_slots(slots)


def build_info():
    """How this compiled core was built."""
    return {
        "cython": fp_build_cython.decode(),
        "kind": fp_build_kind.decode(),
        "cflags": fp_build_cflags.decode(),
        "directives": fp_build_directives.decode(),
    }


def _reseed_sampler(seed):
    """Re-seed the calling thread's generator (0: fresh random seed)."""
    fp_rng_reseed(seed)


def _shutdown_watchdog():
    fp_wd_shutdown()


def _kernel_clocksource():
    try:
        with open("/sys/devices/system/clocksource/clocksource0/current_clocksource") as f:
            return f.read().strip()
    except OSError:
        return ""


def _init_module():
    global fp_interrupt_type, fp_preempt_enabled, fp_tsc_usable, fp_fast_gil
    fp_interrupt_type = <PyObject *>ExecutionInterrupted   # module keeps it alive
    # Read the TSC directly only where the kernel's own clock is the TSC;
    # FASTPATH_CLOCK=monotonic forces the kernel clock.
    clock = _os.environ.get("FASTPATH_CLOCK", "").strip().lower()
    if clock not in ("", "tsc", "monotonic"):
        raise InvalidConfiguration(f"FASTPATH_CLOCK must be 'tsc' or 'monotonic', got {clock!r}")
    fp_tsc_usable = 1 if (clock != "monotonic" and _kernel_clocksource() == "tsc") else 0
    if not _config.env_flag("FASTPATH_FAST_GIL"):
        fp_fast_gil = 0
    if not _config.env_flag("FASTPATH_PREEMPT"):
        fp_preempt_enabled = 0
    _install_preempt_signal()
    fp_mem_install()
    _atexit.register(_shutdown_watchdog)


_init_module()
