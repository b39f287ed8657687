# The compiled core: ExecutionConstraints, ExecutionBudget, ExecutionStats.
#
# The per-call path is ExecutionBudget.run_c (enforce) and the few inline
# helpers it calls; everything else (validation, repr, pickling) is off that
# path and shares its logic with the pure-Python twin through fastpath._config.
cimport cython
from cpython.contextvars cimport get_value as _contextvar_get
from cpython.object cimport PyObject, PyTypeObject, destructor
from cpython.ref cimport Py_DECREF, Py_INCREF
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from libc.stdint cimport int64_t, uint32_t, uint64_t

import atexit as _atexit
import gc as _gc
import signal as _signal
import sys as _sys
import threading as _threading

from fastpath import _config, _critical, _outcome
from fastpath import _flow
from fastpath._histogram cimport LatencyHistogram
from fastpath._quota cimport Quota, quota_admit
from fastpath.errors import (
    ConstraintViolationType,
    EnforcementFailure,
    ExecutionInterrupted,
    InvalidConfiguration,
    ResourceExhausted,
)

# The public names; the twin (_budget_py.py) has the same __all__ (tests/test_parity.py).
# Compiled only: build_info() (how this extension was built) and the
# getswitchinterval / setswitchinterval wrappers installed into sys.
__all__ = [
    "ExecutionBudget",
    "ExecutionConstraints",
    "ExecutionStats",
    "Rule",
    "preemption_info",
    "current_budget",
    "set_preemption",
    "uninterruptible",
]

cdef extern from "Python.h":
    int PyThreadState_SetAsyncExc(unsigned long id, PyObject *exc)
    bint PyCoro_CheckExact(object o)
    unsigned long PyThread_get_thread_ident() nogil

cdef extern from "_fp_atomic.h":
    # Shared counters and critical sections: plain operations on GIL builds.
    ctypedef struct fp_cs:
        pass
    void fp_add(uint64_t *p, uint64_t n) noexcept nogil
    void fp_add_int "fp_add"(int *p, int n) noexcept nogil
    uint64_t fp_add_fetch(uint64_t *p, uint64_t n) noexcept nogil
    void fp_cs_begin(fp_cs *cs, object obj) noexcept
    void fp_cs_end(fp_cs *cs) noexcept

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
        int depth
        int unordered
        int defer_depth
        int deferred
        int delivered
        PyObject *current
        PyObject *step_current
        fp_mem mem
    ctypedef struct fp_saved:
        int cpu_idx
        int64_t cpu_lo
        fp_mem_session mem
    int64_t FP_INT64_MAX
    int FP_TIMEOUT
    int FP_MEMORY
    int FP_CPU
    int FP_SAMPLED_OUT
    int FP_MAX_NESTING
    int FP_ROUTE_OFF
    int FP_ROUTE_OURS
    int FP_ROUTE_PENDING
    int FP_ROUTE_TAKEN
    int FP_ROUTE_LOST
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
    fp_slot *fp_tls_slot
    fp_slot *fp_slot_create() noexcept
    fp_slot *fp_slot_peek() noexcept
    int fp_stack_exhausted(const fp_slot *s) noexcept
    uint64_t fp_arm(fp_slot *s, fp_saved *sv, PyObject *budget, int64_t interrupt_at,
                    int interrupt_kind, int64_t cpu_limit_ns, int cpu_interrupt,
                    int64_t fn_start, int64_t cpu_max_age) noexcept
    void fp_mark_fired(fp_slot *s, uint64_t gen) noexcept
    void fp_mem_end_scope(fp_slot *s, fp_saved *sv, uint64_t gen, int mem_on,
                          fp_mem_session *mem_out) noexcept
    int fp_is_awaitable(object o) noexcept
    ctypedef enum PySendResult:
        PYGEN_RETURN
        PYGEN_ERROR
        PYGEN_NEXT
    PySendResult fp_run_step(fp_slot *s, fp_saved *sv, uint64_t gen, int mem_on,
                             fp_mem_session *mem_out, object it, PyObject *arg, PyObject *exc,
                             PyObject **result)
    ctypedef PySendResult (*fp_sendfunc)(PyObject *, PyObject *, PyObject **) except PYGEN_ERROR
    void fp_install_am_send(type tp, fp_sendfunc fn) noexcept
    int fp_disarm(fp_slot *s, const fp_saved *sv, uint64_t gen) noexcept
    void fp_base_write(fp_slot *s, int64_t cpu, int64_t wall) noexcept
    int64_t fp_cpu_start_lo(const fp_slot *s, int cpu_idx, uint64_t gen, int64_t lo) noexcept
    int fp_cpu_watch_of(const fp_slot *s, uint64_t gen) noexcept
    int fp_fire_for_running(const fp_slot *s) noexcept
    int fp_defer_enter(fp_slot *s) noexcept
    int fp_main_pending(fp_slot *s) noexcept
    int fp_frame_is_critical(object frame) except -1
    int fp_wd_start() noexcept
    void fp_wd_shutdown() noexcept
    object fp_run_call(fp_slot *s, fp_saved *sv, uint64_t gen, int mem_on,
                       fp_mem_session *mem_out, object fn, PyObject **args, Py_ssize_t nargs,
                       PyObject *kwnames)
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
    PyObject *fp_critical_files
    unsigned long fp_gc_ident
    bint fp_gc_collecting(unsigned long ident) noexcept
    PyObject *fp_sig_py_handler
    PyObject *fp_sig_getsignal
    int fp_preempt_enabled
    int fp_preempt_signal
    int fp_sig_route
    int fp_sig_adopt(int signum) noexcept
    unsigned long fp_main_ident
    int fp_wd_running
    int fp_wd_membarrier
    int fp_tsc_usable
    int fp_fast_gil
    int fp_tsc_ready
    double fp_ns_per_tick
    uint64_t fp_wd_ticks
    uint64_t fp_wd_fires
    uint64_t fp_wd_deferrals
    unsigned long fp_switch_interval_shown() noexcept
    void fp_switch_interval_set() noexcept

# How a budget's call ended (ExecutionBudget._ending): the numbers of
# fastpath._outcome.Ending, which also derives a violation's interrupted and
# interruptible flags from them (_outcome.violation).
cdef int END_NOT_ENDED = _outcome.Ending.NOT_ENDED
cdef int END_RETURNED = _outcome.Ending.RETURNED
cdef int END_RAISED = _outcome.Ending.RAISED
cdef int END_CHECKED = _outcome.Ending.CHECKED
cdef int END_EXPIRED = _outcome.Ending.EXPIRED
cdef int END_INTERRUPTED = _outcome.Ending.INTERRUPTED
cdef int END_MEMORY_REFUSED = _outcome.Ending.MEMORY_REFUSED
cdef int END_MEMORY_STOPPED = _outcome.Ending.MEMORY_STOPPED
cdef int END_MEMORY_SWALLOWED = _outcome.Ending.MEMORY_SWALLOWED
cdef int END_LATE = _outcome.Ending.LATE
cdef int END_FIRST_VIOLATION = _outcome.FIRST_VIOLATION
cdef object _outcome_violation = _outcome.violation


cdef inline bint _own_violation(ExecutionBudget budget) noexcept:
    # Did budget's last call end in its own ConstraintViolation (_outcome.is_violation)?
    return budget._ending >= END_FIRST_VIOLATION
# A rule attempt's verdict (_RuleState._settle): fastpath._outcome.Verdict.
cdef int VERDICT_OK = _outcome.Verdict.OK
cdef int VERDICT_RETRY = _outcome.Verdict.RETRY
cdef int VERDICT_DENY = _outcome.Verdict.DENY
cdef int VERDICT_FALLBACK = _outcome.Verdict.FALLBACK
cdef int VERDICT_ERROR = _outcome.Verdict.ERROR


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


# The member for each kind number (index = number; see _check_kind_numbers).
cdef tuple _KIND_OBJS = (None,) + tuple([ConstraintViolationType(k) for k in range(1, 5)])
# Order in which limits are checked and therefore recorded (seed: timeout first).
cdef int[3] _CHECK_ORDER = [FP_TIMEOUT, FP_MEMORY, FP_CPU]
cdef object _constraints_args = _config.constraints_args


def _gc_phase(phase, info):
    # The core's gc.callbacks entry: which thread runs a collection now (an
    # interrupt for it is put off until its finalizers have run).
    global fp_gc_ident
    fp_gc_ident = PyThread_get_thread_ident() if phase == "start" else 0


cdef inline int _ensure_watchdog() except -1:
    if not fp_wd_running:
        if _gc_phase not in _gc.callbacks:
            _gc.callbacks.append(_gc_phase)
        if fp_wd_start() != 0:
            raise EnforcementFailure("fastpath: could not start the watchdog thread")
    return 0


cdef inline int _prepare_thread() except -1:
    # Before a budget's clock starts: the watchdog, and this thread's slot.  A
    # thread's first slot costs 0.1-0.4 ms on the main thread (pthread_getattr_np
    # reads /proc/self/maps), milliseconds under load: fastpath's own set-up is
    # never charged to a call.
    if not fp_wd_running:
        _ensure_watchdog()
    if fp_tls_slot == NULL:
        _new_slot()
    return 0


# ------------------------------------------------------------------ constraints

@cython.final
@cython.freelist(8)
cdef class ExecutionConstraints:
    """ExecutionConstraints(max_exec_ms, *, cpu_shares=None, memory_limit_bytes=None,
        sampling_rate=1.0, fail_closed_on_timeout=True, max_retries=None,
        retry_backoff_ms=None)
--

Limits for one rule evaluation: immutable, hashable, picklable.
    """

    def __init__(self, *args, **kwargs):
        # _config.constraints_args binds the arguments: a wrong call's TypeError
        # then names ExecutionConstraints(), as the twin's does.
        if self._max_exec_ms:
            raise AttributeError("ExecutionConstraints is immutable; use replace()")
        self._assign(_constraints_args(*args, **kwargs))

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
        if not self._max_exec_ms:       # ExecutionConstraints.__new__ without __init__
            raise _config.unset_constraints()
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
    # Immutable values, so each is built once: fast_rule() and semantic_rule()
    # return one object each, wasm_hook(n) and observational(r) one per argument
    # (exact int / float arguments, at most _PRESET_CACHE_MAX of each).
    @classmethod
    def fast_rule(cls):
        """5 ms, 10 CPU shares, 1 MB, fail closed."""
        global _FAST_RULE
        if _FAST_RULE is None:
            _FAST_RULE = _constraints_from(_config.fast_rule_args())
        return _FAST_RULE

    @classmethod
    def semantic_rule(cls):
        """100 ms, 50 CPU shares, 10 MB, fail open, 2 retries 10 ms apart."""
        global _SEMANTIC_RULE
        if _SEMANTIC_RULE is None:
            _SEMANTIC_RULE = _constraints_from(_config.semantic_rule_args())
        return _SEMANTIC_RULE

    @classmethod
    def wasm_hook(cls, max_ms=10):
        """max_ms, 20 CPU shares, 5 MB, fail closed."""
        return _preset(_WASM_HOOKS, int, max_ms, _config.wasm_hook_args)

    @classmethod
    def observational(cls, sampling_rate=1.0):
        """2 ms, 5 CPU shares, 512 KB, the given sampling rate, fail open."""
        return _preset(_OBSERVATIONAL, float, sampling_rate, _config.observational_args)

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
        if not self._max_exec_ms:
            raise _config.unset_constraints()
        if not fp_wd_running or fp_tls_slot == NULL:
            _prepare_thread()
        budget = ExecutionBudget.__new__(ExecutionBudget)
        budget._constraints = self
        budget._preempt = True
        budget._start_ns = fp_now_ns()
        budget._deadline_ns = fp_sat_add(budget._start_ns, self._max_exec_ns)
        _nest_deadline(budget)
        return budget


cdef inline int _nest_deadline(ExecutionBudget budget) except -1:
    # A budget created while another is current never outlives it.
    cdef fp_slot *slot = fp_tls_slot
    cdef object cur
    if (_async_scopes == 0 and (slot == NULL or (slot.current == NULL
                                                 and slot.step_current == NULL))):
        return 0        # nothing is current (what _current_budget() would find)
    cur = _current_budget()
    if cur is not None and (<ExecutionBudget>cur)._deadline_ns < budget._deadline_ns:
        budget._deadline_ns = (<ExecutionBudget>cur)._deadline_ns
    return 0


cdef inline object _current_budget():
    # A sync call or `with` block is innermost (nothing can await inside it);
    # else the later of the running coroutine step's budget and the task's
    # `async with` budget.
    cdef fp_slot *slot = fp_tls_slot
    cdef object scoped
    if slot != NULL and slot.current != NULL:
        return <object>slot.current
    scoped = _aio.current_budget() if _async_scopes else None
    if slot != NULL and slot.step_current != NULL:
        if scoped is None or (<ExecutionBudget>scoped)._cur_seq < (
                <ExecutionBudget>slot.step_current)._cur_seq:
            return <object>slot.step_current
    return scoped


def current_budget():
    """The innermost budget whose enforce(), enforce_async() or scope is running in
    this thread and task, or None."""
    return _current_budget()


cdef object _FAST_RULE = None
cdef object _SEMANTIC_RULE = None
cdef dict _WASM_HOOKS = {}          # max_ms (exact int) -> wasm_hook(max_ms)
cdef dict _OBSERVATIONAL = {}       # sampling_rate (exact float) -> observational(rate)
cdef Py_ssize_t _PRESET_CACHE_MAX = 64


cdef object _preset(dict cache, type exact, object arg, object build):
    """A preset of one argument, from ``cache`` when ``arg`` is of type ``exact``
    (a bool is never taken for 1, nor an int for a float's key)."""
    cdef object found
    if type(arg) is exact:
        found = cache.get(arg)
        if found is not None:
            return found
    found = _constraints_from(build(arg))
    if type(arg) is exact and len(cache) < _PRESET_CACHE_MAX:
        cache[arg] = found
    return found


cdef ExecutionConstraints _constraints_from(tuple values):
    cdef ExecutionConstraints c = ExecutionConstraints.__new__(ExecutionConstraints)
    c._assign(values)
    return c


def _restore_constraints(*values):
    return _constraints_from(_config.normalize(*values))


# ------------------------------------------------------------------------ stats

@cython.final
@cython.no_gc      # holds only a tuple of enum members: no reference cycle possible
@cython.freelist(16)
cdef class ExecutionStats:
    """ExecutionStats(*, elapsed_ns, memory_used_bytes=0, cpu_time_us=0,
        cpu_time_measured=False, violations=(), memory_allocated_bytes=0,
        memory_peak_bytes=0)
--

What one budget measured.  See the README's "What the figures mean".
    """

    def __init__(self, *, elapsed_ns, memory_used_bytes=0, cpu_time_us=0,
                 cpu_time_measured=False, violations=(), memory_allocated_bytes=0,
                 memory_peak_bytes=0):
        (self.elapsed_ns, self.memory_used_bytes, self.cpu_time_us, self.cpu_time_measured,
         self.violations, self.memory_allocated_bytes, self.memory_peak_bytes) = (
            _config.check_stats(elapsed_ns, memory_used_bytes, cpu_time_us, cpu_time_measured,
                                violations, memory_allocated_bytes, memory_peak_bytes))

    @property
    def elapsed_ms(self):
        """elapsed_ns in milliseconds."""
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
                          fp_mem_session *mem_out, int *fired, int64_t *cpu_due) noexcept:
    # Disarm, measure the call that just ended, return the mask of broken limits.
    # cpu_due receives when a CPU overrun found here crossed the allowance (at
    # the latest), or -1.
    cdef ExecutionConstraints c = self._constraints
    cdef int mask = 0
    cdef int64_t end, wall, used, total
    cdef fp_mem_owner *rec
    fired[0] = fp_disarm(slot, saved, gen)
    end = fp_now_ns()
    cpu_due[0] = -1
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
    elif c._cpu_allowance_ns > 0:
        total = self._cpu_measured_ns + self._cpu_bound_ns
        if total + wall <= c._cpu_allowance_ns:
            # A thread cannot use more CPU than the wall time that passed: no
            # clock read needed, the figure is that bound.
            self._cpu_bound_ns += wall
            self._cpu_unmeasured = True
        else:
            # Long enough to have crossed the allowance: read the clock.  What
            # the call used is at most now minus the lowest the clock can have
            # been when it started (read at arm, or bracketed by a recent
            # reading of the watchdog's).
            used = fp_thread_cpu_ns() - fp_cpu_start_lo(slot, saved.cpu_idx, gen, saved.cpu_lo)
            self._cpu_measured_ns += used
            if total + used > c._cpu_allowance_ns:
                mask |= 1 << FP_CPU
                cpu_due[0] = end - (total + used - c._cpu_allowance_ns)
    if mask:
        self._record_mask(mask)
    return mask


# ----------------------------------------------------------------------- budget

@cython.final
@cython.no_gc      # holds only its ExecutionConstraints, which holds no objects
@cython.freelist(32)
cdef class ExecutionBudget:
    """ExecutionBudget(constraints, *, preempt=True)
--

The running limits of one evaluation; its clock starts when it is created.

    Single-threaded: create it, use it and enforce with it on one thread.
    """

    def __init__(self, constraints, *, preempt=True):
        if self._constraints is not None:
            raise AttributeError("ExecutionBudget is already started")
        _config.check_budget_args(constraints, ExecutionConstraints, preempt)
        if not (<ExecutionConstraints>constraints)._max_exec_ms:
            raise _config.unset_constraints()
        _prepare_thread()
        self._constraints = <ExecutionConstraints>constraints
        self._preempt = preempt
        self._start_ns = fp_now_ns()
        self._deadline_ns = fp_sat_add(self._start_ns, self._constraints._max_exec_ns)
        _nest_deadline(self)

    # (No __dealloc__: _budget_dealloc below releases the memory record.)

    def __reduce__(self):
        raise _config.not_a_value(self)       # pickle, copy.copy and copy.deepcopy

    @property
    def constraints(self):
        return self._constraints

    cdef int64_t _now_or_stop(self) noexcept:
        return self._stop_ns if self._stop_ns else fp_now_ns()

    def elapsed_ns(self):
        """Nanoseconds since creation (frozen when an enforce() call returns)."""
        return self._now_or_stop() - self._start_ns

    def elapsed_ms(self):
        """Milliseconds since creation (frozen when an enforce() call returns)."""
        return (self._now_or_stop() - self._start_ns) / 1e6

    def remaining_ms(self):
        """Milliseconds left before the deadline, never below 0.0."""
        return self.remaining_ns_c() / 1e6

    def is_timeout(self):
        """True once the deadline is reached (frozen when an enforce() call returns)."""
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
        # CPU already counted, plus -- while an enforce() of this budget runs on
        # this thread -- what the running call used so far (an upper bound, as
        # at the end of a call).
        cdef int64_t total = self._cpu_measured_ns + self._cpu_bound_ns
        cdef fp_slot *slot = fp_slot_peek()
        if self._gen and slot != NULL:
            total += fp_thread_cpu_ns() - fp_cpu_start_lo(
                slot, fp_cpu_watch_of(slot, self._gen), self._gen, self._cpu_lo)
        return total

    def check(self):
        """Record every limit violated now; raise ConstraintViolation if any is."""
        cdef int mask = self.check_c()
        if mask:
            raise self._violation(mask, END_CHECKED, -1)

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

    cdef object _violation(self, int mask, int ending, int64_t due):
        # The violation of the kinds in mask, for a call that ended as `ending`
        # (recorded in _ending); due: when an interrupt fell due, -1 for none.
        cdef int i
        cdef list kinds = [_KIND_OBJS[self._violation_order[i]]
                           for i in range(self._violation_count)
                           if mask & (1 << self._violation_order[i])]
        self._ending = ending
        return _outcome_violation(kinds, self._stats(), ending, self._stop_ns,
                                  None if due < 0 else due)

    # -- the per-call path (enforce() is installed below as a fastcall method) --
    cdef object run_c(self, object fn, PyObject **args, Py_ssize_t nargs, PyObject *kwnames,
                      bint preempt):
        return _run(self, fn, args, nargs, kwnames, preempt, -1)

    def enforce_async(self, fn, /, *args, **kwargs):
        """Run the coroutine fn(*args, **kwargs) under this budget; await the result.

        Each step of the coroutine (resumption to next suspension) is armed like an
        enforce() call; a coroutine suspended past its deadline is cancelled and the
        cancellation becomes ConstraintViolation(TIMEOUT_EXCEEDED).  CPU time and
        memory are charged for its own steps only."""
        return _Steps.start(self, fn, args, kwargs)

    def __enter__(self):
        if self._scope is not None:
            raise RuntimeError("this budget's `with` block is already open")
        scope = _Scope.__new__(_Scope)
        _begin_call(self, &(<_Scope>scope).k, self._preempt, True, True, -1)
        self._scope = scope
        return self

    def __exit__(self, exc_type, exc, tb):
        cdef _Scope scope = self._scope
        if scope is None:
            raise RuntimeError("this budget's `with` block is not open")
        self._scope = None
        fp_mem_end_scope(scope.k.slot, &scope.k.saved, scope.k.gen, scope.k.mem_on,
                         &scope.k.mem_out)
        if exc is not None:
            _call_failed(self, &scope.k, exc)
            return False
        _call_returned(self, &scope.k, None, None)
        return False

    def __aenter__(self):
        return _aio_module().scope_enter(self)

    def __aexit__(self, exc_type, exc, tb):
        return _aio_module().scope_exit(self, exc_type, exc)

    def _async_enter(self):
        # `async with budget:` begins: (seconds left, cancel the task at the deadline?)
        cdef int64_t now = fp_now_ns()
        global _async_scopes
        if now >= self._deadline_ns:
            self._stop_ns = now
            self.record_c(FP_TIMEOUT)
            raise self._violation(1 << FP_TIMEOUT, END_EXPIRED, -1)
        self._stop_ns = 0
        fp_add_int(&_async_scopes, 1)
        _next_seq(self)
        return ((self._deadline_ns - now) / 1e9,
                bool(self._preempt and self._constraints._fail_closed and fp_preempt_enabled))

    def _async_exit(self, bint timed_out):
        # `async with budget:` ends: raise the violation found, if any.
        global _async_scopes
        cdef int mask
        fp_add_int(&_async_scopes, -1)
        self._stop_ns = fp_now_ns()
        if timed_out:
            self.record_c(FP_TIMEOUT)
        mask = self.check_c()
        if timed_out:
            mask |= 1 << FP_TIMEOUT
        if timed_out:
            raise self._violation(mask, END_INTERRUPTED, self._deadline_ns)
        if mask:
            raise self._violation(mask, END_LATE, -1)

    def _late_violation(self):
        """The violation recorded so far, not raised (audit of a late call that
        raised its own error)."""
        return self._violation(-1, END_RAISED, -1)

    def _raise_timeout(self):
        """Stop the running call of this budget as its deadline would (for code
        that enforces the budget's remaining time itself, e.g. fastpath.regex)."""
        self._raise_limit(ConstraintViolationType.TIMEOUT_EXCEEDED)

    def _raise_limit(self, kind):
        """Stop the running call of this budget for the limit `kind`
        (TIMEOUT_EXCEEDED, MEMORY_EXCEEDED or CPU_EXCEEDED), which code enforcing
        it itself found broken (fastpath.regex: the deadline; fastpath.wasm: a
        guest's epoch deadline, fuel or linear-memory limit)."""
        cdef int k = _KIND_OBJS.index(kind) if kind in _KIND_OBJS[1:4] else 0
        cdef fp_slot *slot = fp_tls_slot
        if k == 0:
            raise InvalidConfiguration(f"kind must be a limit's ConstraintViolationType, "
                                       f"got {kind!r}")
        if not self._gen or slot == NULL:
            # an `async with` scope (no armed call): the violation itself
            self._stop_ns = fp_now_ns()
            self.record_c(k)
            raise self._violation(1 << k, END_INTERRUPTED, self._stop_ns)
        slot.fire_kind = k
        slot.fire_ns = self._deadline_ns if k == FP_TIMEOUT else fp_now_ns()
        slot.delivered = 1
        fp_mark_fired(slot, self._gen)
        raise ExecutionInterrupted()


cdef struct _Call:
    # One armed call (or step, or `with` block) of a budget.
    fp_slot *slot
    fp_saved saved
    fp_mem_session mem_out
    uint64_t gen
    uint64_t outer_gen
    int64_t fn_start
    int64_t interrupt_at
    int64_t cpu_start
    int64_t cpu_due
    int fired
    bint stop_it
    bint mem_on


cdef inline object _run(ExecutionBudget self, object fn, PyObject **args, Py_ssize_t nargs,
                        PyObject *kwnames, bint preempt, int64_t now):
    # One armed call of fn(*args) under self: the body of run_c, called
    # directly from the rule pipeline's attempts too (now: see _begin_call).
    cdef _Call k
    cdef object result
    _begin_call(self, &k, preempt, True, True, now)
    try:
        result = fp_run_call(k.slot, &k.saved, k.gen, k.mem_on, &k.mem_out, fn, args, nargs,
                             kwnames)
    except BaseException as exc:
        _call_failed(self, &k, exc)
        raise
    _call_returned(self, &k, fn, result)
    return result


cdef int _begin_call(ExecutionBudget self, _Call *k, bint preempt, bint check_expired,
                     bint current, int64_t now) except -1:
    # Arm the slot for one call of `self` (the start of run_c).  now: -1 to
    # read the clock, or a reading the caller made just before, with nothing
    # but fastpath's own bookkeeping since (the rule pipeline's budget, created
    # for this call): the call then starts with its budget, and one of the
    # three clock reads of a call (~10 ns) is saved.
    cdef ExecutionConstraints c = self._constraints
    cdef int64_t cpu_limit, cpu_max_age
    k.fired = 0
    k.cpu_due = -1
    k.mem_out.tripped = k.mem_out.killed = 0     # (set when the memory session ends)
    k.stop_it = preempt and c._fail_closed
    k.mem_on = c._memory_limit >= 0
    self._ending = END_NOT_ENDED
    k.fn_start = now if now >= 0 else fp_now_ns()
    if check_expired and k.fn_start >= self._deadline_ns:
        # An expired budget does not run fn.
        self._stop_ns = k.fn_start
        self.record_c(FP_TIMEOUT)
        raise self._violation(1 << FP_TIMEOUT, END_EXPIRED, -1)
    k.slot = fp_tls_slot
    if k.slot == NULL:
        k.slot = _new_slot()
    if k.slot.depth >= FP_MAX_NESTING or fp_stack_exhausted(k.slot):
        raise RecursionError(
            f"fastpath: enforce() nested too deeply on this thread "
            f"({k.slot.depth} calls open; at most {FP_MAX_NESTING}, within the C stack)")
    if not preempt:
        k.interrupt_at = FP_INT64_MAX
    elif c._fail_closed:
        k.interrupt_at = self._deadline_ns
    else:
        # Fail open: let a late call finish; stop only a runaway at 2x its budget.
        k.interrupt_at = fp_sat_add(self._deadline_ns, c._max_exec_ns)
    cpu_limit = -1
    k.cpu_start = -1
    cpu_max_age = 0
    if c._cpu_allowance_ns == 0:
        # no CPU allowed at all: read the clock around the call
        k.cpu_start = fp_thread_cpu_ns()
        self._cpu_lo = k.cpu_start
    elif c._cpu_allowance_ns > 0:
        cpu_limit = c._cpu_allowance_ns - self._cpu_measured_ns - self._cpu_bound_ns
        if cpu_limit < 0:
            cpu_limit = 0
        # A reading of the CPU clock older than 3/4 of what is left could not
        # tell a sleeping call from one over its allowance.
        cpu_max_age = cpu_limit // 4 * 3
    self._stop_ns = 0
    k.outer_gen = self._gen
    # The slot names the budget current for sync calls; a coroutine step's
    # current budget is the task's (fastpath._aio.CURRENT).
    k.gen = fp_arm(k.slot, &k.saved, <PyObject *>self if current else NULL, k.interrupt_at,
                   FP_TIMEOUT, cpu_limit, k.stop_it, k.fn_start, cpu_max_age)
    self._gen = k.gen
    if cpu_limit >= 0:
        self._cpu_lo = k.saved.cpu_lo
    if k.mem_on:
        fp_mem_ensure()     # re-wraps allocators someone restored underneath us
        fp_mem_arm(&k.slot.mem, &k.saved.mem, &self._mem_rec, k.gen, c._memory_limit,
                   self._memory_charged, k.stop_it and fp_preempt_enabled)
    return 0


cdef int _call_failed(ExecutionBudget self, _Call *k, object exc) except -1:
    # fn raised exc: disarm, then raise the budget's violation instead when exc
    # is this call's interrupt or the cap's refusal; return 0 to re-raise exc.
    cdef int mask = _end_call(self, k.slot, &k.saved, k.gen, k.outer_gen, k.fn_start,
                              k.cpu_start, k.mem_on, &k.mem_out, &k.fired, &k.cpu_due)
    cdef fp_slot *slot = k.slot
    if isinstance(exc, ExecutionInterrupted):
        if not k.fired:
            if k.mem_on and k.mem_out.killed:
                # The memory interrupt: this call's cap refused past its grace
                # margin and the callee kept allocating.
                if not (mask & (1 << FP_MEMORY)):
                    self.record_c(FP_MEMORY)
                    mask |= 1 << FP_MEMORY
                raise self._violation(mask, END_MEMORY_STOPPED, -1)
            self._ending = END_RAISED
            return 0        # meant for an enclosing enforce() on this thread
        if slot.fire_kind and not (mask & (1 << slot.fire_kind)):
            self.record_c(slot.fire_kind)
            mask |= 1 << slot.fire_kind
        raise self._violation(mask, END_INTERRUPTED,
                              k.interrupt_at if slot.fire_kind == FP_TIMEOUT else slot.fire_ns)
    if k.mem_on and k.mem_out.tripped and _from_memory_error(exc):
        # This call's cap refused an allocation and fn ended with that
        # MemoryError (or an error raised while handling it): a MEMORY_EXCEEDED
        # violation, not fn's own error.
        if not (mask & (1 << FP_MEMORY)):
            self.record_c(FP_MEMORY)
            mask |= 1 << FP_MEMORY
        raise self._violation(mask, END_MEMORY_STOPPED if k.mem_out.killed
                              else END_MEMORY_REFUSED, -1)
    self._ending = END_RAISED
    return 0


cdef int _call_returned(ExecutionBudget self, _Call *k, object fn, object result) except -1:
    # fn returned result: disarm, refuse an awaitable, raise a violation.
    cdef int mask = _end_call(self, k.slot, &k.saved, k.gen, k.outer_gen, k.fn_start,
                              k.cpu_start, k.mem_on, &k.mem_out, &k.fired, &k.cpu_due)
    if fn is not None and fp_is_awaitable(result):
        _refuse_awaitable(fn, result, "enforce")
    if mask:
        raise _late(self, k, mask)
    self._ending = END_RETURNED
    return 0


cdef int _refuse_awaitable(object fn, object result, str entry) except -1:
    close = getattr(result, "close", None)
    if close is not None and not hasattr(result, "add_done_callback"):
        close()     # a coroutine: never started, and no "never awaited" warning
    raise TypeError(
        f"{entry}() ran {fn!r}, which returned an awaitable ({type(result).__name__}); "
        f"coroutines run with {entry}_async() (or ConstraintEnforcer.execute_async)")


@cython.final
@cython.no_gc
cdef class _Scope:
    # The armed state of an open `with budget:` block.
    cdef _Call k


# ---------------------------------------------------------------- asyncio

cdef object _aio = None        # fastpath._aio, imported on first async use
cdef int _async_scopes = 0     # `async with` scopes open (any thread)
cdef uint64_t _seq = 0         # orders async current budgets (innermost = latest)


cdef inline void _next_seq(ExecutionBudget b) noexcept:
    global _seq
    b._cur_seq = fp_add_fetch(&_seq, 1)


cdef object _aio_module():
    global _aio
    if _aio is None:
        from fastpath import _aio as module
        _aio = module
    return _aio


cdef int _reraise() except -1:
    return -1       # the exception PyIter_Send / throw left set


cdef object _take(PyObject *res):
    # A new reference handed back by the C API, as an object.
    cdef object o = <object>res
    Py_DECREF(o)
    return o


@cython.final
cdef class _Steps:
    """What enforce_async() returns: awaiting it drives fn's coroutine one step
    (resumption to next suspension) at a time, each armed like an enforce()."""

    cdef ExecutionBudget budget
    cdef object it              # the coroutine (or the awaitable's iterator)
    cdef object task            # the task awaiting us (for the deadline cancellation)
    cdef object timer           # the loop timer that cancels it at the deadline
    cdef bint started
    cdef bint done
    cdef bint returned          # the last _step's value is the coroutine's result
    cdef bint cancelled         # our timer cancelled the task

    @staticmethod
    cdef _Steps start(ExecutionBudget budget, object fn, tuple args, dict kwargs):
        cdef _Steps st
        aw = fn(*args, **kwargs)
        st = _Steps.__new__(_Steps)
        if PyCoro_CheckExact(aw):
            st.it = aw
        elif fp_is_awaitable(aw):
            st.it = aw.__await__()
        else:
            raise TypeError(f"enforce_async() needs fn to return an awaitable; {fn!r} returned "
                            f"{type(aw).__name__} (use enforce() for plain functions)")
        st.budget = budget
        return st

    def __await__(self):
        return self

    def __iter__(self):
        return self

    def __next__(self):
        r = self._step(None, None)
        if self.returned:
            raise StopIteration(r)
        return r

    def send(self, value):
        r = self._step(value, None)
        if self.returned:
            raise StopIteration(r)
        return r

    def throw(self, typ, val=None, tb=None):
        if val is None:
            exc = typ() if isinstance(typ, type) else typ
        else:
            exc = val
        if tb is not None:
            exc = exc.with_traceback(tb)
        r = self._step(None, exc)
        if self.returned:
            raise StopIteration(r)
        return r

    def close(self):
        if not self.done:
            self._finish()
            self.it.close()

    cdef _finish(self):
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _on_deadline(self):
        # Loop timer: the coroutine is suspended past its deadline: cancel the task.
        if not self.done and self.task is not None and not self.task.done():
            self.cancelled = True
            self.task.cancel("fastpath: budget deadline")

    cdef object _step(self, object value, object exc):
        cdef ExecutionBudget b = self.budget
        cdef ExecutionConstraints c = b._constraints
        cdef _Call k
        cdef PyObject *res = NULL
        cdef PySendResult r
        cdef bint first = not self.started
        cdef int mask
        cdef PyObject *outer_step
        if self.done:
            raise RuntimeError("cannot reuse an already awaited enforce_async()")
        if first:
            self.started = True
            _aio_module()
            _next_seq(b)
        elif exc is not None and self.cancelled and isinstance(exc, _aio.CancelledError):
            return self._cancel_at_deadline(exc)
        elif (b._preempt and c._fail_closed and fp_preempt_enabled
              and fp_now_ns() >= b._deadline_ns):
            # resumed past the deadline before the timer could cancel it
            return self._cancel_at_deadline(_aio.CancelledError())
        try:
            _begin_call(b, &k, b._preempt, first, False, -1)
        except BaseException:
            self._finish()
            self.it.close()
            raise
        # The step's budget is current while it runs (current_budget() there).
        outer_step = k.slot.step_current
        k.slot.step_current = <PyObject *>b
        try:
            r = fp_run_step(k.slot, &k.saved, k.gen, k.mem_on, &k.mem_out, self.it,
                            <PyObject *>value, NULL if exc is None else <PyObject *>exc, &res)
            k.slot.step_current = outer_step
            if r == PYGEN_ERROR:
                _reraise()
        except BaseException as e:
            self._finish()
            _call_failed(b, &k, e)
            raise
        if r == PYGEN_RETURN:
            result = _take(res)
            self._finish()
            _call_returned(b, &k, None, None)
            self.returned = True
            return result
        yielded = _take(res)
        mask = _end_call(b, k.slot, &k.saved, k.gen, k.outer_gen, k.fn_start, k.cpu_start,
                         k.mem_on, &k.mem_out, &k.fired, &k.cpu_due)
        if mask and k.stop_it and mask != (1 << FP_TIMEOUT):
            # A fail-closed step went over CPU or memory without being stopped:
            # the coroutine does not go on.
            self._finish()
            _close_quietly(self.it)
            raise _late(b, &k, mask)
        if self.timer is None and k.stop_it and fp_preempt_enabled:
            self._schedule_deadline()
        return yielded

    cdef _schedule_deadline(self):
        loop = _aio.get_running_loop()
        self.task = _aio.current_task()
        if self.task is not None:
            self.timer = loop.call_at(
                loop.time() + (self.budget._deadline_ns - fp_now_ns()) / 1e9, self._on_deadline)

    cdef object _cancel_at_deadline(self, object exc):
        # The deadline passed while the coroutine was suspended: cancel it (its
        # cleanup runs unarmed) and report TIMEOUT_EXCEEDED, interrupted.
        cdef ExecutionBudget b = self.budget
        self._finish()
        try:
            self.it.throw(exc)
        except BaseException as e:
            cause = e
        else:
            cause = exc
            _close_quietly(self.it)     # it ignored the cancellation
        if self.cancelled and self.task is not None and self.task.uncancel() > 0:
            raise cause                 # also cancelled from outside: that wins
        b._stop_ns = fp_now_ns()
        b.record_c(FP_TIMEOUT)
        raise b._violation(1 << FP_TIMEOUT, END_INTERRUPTED, b._deadline_ns) from cause


cdef PySendResult _steps_am_send(PyObject *self, PyObject *arg,
                                 PyObject **presult) except PYGEN_ERROR:
    # tp_as_async.am_send of _Steps: `await` (the SEND opcode) resumes it through
    # PyIter_Send, and its result comes back without a StopIteration.
    cdef _Steps st = <_Steps>self
    cdef object r = st._step(None if arg == NULL else <object>arg, None)
    Py_INCREF(r)
    presult[0] = <PyObject *>r
    return PYGEN_RETURN if st.returned else PYGEN_NEXT


fp_install_am_send(_Steps, _steps_am_send)


cdef _close_quietly(object it):
    try:
        it.close()
    except RuntimeError:
        pass        # "coroutine ignored GeneratorExit"


cdef fp_slot *_new_slot() except NULL:
    # The calling thread's first enforce(): its slot, and -- on the main thread
    # of a process that imported fastpath from another thread -- the signal.
    cdef fp_slot *slot = fp_slot_create()
    if slot == NULL:
        raise MemoryError("fastpath: no memory for the thread's enforcement slot")
    if slot.is_main and fp_sig_route == FP_ROUTE_PENDING:
        _install_preempt_signal()
    return slot


cdef object _late(ExecutionBudget self, _Call *k, int mask):
    # The violation of a call (or coroutine step) k that came back by itself
    # over the limits in mask, with when an interrupt fell due (-1: none was).
    cdef int64_t due = FP_INT64_MAX
    if k.mem_on and k.mem_out.tripped:
        return self._violation(mask, END_MEMORY_SWALLOWED, -1)
    if self._stop_ns >= k.interrupt_at:
        due = k.interrupt_at
    if mask & (1 << FP_CPU) and k.stop_it:
        if k.fired and k.slot.fire_kind == FP_CPU and k.slot.fire_ns < due:
            due = k.slot.fire_ns
        elif k.cpu_due >= 0 and k.cpu_due < due:
            due = k.cpu_due
    return self._violation(mask, END_LATE, -1 if due == FP_INT64_MAX else due)


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


# A budget's destructor.  A Cython __dealloc__ is wrapped in PyErr_Fetch /
# PyErr_Restore (it may run Python code while an exception is pending): about
# 50 instructions per budget, paid by every execute_with_constraints call.
# Releasing the memory record is plain C that cannot raise, so it runs in a
# tp_dealloc of its own, before the one Cython generated.
cdef extern from *:
    """
    #define FP_BUDGET_MEM_REC(o) \
        (((struct __pyx_obj_8fastpath_7_budget_ExecutionBudget *)(o))->_mem_rec)
    """
    uint32_t FP_BUDGET_MEM_REC(PyObject *o) noexcept

cdef destructor _budget_dealloc_generated = (<PyTypeObject *>ExecutionBudget).tp_dealloc


cdef void _budget_dealloc(PyObject *o) noexcept:
    cdef uint32_t rec = FP_BUDGET_MEM_REC(o)
    if rec:
        fp_mem_release(rec)         # its blocks stop counting for it
    _budget_dealloc_generated(o)

(<PyTypeObject *>ExecutionBudget).tp_dealloc = _budget_dealloc


# ------------------------------------------------------------------ the enforcer

include "_rules.pxi"

cdef int _SAMPLED_OUT = FP_SAMPLED_OUT


@cython.final
cdef class _RuleState:
    """One rule type's profile and counters (see ConstraintEnforcer)."""

    def __init__(self, key, ExecutionConstraints constraints, fallback, bint preempt,
                 rule_id=None, _Breaker breaker=None, _Adaptive adaptive=None, quota=None):
        if not constraints._max_exec_ms:
            raise _config.unset_constraints()
        self.key = key
        self.configured = constraints
        if adaptive is not None and adaptive.limit_ms != constraints._max_exec_ms:
            constraints = constraints.replace(max_exec_ms=adaptive.limit_ms)
        self.constraints = constraints
        self.rule_id = rule_id
        self.breaker = breaker
        self.adaptive = adaptive
        self.quota = quota
        self.fallback = fallback
        self.preempt = preempt
        self.histogram = LatencyHistogram()
        self.max_attempts = 1 + (constraints._max_retries if constraints._max_retries > 0 else 0)
        self.backoff_ns = (constraints._retry_backoff_ms * 1000000
                           if constraints._retry_backoff_ms > 0 else 0)

    def counters(self):
        """A snapshot: (calls, executed, sampled_out, fail_open, fail_closed, errors,
        retries, quota_refused, {violation kind value: count})."""
        cdef int k
        return (self.calls, self.executed, self.sampled_out, self.fail_open, self.fail_closed,
                self.errors, self.retries, self.quota_refused,
                {k: self.violations[k] for k in range(1, 5)})

    @property
    def refused_calls(self):
        """Calls the breaker refused."""
        return self.refused

    # -- execute_async: the same bookkeeping as _pipeline, around awaits --------
    def _admit(self):
        """Count a call: (its budget, the breaker's token), or (None, 0) when
        sampled out or refused fail open; a refusal fail closed raises."""
        cdef int64_t token
        if not self._sample():
            return None, 0
        token = self._breaker_token()
        if token == 0:
            return None, 0
        return self._start(), token

    def _sample(self):
        """Count a call; False when sampled out."""
        fp_add(&self.calls, 1)
        if not self.constraints.should_sample_c():
            fp_add(&self.sampled_out, 1)
            fp_add(&self.violations[_SAMPLED_OUT], 1)
            return False
        return True

    def _breaker_token(self):
        """The breaker's admission token (1: closed, or no breaker); 0 when it
        refused a fail-open rule (a refusal fail closed raises)."""
        cdef int64_t token
        if self.breaker is None:
            return 1
        token = _breaker_admit(self.breaker)
        if token == 0:
            _rule_refused(self, self.rule_id, self.constraints)
        return token

    def _release_token(self, int64_t token):
        """A call admitted by the breaker that will not run (its quota refused
        it): give back a half-open probe's slot, with no outcome."""
        if token != 1 and self.breaker is not None:
            self.breaker._record(token, -1)

    def _count_quota_refused(self):
        fp_add(&self.quota_refused, 1)

    def _start(self):
        """Count an executed call: its budget."""
        cdef ExecutionBudget budget
        fp_add(&self.executed, 1)
        budget = self.constraints.create_budget_c()
        budget._preempt = self.preempt
        return budget

    def _settle(self, ExecutionBudget budget, exc, tuple transient, int64_t attempt):
        """After an attempt: its fastpath._outcome.Verdict (OK, RETRY after
        backoff_s, DENY, FALLBACK or ERROR), counted."""
        cdef int i
        if exc is None:
            self.histogram.record_c(budget._stop_ns - budget._start_ns)
            return VERDICT_OK
        if _own_violation(budget):
            self.histogram.record_c(budget._stop_ns - budget._start_ns)
            for i in range(budget._violation_count):
                fp_add(&self.violations[budget._violation_order[i]], 1)
            if self.constraints._fail_closed:
                fp_add(&self.fail_closed, 1)
                return VERDICT_DENY
            fp_add(&self.fail_open, 1)
            return VERDICT_FALLBACK
        if (attempt < self.max_attempts and isinstance(exc, transient)
                and budget.remaining_ns_c() >= self.backoff_ns):
            fp_add(&self.retries, 1)
            return VERDICT_RETRY
        fp_add(&self.errors, 1)
        self.histogram.record_c(budget._stop_ns - budget._start_ns)
        for i in range(budget._violation_count):
            fp_add(&self.violations[budget._violation_order[i]], 1)
        return VERDICT_ERROR

    @property
    def backoff_s(self):
        return self.backoff_ns / 1e9

    def reset(self):
        cdef int k
        self.calls = self.executed = self.sampled_out = 0
        self.fail_open = self.fail_closed = self.errors = self.retries = 0
        self.refused = self.quota_refused = 0
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
        cdef Py_ssize_t i
        cdef PyObject *rule
        if type(rule_type) is _RuleState:
            return <_RuleState>rule_type         # a registered rule's own state
        for i in range(PyTuple_GET_SIZE(self._rules)):
            rule = PyTuple_GET_ITEM(self._rules, i)      # borrowed: no reference counting
            if (<_RuleState>rule).key is rule_type:
                return <_RuleState>rule
        raise InvalidConfiguration(f"rule_type must be a RuleType, got {rule_type!r}")

    def _audit(self, rule_type, rule_id, fn, violation, outcome):
        pass    # ConstraintEnforcer emits the audit event

    def _limit_changed(self, rule, change):
        pass    # ConstraintEnforcer emits the audit event

    def _window_end(self, _RuleState rule):
        """An adaptive window ended: the next limit, off the per-call path."""
        change = rule.adaptive._finish_window(True)
        if change is None:
            return
        constraints = rule.configured.replace(max_exec_ms=change[1])
        if rule.adaptive.limit_ms == change[1]:      # not overtaken by a later window
            rule.constraints = constraints
        self._limit_changed(rule, change)

    def _feed(self, _RuleState rule, ExecutionBudget budget, int64_t token, int error):
        """execute_async's end of a call: the breaker and the adaptive limit."""
        if rule.breaker is not None or rule.adaptive is not None:
            _rule_feed(self, rule, budget, token, error)

    def _quota_refused(self, rule_type, rule_id, fn, key, fail_closed):
        if fail_closed:     # ConstraintEnforcer also audits, and says which quota
            raise ResourceExhausted(f"quota exhausted for flow {key!r}")

    cdef object _pipeline(self, _RuleState rule, object rule_id, object fn, PyObject **args,
                          Py_ssize_t nargs, PyObject *kwnames):
        cdef ExecutionConstraints c = rule.constraints
        cdef int64_t token = 1
        fp_add(&rule.calls, 1)
        if not c.should_sample_c():
            fp_add(&rule.sampled_out, 1)
            fp_add(&rule.violations[_SAMPLED_OUT], 1)
            return rule.fallback
        if rule.breaker is not None:
            token = _breaker_admit(rule.breaker)
            if token == 0:
                return _rule_refused(rule, rule_id, c)
        if rule.quota is not None:
            return _quota_pipeline(self, rule, rule_id, fn, token, args, nargs, kwnames)
        fp_add(&rule.executed, 1)
        return _attempts(self, rule, rule_id, fn, c.create_budget_c(), token, args, nargs,
                         kwnames)


cdef inline object _attempts(_EnforcerCore self, _RuleState rule, object rule_id, object fn,
                             ExecutionBudget budget, int64_t token, PyObject **args,
                             Py_ssize_t nargs, PyObject *kwnames):
    # The attempts of one admitted call under its budget: run, retries, policy.
    cdef ExecutionConstraints c = rule.constraints
    cdef int64_t attempt = 1
    cdef object result
    cdef int i
    while True:
        try:
            # The first attempt starts when its budget did (one clock read less).
            result = _run(budget, fn, args, nargs, kwnames, rule.preempt,
                          budget._start_ns if attempt == 1 else -1)
        except BaseException as exc:
            if _own_violation(budget):
                # This budget's own violation: count it, audit it, apply the policy.
                _rule_ended(self, rule, budget, token, 0)
                for i in range(budget._violation_count):
                    fp_add(&rule.violations[budget._violation_order[i]], 1)
                if c._fail_closed:
                    fp_add(&rule.fail_closed, 1)
                    self._audit(rule, rule_id, fn, exc, "deny")
                    raise
                fp_add(&rule.fail_open, 1)
                self._audit(rule, rule_id, fn, exc, "fallback")
                return rule.fallback
            if _will_retry(self, rule, budget, attempt, exc):
                # Transient: retry inside the same budget, if it can cover the delay.
                attempt += 1
                fp_add(&rule.retries, 1)
                if rule.backoff_ns:
                    self._sleep(rule.backoff_ns / 1e9)
                continue
            fp_add(&rule.errors, 1)
            _rule_ended(self, rule, budget, token, 1 if isinstance(exc, Exception) else -1)
            if budget._violation_count:
                # Late and then failed: fn's exception propagates, the
                # violation is still counted and audited.
                for i in range(budget._violation_count):
                    fp_add(&rule.violations[budget._violation_order[i]], 1)
                self._audit(rule, rule_id, fn,
                            budget._violation(-1, END_RAISED, -1), "error")
            raise
        _rule_ended(self, rule, budget, token, 0)
        return result


cdef object _current_flow = _flow.current_flow     # the ContextVar, bound once


cdef object _quota_pipeline(_EnforcerCore core, _RuleState rule, object rule_id, object fn,
                            int64_t token, PyObject **args, Py_ssize_t nargs,
                            PyObject *kwnames):
    # Admission before fn (a refused call takes nothing and never runs fn), then
    # the debit of what the call measured: its budget's wall time and, when the
    # quota limits CPU, this thread's CPU clock around the attempts.
    cdef Quota quota = rule.quota
    cdef object key = _contextvar_get(_current_flow, None)
    cdef ExecutionBudget budget = rule.constraints.create_budget_c()   # its clock read: now
    cdef int64_t cpu0 = 0
    cdef int admitted = quota_admit(quota, key, budget._start_ns)
    if not admitted:
        rule._release_token(token)          # a half-open probe that will not run
        fp_add(&rule.quota_refused, 1)
        core._quota_refused(rule, rule_id, fn, key, rule.constraints._fail_closed)
        return rule.fallback
    if admitted == 2:
        # A Redis round trip ran: none of it is charged to the rule's own budget.
        budget = rule.constraints.create_budget_c()
    fp_add(&rule.executed, 1)
    if quota.tracks_cpu:
        cpu0 = fp_thread_cpu_ns()
    if not quota.debits:
        return _attempts(core, rule, rule_id, fn, budget, token, args, nargs, kwnames)
    try:
        return _attempts(core, rule, rule_id, fn, budget, token, args, nargs, kwnames)
    finally:
        quota.debit_c(key, fp_thread_cpu_ns() - cpu0 if quota.tracks_cpu else 0,
                      budget._now_or_stop() - budget._start_ns, budget._now_or_stop())


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
    # Inside uninterruptible() or a stdlib lock holder, put it off: the
    # watchdog sends the signal again next tick.
    cdef fp_slot *slot = fp_slot_peek()
    if fp_main_pending(slot):
        if (slot.defer_depth > 0 or fp_gc_collecting(fp_main_ident)
                or fp_frame_is_critical(frame)):
            slot.deferred = 1
            return
        slot.delivered = 1
        raise ExecutionInterrupted()


cdef object _PREEMPT_SIGNAL = None  # its number, or None (FASTPATH_PREEMPT_SIGNAL=off)


def _install_preempt_signal():
    """Install the main thread's preemption signal (on the main thread only)."""
    global fp_sig_route, fp_sig_py_handler, fp_sig_getsignal
    signum = _PREEMPT_SIGNAL      # FASTPATH_PREEMPT_SIGNAL, checked by _init_module
    if signum is None:
        fp_sig_route = FP_ROUTE_OFF
        return 0
    if _threading.current_thread() is not _threading.main_thread():
        fp_sig_route = FP_ROUTE_PENDING     # installed at the main thread's first call
        return 0
    current = _signal.getsignal(signum)
    if current is not _preempt_signal_handler:
        if current not in (_signal.SIG_DFL, None):
            fp_sig_route = FP_ROUTE_TAKEN   # the application owns that signal: GIL path
            return 0
        _signal.signal(signum, _preempt_signal_handler)
    if fp_sig_getsignal == NULL:
        fp_sig_getsignal = <PyObject *>_GETSIGNAL
        fp_sig_py_handler = <PyObject *>_preempt_signal_handler
    if fp_sig_adopt(signum) != 0:
        fp_sig_route = FP_ROUTE_LOST
        return 0
    return signum


cdef object _GETSIGNAL = _signal.getsignal      # module-level: keeps fp_sig_getsignal alive

cdef dict _ROUTE_NAMES = {
    FP_ROUTE_OFF: "off",
    FP_ROUTE_OURS: "ours",
    FP_ROUTE_PENDING: "pending",
    FP_ROUTE_TAKEN: "taken",
    FP_ROUTE_LOST: "lost",
}


def set_preemption(enabled):
    """Enable or disable interrupting calls process-wide (limits are still reported)."""
    global fp_preempt_enabled
    fp_preempt_enabled = 1 if _config.check_bool("enabled", enabled) else 0


def preemption_info():
    """How calls are interrupted in this process."""
    cdef bint by_signal = fp_sig_route == FP_ROUTE_OURS
    return {
        "enabled": bool(fp_preempt_enabled),
        "main_thread": "signal" if by_signal else "gil",
        "signal": fp_preempt_signal if (by_signal or fp_sig_route == FP_ROUTE_LOST) else None,
        "signal_route": _ROUTE_NAMES[fp_sig_route],
        "watchdog_running": bool(fp_wd_running),
        "watchdog_tick_ns": FP_WD_TICK_NS,
        "membarrier": bool(fp_wd_membarrier),
        "fast_gil_handover": bool(fp_fast_gil),
        "clock": "tsc" if fp_tsc_ready else "CLOCK_MONOTONIC",
        "ticks": fp_wd_ticks,
        "interrupts_sent": fp_wd_fires,
        "interrupts_deferred": fp_wd_deferrals,
    }


@cython.final
@cython.no_gc
cdef class uninterruptible:
    """uninterruptible()
--

Put off interrupts while the block runs (sync ``with`` or ``async with``).

    For the application's own critical sections, such as ``lock.acquire()``
    followed by a ``try:`` on a later line: an interrupt due inside the block
    is delivered shortly after it ends.  Counted per thread; blocks nest.
    """

    def __enter__(self):
        cdef fp_slot *slot = fp_tls_slot
        if slot == NULL:
            slot = _new_slot()
        if fp_defer_enter(slot):
            # An interrupt sent under the GIL for the running call may not have
            # been raised yet: 3.13 raises it at the next eval-breaker check
            # after the one it was sent at, which can be inside this block.
            # Take it back; the watchdog sends it again (every 2 ms) and defers
            # it while the block runs.
            PyThreadState_SetAsyncExc(slot.py_ident, NULL)
        return self

    def __exit__(self, exc_type, exc, tb):
        cdef fp_slot *slot = fp_tls_slot
        if slot != NULL and slot.defer_depth > 0:
            slot.defer_depth -= 1
        return False

    async def __aenter__(self):
        return self.__enter__()

    async def __aexit__(self, exc_type, exc, tb):
        return self.__exit__(exc_type, exc, tb)


# ------------------------------------------------- the switch interval, as seen

cdef object _sys_setswitchinterval = _sys.setswitchinterval


def getswitchinterval():
    """Return the current thread switch interval; see setswitchinterval().

    (fastpath's wrapper of sys.getswitchinterval: while its watchdog has the
    interval lowered for its own GIL request, this reports the real value.)"""
    return 1e-6 * fp_switch_interval_shown()


def setswitchinterval(interval):
    """Set the ideal thread switching delay inside the Python interpreter.

    (fastpath's wrapper of sys.setswitchinterval: a value set while its
    watchdog has the interval lowered is the one it puts back.)"""
    _sys_setswitchinterval(interval)
    fp_switch_interval_set()


def _install_switch_interval_view():
    if fp_fast_gil:
        _sys.getswitchinterval = getswitchinterval
        _sys.setswitchinterval = setswitchinterval


def _measure_arm_disarm(Py_ssize_t n):
    """Nanoseconds per arm+disarm pair of this thread's slot, over n pairs.

    What enforce() adds for preemption, measured in C because it cannot be
    isolated from Python (benchmarks and the selftest report it)."""
    cdef fp_slot *slot = fp_tls_slot
    cdef fp_saved saved
    cdef Py_ssize_t _
    cdef uint64_t gen
    cdef int64_t t0, deadline
    if slot == NULL:
        slot = _new_slot()
    if n < 1:
        raise InvalidConfiguration(f"n must be >= 1, got {n}")
    deadline = fp_now_ns() + 3600 * 1000000000
    # A fast_rule()-like call: deadline and CPU watch, with the watchdog's
    # reading of the thread's CPU clock fresh, as it is between back-to-back
    # calls (the clock read for the call's start is enforce()'s anyway).
    fp_base_write(slot, fp_thread_cpu_ns(), fp_now_ns())
    t0 = fp_now_ns()
    for _ in range(n):
        gen = fp_arm(slot, &saved, NULL, deadline, FP_TIMEOUT, 500000, 1, deadline,
                     FP_INT64_MAX)
        fp_disarm(slot, &saved, gen)
    return (fp_now_ns() - t0) / n


def _awaitable(o):
    """Would awaiting be the way to use o (a coroutine, a future, ...)?  A type-slot
    test (hasattr(type(o), "__await__") costs ~10x more when the answer is no)."""
    return fp_is_awaitable(o) != 0


def _slot_state():
    """This thread's slot, for tests: open calls, uninterruptible depth, greenlet mode."""
    cdef fp_slot *slot = fp_tls_slot
    if slot == NULL:
        return None
    return {"depth": slot.depth, "defer_depth": slot.defer_depth,
            "unordered": bool(slot.unordered)}


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


def _quota_class():
    """The Quota class this core's enforcer admits calls through."""
    return Quota


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


cdef tuple _CRITICAL_FILES = _critical.CRITICAL_FILES   # module keeps it alive


def _kind_numbers():
    """The violation-kind numbers the C runtime uses (``_fp_common.h``)."""
    return {"TIMEOUT_EXCEEDED": FP_TIMEOUT, "MEMORY_EXCEEDED": FP_MEMORY,
            "CPU_EXCEEDED": FP_CPU, "SAMPLED_OUT": FP_SAMPLED_OUT}


def _check_kind_numbers():
    for name, number in _kind_numbers().items():
        if ConstraintViolationType[name] != number:
            raise ImportError(
                f"fastpath: the compiled core numbers {name} {number}, fastpath.errors "
                f"{int(ConstraintViolationType[name])}: rebuild the extension"
            )


def _init_module():
    global fp_interrupt_type, fp_preempt_enabled, fp_tsc_usable, fp_fast_gil
    global fp_critical_files, fp_main_ident, _PREEMPT_SIGNAL
    _check_kind_numbers()
    fp_interrupt_type = <PyObject *>ExecutionInterrupted   # module keeps it alive
    fp_critical_files = <PyObject *>_CRITICAL_FILES
    fp_main_ident = _threading.main_thread().ident
    # Read the TSC directly only where the kernel's own clock is the TSC;
    # FASTPATH_CLOCK=monotonic forces the kernel clock.
    # Every variable is read and checked here, by the functions the twin uses.
    clock = _config.env_clock()
    fast_gil = _config.env_flag("FASTPATH_FAST_GIL", True)
    preempt = _config.env_flag("FASTPATH_PREEMPT", True)
    _PREEMPT_SIGNAL = _config.env_preempt_signal()
    fp_tsc_usable = 1 if (clock == "tsc" and _kernel_clocksource() == "tsc") else 0
    if not fast_gil:
        fp_fast_gil = 0
    if not preempt:
        fp_preempt_enabled = 0
    _install_preempt_signal()
    _install_switch_interval_view()
    fp_mem_install()
    _atexit.register(_shutdown_watchdog)


_init_module()
