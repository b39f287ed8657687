# Rules as objects, circuit breakers and adaptive limits (issue 13): the C
# side.  Included by _budget.pyx; the Python faces are fastpath/breaker.py,
# fastpath/adaptive.py and fastpath/rules.py.  Everything here runs with the
# GIL held and calls no Python code between reading and writing a counter, so
# the counts are exact under threads without a lock (and no lock is ever held
# while fn runs).  Python code runs only at a state change or a window's end.

from cpython.mem cimport PyMem_Calloc, PyMem_Free
from libc.math cimport ceil

cdef extern from "_fp_rules.h":
    int fp_enable_vectorcall(type tp, Py_ssize_t offset) except -1
    int FP_OUTCOME_FAILED
    int FP_OUTCOME_SLOW

from fastpath.errors import ResourceExhausted

# Breaker states (fastpath.breaker.CircuitState has the same values).
cdef enum:
    _CLOSED = 0
    _OPEN = 1
    _HALF_OPEN = 2
    _FORCED_OPEN = 3
    _DISABLED = 4

cdef tuple _STATE_NAMES = ("closed", "open", "half_open", "forced_open", "disabled")
cdef int _BUCKETS = 20          # a time window is kept as this many buckets


cdef inline int64_t _clock_ns(object clock) except? -1:
    if clock is None:
        return fp_now_ns()
    return <int64_t>(clock() * 1e9)


cdef class _Breaker:
    """The state machine and window of a CircuitBreaker (fastpath/breaker.py)."""

    def __dealloc__(self):
        PyMem_Free(self.ring)
        PyMem_Free(self.buckets)

    def _setup(self, double failure_rate, double slow_call_rate, int64_t slow_call_ns,
               int64_t minimum_calls, int64_t window_calls, int64_t window_ns,
               int64_t open_ns, double open_backoff, int64_t max_open_ns,
               int64_t half_open_calls, int64_t max_half_open_ns, int kind_mask,
               bint record_errors, clock):
        """Validated settings (CircuitBreaker.__init__ checks them)."""
        self.failure_rate = failure_rate
        self.slow_call_rate = slow_call_rate
        self.slow_call_ns = slow_call_ns
        self.minimum_calls = minimum_calls
        self.open_base_ns = self.open_now_ns = open_ns
        self.open_backoff = open_backoff
        self.max_open_ns = max_open_ns
        self.half_open_calls = half_open_calls
        self.max_half_open_ns = max_half_open_ns
        self.kind_mask = kind_mask
        self.record_errors = record_errors
        self.clock = clock
        if window_ns > 0:
            self.nbuckets = _BUCKETS
            self.bucket_ns = max(1, window_ns // _BUCKETS)
            self.buckets = <int64_t *>PyMem_Calloc(4 * _BUCKETS, sizeof(int64_t))
            if self.buckets == NULL:
                raise MemoryError()
        else:
            self.window_calls = window_calls
            self.ring = <unsigned char *>PyMem_Calloc(window_calls, 1)
            if self.ring == NULL:
                raise MemoryError()
        self._clear()

    cdef int64_t now_c(self) except? -1:
        return _clock_ns(self.clock)

    def _now_ns(self):
        return self.now_c()

    cdef void _clear(self) noexcept:
        cdef int64_t i
        self.n = self.failures = self.slow = 0
        self.ring_pos = 0
        if self.ring != NULL:
            for i in range(self.window_calls):
                self.ring[i] = 0
        if self.buckets != NULL:
            for i in range(4 * self.nbuckets):
                self.buckets[i] = 0
            self.last_epoch = -1

    # -- admission (before the budget exists) ------------------------------------
    # admit_c, record_c and the methods below change the state machine inside a
    # critical section on the breaker (_fp_atomic.h: nothing on GIL builds); the
    # *_locked bodies run inside it.
    cdef int64_t admit_c(self) except -1:
        cdef fp_cs cs
        fp_cs_begin(&cs, self)
        try:
            return self._admit_locked()
        finally:
            fp_cs_end(&cs)

    cdef int64_t _admit_locked(self) except -1:
        cdef int state = self.state
        cdef int64_t now
        if state == _CLOSED or state == _DISABLED:
            return 1
        if state == _FORCED_OPEN:
            self.refused += 1
            return 0
        now = self.now_c()          # may run Python code (a test clock): re-read the state
        state = self.state
        if state == _OPEN:
            if now < self.open_until_ns:
                self.refused += 1
                return 0
            self._move(_HALF_OPEN, now, "open_elapsed")
            return self._admit_locked()     # _move ran Python code (the audit event)
        if state != _HALF_OPEN:
            return self._admit_locked()
        if self.max_half_open_ns >= 0 and now - self.half_open_since_ns >= self.max_half_open_ns:
            self._move(_OPEN, now, "half_open_timeout")
            self.refused += 1
            return 0
        if self.probes_inflight + self.probes_done >= self.half_open_calls:
            self.refused += 1
            return 0
        self.probes_inflight += 1
        return 2 + <int64_t>self.half_open_gen

    # -- an admitted call's outcome -------------------------------------------------
    cdef int record_c(self, int64_t token, ExecutionBudget budget, int error,
                      int64_t deadline_ns) except -1:
        cdef int outcome = _outcome_of(self, budget, error, deadline_ns)
        cdef fp_cs cs
        fp_cs_begin(&cs, self)
        try:
            return self._record_locked(token, outcome, error)
        finally:
            fp_cs_end(&cs)

    cdef int _record_locked(self, int64_t token, int outcome, int error) except -1:
        if token >= 2:
            return self._probe_ended(<uint64_t>(token - 2), -1 if error < 0 else outcome)
        if error < 0:
            return 0
        return self._closed_outcome(outcome)

    def _record(self, int64_t token, int outcome):
        """Record an outcome (FP_OUTCOME_* bits; -1 none) as record_c does (tests,
        and the async pipeline)."""
        cdef fp_cs cs
        fp_cs_begin(&cs, self)
        try:
            if token >= 2:
                return self._probe_ended(<uint64_t>(token - 2), outcome)
            if outcome >= 0:
                self._closed_outcome(outcome)
        finally:
            fp_cs_end(&cs)

    cdef int _closed_outcome(self, int outcome) except -1:
        cdef int64_t epoch, i, b, now = 0
        if self.state != _CLOSED:
            return 0                # admitted before a trip, or DISABLED: not counted
        if self.ring != NULL:
            _ring_push(self, outcome)
            return _check_trip(self, 0)
        else:
            now = self.now_c()      # may run Python code (a test clock): re-read the state
            if self.state != _CLOSED:
                return 0
            epoch = now // self.bucket_ns
            if self.last_epoch < 0 or epoch - self.last_epoch >= self.nbuckets:
                self._clear()
                self.last_epoch = epoch
            elif epoch > self.last_epoch:
                # Expire the buckets that fell out of the window: slot i % nbuckets
                # holds epoch i - nbuckets (or nothing).
                i = self.last_epoch + 1
                while i <= epoch:
                    b = 4 * (i % self.nbuckets)
                    self.n -= self.buckets[b + 1]
                    self.failures -= self.buckets[b + 2]
                    self.slow -= self.buckets[b + 3]
                    self.buckets[b] = i
                    self.buckets[b + 1] = self.buckets[b + 2] = self.buckets[b + 3] = 0
                    i += 1
                self.last_epoch = epoch
            elif epoch <= self.last_epoch - self.nbuckets:
                return 0            # a clock reading older than the window
            b = 4 * (epoch % self.nbuckets)
            self.n += 1
            self.buckets[b + 1] += 1
            self.buckets[b + 2] += outcome & FP_OUTCOME_FAILED
            self.buckets[b + 3] += (outcome & FP_OUTCOME_SLOW) >> 1
        self.failures += outcome & FP_OUTCOME_FAILED
        self.slow += (outcome & FP_OUTCOME_SLOW) >> 1
        self.recorded += 1
        return _check_trip(self, now)

    cdef int _probe_ended(self, uint64_t gen, int outcome) except -1:
        if self.state != _HALF_OPEN or gen != self.half_open_gen:
            return 0                # a probe of an earlier period (reset, timeout)
        self.probes_inflight -= 1
        if outcome < 0:
            return 0                # cancelled / interrupted from outside: no outcome
        self.probes_done += 1
        self.probes_failed += outcome & FP_OUTCOME_FAILED
        self.probes_slow += (outcome & FP_OUTCOME_SLOW) >> 1
        if self.probes_done < self.half_open_calls:
            return 0
        if self.probes_failed >= self.failure_rate * self.probes_done:
            self._move(_OPEN, self.now_c(), "probes_failed")
        elif self.probes_slow >= self.slow_call_rate * self.probes_done:
            self._move(_OPEN, self.now_c(), "probes_slow")
        else:
            self._move(_CLOSED, 0, "probes_succeeded")
        return 0

    # -- transitions --------------------------------------------------------------
    cdef int _move(self, int new_state, int64_t now, str reason) except -1:
        """Change state (C only, atomic under the GIL), then tell the Python side."""
        cdef int old = self.state
        cdef double backed_off
        if new_state == _OPEN:
            if old == _HALF_OPEN:
                backed_off = self.open_now_ns * self.open_backoff
                if self.max_open_ns >= 0 and backed_off > self.max_open_ns:
                    backed_off = self.max_open_ns
                self.open_now_ns = <int64_t>min(backed_off, 9.0e18)
            self.open_until_ns = now + self.open_now_ns
        elif new_state == _HALF_OPEN:
            self.half_open_gen += 1
            self.half_open_since_ns = now
            self.probes_inflight = self.probes_done = 0
            self.probes_failed = self.probes_slow = 0
        if new_state == _CLOSED:
            self.open_now_ns = self.open_base_ns
        if new_state != _HALF_OPEN:
            self.half_open_gen += 1   # in-flight probes no longer count
        self._clear()
        self.state = new_state
        self.transitions += 1
        self._changed(old, new_state, reason)
        return 0

    def _changed(self, int old, int new, str reason):
        pass                        # CircuitBreaker emits the audit events

    def _set_state(self, int new_state, str reason):
        """Manual control: force_open(), disable(), reset()."""
        cdef fp_cs cs
        cdef int64_t now = self.now_c()
        fp_cs_begin(&cs, self)
        try:
            self._move(new_state, now, reason)
        finally:
            fp_cs_end(&cs)

    def _clear_window(self):
        cdef fp_cs cs
        fp_cs_begin(&cs, self)
        self._clear()
        fp_cs_end(&cs)

    def _snapshot(self):
        """(state, calls, failures, slow, refused, transitions, recorded,
        probes_inflight, open_until_ns, open_now_ns)."""
        cdef fp_cs cs
        fp_cs_begin(&cs, self)
        try:
            return self._snapshot_locked()
        finally:
            fp_cs_end(&cs)

    cdef tuple _snapshot_locked(self):
        return (self.state, self.n, self.failures, self.slow, self.refused, self.transitions,
                self.recorded, self.probes_inflight, self.open_until_ns, self.open_now_ns)

    def _admit(self):
        return self.admit_c()


# The closed state's per-call work, as inline C functions: the pipeline runs
# them directly (no vtable call) and the methods above share them.

cdef inline int _outcome_of(_Breaker b, ExecutionBudget budget, int error,
                            int64_t deadline_ns) noexcept:
    cdef int outcome = 0
    cdef int64_t slow_ns = b.slow_call_ns if b.slow_call_ns >= 0 else deadline_ns
    if (budget._violation_mask & b.kind_mask) or (error > 0 and b.record_errors):
        outcome |= FP_OUTCOME_FAILED
    if budget._stop_ns - budget._start_ns > slow_ns:
        outcome |= FP_OUTCOME_SLOW
    return outcome


cdef inline void _ring_push(_Breaker b, int outcome) noexcept:
    cdef unsigned char old
    if b.n == b.window_calls:
        old = b.ring[b.ring_pos]
        b.failures -= old & FP_OUTCOME_FAILED
        b.slow -= (old & FP_OUTCOME_SLOW) >> 1
    else:
        b.n += 1
    b.ring[b.ring_pos] = <unsigned char>outcome
    b.ring_pos += 1
    if b.ring_pos == b.window_calls:
        b.ring_pos = 0
    b.failures += outcome & FP_OUTCOME_FAILED
    b.slow += (outcome & FP_OUTCOME_SLOW) >> 1
    b.recorded += 1


cdef inline int _check_trip(_Breaker b, int64_t now) except -1:
    if b.n >= b.minimum_calls:
        if b.failures >= b.failure_rate * b.n:
            b._move(_OPEN, now if now else b.now_c(), "failure_rate")
        elif b.slow >= b.slow_call_rate * b.n:
            b._move(_OPEN, now if now else b.now_c(), "slow_call_rate")
    return 0


cdef inline int64_t _breaker_admit(_Breaker b) except -1:
    if b.state == _CLOSED:
        return 1
    return b.admit_c()


cdef inline int _breaker_record(_Breaker b, int64_t token, ExecutionBudget budget, int error,
                                int64_t deadline_ns) except -1:
    cdef fp_cs cs
    if token == 1 and error >= 0 and b.state == _CLOSED and b.ring != NULL:
        fp_cs_begin(&cs, b)
        try:
            if b.state == _CLOSED:      # (another thread may have tripped it)
                _ring_push(b, _outcome_of(b, budget, error, deadline_ns))
                _check_trip(b, 0)
        finally:
            fp_cs_end(&cs)
        return 0
    return b.record_c(token, budget, error, deadline_ns)


# ------------------------------------------------------------------ adaptive limits

cdef int64_t *_bucket_values = NULL   # each histogram bucket's representative value
cdef Py_ssize_t _nbuckets = 0


cdef int _load_bucket_values() except -1:
    global _bucket_values, _nbuckets
    cdef Py_ssize_t i
    if _bucket_values != NULL:
        return 0
    from fastpath import _histogram_shared
    values = [int(v) for v in _histogram_shared.bucket_values()]
    _bucket_values = <int64_t *>PyMem_Calloc(len(values), sizeof(int64_t))
    if _bucket_values == NULL:
        raise MemoryError()
    for i in range(len(values)):
        _bucket_values[i] = values[i]
    _nbuckets = len(values)
    return 0


cdef int64_t _percentile_c(LatencyHistogram h, double q) noexcept:
    """LatencyHistogram.percentile(q) without numpy (same ranks, same buckets):
    a walk over the counts, a few microseconds, once per window."""
    cdef uint64_t count = h._count, cumulative = 0
    cdef double rank = ceil(count * (q / 100.0))
    cdef Py_ssize_t i
    cdef int64_t value
    if count == 0:
        return -1
    if rank <= 1:
        return h._min_ns
    if rank >= count:
        return h._max_ns
    for i in range(_nbuckets):
        cumulative += h._counts[i]
        if cumulative >= rank:
            value = _bucket_values[i]
            return min(max(value, h._min_ns), h._max_ns)
    return h._max_ns


cdef class _Adaptive:
    """One rule's adaptive limit: this window's latencies and the limit so far."""

    def __init__(self, settings, double percentile, double headroom, int64_t min_ms,
                 int64_t cap_ms, int64_t window_calls, int64_t window_ns, clock):
        _load_bucket_values()
        self.settings = settings
        self.percentile = percentile
        self.headroom = headroom
        self.min_ms = min_ms
        self.cap_ms = cap_ms
        self.window_calls = window_calls
        self.window_ns = window_ns
        self.clock = clock
        self.current = LatencyHistogram()
        self.previous = LatencyHistogram()
        self.limit_ms = cap_ms
        self.window_start_ns = _clock_ns(clock)

    cdef int record_c(self, int64_t elapsed_ns, bint timed_out, int64_t stop_ns) except -1:
        # Inside a critical section on self (_fp_atomic.h): _finish_window swaps
        # current and previous in another thread.
        cdef fp_cs cs
        fp_cs_begin(&cs, self)
        try:
            return self._record_locked(elapsed_ns, timed_out, stop_ns)
        finally:
            fp_cs_end(&cs)

    cdef int _record_locked(self, int64_t elapsed_ns, bint timed_out, int64_t stop_ns) except -1:
        self.current.record_c(elapsed_ns)
        self.n += 1
        self.timeouts += timed_out
        return self._ended_locked(stop_ns)

    cdef int _ended_locked(self, int64_t stop_ns) except -1:
        # Has the current window ended?  stop_ns: now (fp_now_ns); the limit's
        # own clock is read instead if it has one.
        if self.window_calls:
            return self.n >= self.window_calls
        if self.clock is not None:
            stop_ns = _clock_ns(self.clock)
        return stop_ns - self.window_start_ns >= self.window_ns

    def _observe(self, int64_t elapsed_ns, bint timed_out=False):
        """Record one latency as a call does; True when it ended the window."""
        return bool(self.record_c(elapsed_ns, timed_out, fp_now_ns()))

    def _finish_window(self, bint if_due=False):
        """Rotate the pair of histograms and compute the next limit: None when it
        is unchanged, else (old_ms, new_ms, pN_ns or None, calls, timeouts).
        if_due (the pipeline's call, after record_c said the window ended):
        only if it still has ended -- another thread may have finished it in
        between, and a second finish would close the next window early."""
        cdef fp_cs cs
        fp_cs_begin(&cs, self)
        try:
            if if_due and not self._ended_locked(fp_now_ns()):
                return None
            return self._finish_window_locked()
        finally:
            fp_cs_end(&cs)

    cdef object _finish_window_locked(self):
        cdef int64_t n = self.n, timeouts = self.timeouts, p_ns = -1, new_ms, old_ms
        cdef LatencyHistogram done = self.current
        if n == 0:
            return None
        self.current = self.previous
        self.previous = done
        self.current.reset_c()
        self.n = self.timeouts = 0
        self.window_start_ns = _clock_ns(self.clock)
        self.windows += 1
        if timeouts * 100.0 > n * (100.0 - self.percentile):
            # More calls hit the deadline than the percentile leaves out: the
            # pN is censored (only known to be >= the limit), so go back to the
            # cap and measure again in the next window.
            new_ms = self.cap_ms
        else:
            p_ns = _percentile_c(done, self.percentile)
            new_ms = <int64_t>ceil(p_ns * self.headroom / 1e6)
            new_ms = min(max(new_ms, self.min_ms), self.cap_ms)
        old_ms = self.limit_ms
        if new_ms == old_ms:
            return None
        self.limit_ms = new_ms
        self.changes += 1
        return (old_ms, new_ms, None if p_ns < 0 else p_ns, n, timeouts)

    def _snapshot(self):
        """(limit_ms, windows, changes, calls in this window, previous window's histogram)."""
        cdef fp_cs cs
        fp_cs_begin(&cs, self)
        try:
            return (self.limit_ms, self.windows, self.changes, self.n, self.previous)
        finally:
            fp_cs_end(&cs)


# ------------------------------------------------------------------ a registered rule

cdef inline int _rule_ended(_EnforcerCore core, _RuleState rule, ExecutionBudget budget,
                            int64_t token, int error) except -1:
    """After an executed call: its histogram, then (registered rules) the
    breaker's window and the adaptive limit's."""
    rule.histogram.record_c(budget._stop_ns - budget._start_ns)
    if rule.breaker is not None or rule.adaptive is not None:
        _rule_feed(core, rule, budget, token, error)
    return 0


cdef int _rule_feed(_EnforcerCore core, _RuleState rule, ExecutionBudget budget,
                    int64_t token, int error) except -1:
    """error: 1 fn raised an Exception, -1 a BaseException (no outcome for the
    breaker: an interrupt or cancellation from outside), 0 none."""
    if rule.breaker is not None:
        _breaker_record(rule.breaker, token, budget, error, budget._constraints._max_exec_ns)
    if rule.adaptive is not None and rule.adaptive.record_c(
            budget._stop_ns - budget._start_ns, (budget._violation_mask >> FP_TIMEOUT) & 1,
            budget._stop_ns):
        core._window_end(rule)
    return 0


cdef object _rule_refused(_RuleState rule, object rule_id, ExecutionConstraints c):
    """A call the breaker refused: ResourceExhausted (fail closed) or the fallback."""
    fp_add(&rule.refused, 1)
    if c._fail_closed:
        raise ResourceExhausted(
            f"rule {rule_id!r} refused without running fn: its circuit breaker is "
            f"{_STATE_NAMES[rule.breaker.state]}")
    return rule.fallback


cdef inline Py_ssize_t _rule_nargs(size_t nargsf) except -1:
    # The positional count of a vectorcall (PY_VECTORCALL_ARGUMENTS_OFFSET masked
    # off); a Rule's first positional argument is fn.
    cdef Py_ssize_t nargs = <Py_ssize_t>(nargsf & ~(<size_t>1 << (8 * sizeof(size_t) - 1)))
    if nargs < 1:
        raise TypeError("a Rule is called as rule(fn, /, *args, **kwargs)")
    return nargs


cdef object _rule_vectorcall(object self, PyObject **args, size_t nargsf, PyObject *kwnames):
    cdef Rule rule = <Rule>self
    cdef Py_ssize_t nargs = _rule_nargs(nargsf)
    return rule.enforcer._pipeline(rule._state, rule._state.rule_id, <object>args[0], args + 1,
                                   nargs - 1, kwnames)


cdef object _rule_traced_vectorcall(object self, PyObject **args, size_t nargsf,
                                    PyObject *kwnames):
    # rule(...) while its calls are traced (Rule._trace_calls): through the
    # enforcer's _execute_as, looked up per call (fastpath.otel wraps it).
    cdef Rule rule = <Rule>self
    cdef Py_ssize_t nargs = _rule_nargs(nargsf)
    cdef Py_ssize_t i
    cdef tuple names = () if kwnames == NULL else <tuple><object>kwnames
    positional = [<object>args[i] for i in range(1, nargs)]
    keywords = {names[i]: <object>args[nargs + i] for i in range(len(names))}
    return rule.enforcer._execute_as(rule._state, rule._state.rule_id, <object>args[0],
                                     *positional, **keywords)


cdef class Rule:
    """Rule(enforcer, state)
--

A registered rule: ``enforcer.rule(rule_id, rule_type, ...)``.

    ``rule(fn, /, *args, **kwargs)`` runs ``fn`` through the enforcer's
    pipeline with this rule's constraints, breaker, adaptive limit and
    counters; ``await rule.run_async(fn, ...)`` does the same for coroutines.
    """

    def __cinit__(self):
        self._vectorcall = <void *>_rule_vectorcall

    def __init__(self, _EnforcerCore enforcer, _RuleState state):
        self.enforcer = enforcer
        self._state = state

    def __call__(self, fn, /, *args, **kwargs):
        # Only an explicit rule.__call__(...) gets here, or rule(...) while its
        # calls are traced: rule(...) itself goes through _rule_vectorcall
        # (fp_enable_vectorcall below replaces the slot).
        return self.enforcer._execute_as(self._state, self._state.rule_id, fn, *args, **kwargs)

    def _trace_calls(self, bint on):
        """on: rule(...) goes through the enforcer's ``_execute_as`` (a Python
        lookup: fastpath.otel's spans="all" wraps it) instead of straight into
        the pipeline; off: straight in again."""
        self._vectorcall = <void *>(_rule_traced_vectorcall if on else _rule_vectorcall)

    @property
    def rule_id(self):
        """The rule's id (audit events, metrics)."""
        return self._state.rule_id

    @property
    def rule_type(self):
        """The RuleType whose profile and fallback it starts from."""
        return self._state.key

    @property
    def constraints(self):
        """The effective ExecutionConstraints (an adaptive limit changes max_exec_ms)."""
        return self._state.constraints

    @property
    def configured_constraints(self):
        """The constraints it was registered with (the adaptive limit's cap)."""
        return self._state.configured

    @property
    def fallback(self):
        return self._state.fallback

    @property
    def breaker(self):
        """Its CircuitBreaker, or None."""
        return self._state.breaker

    @property
    def adaptive(self):
        """Its AdaptiveLimit, or None."""
        return None if self._state.adaptive is None else self._state.adaptive.settings

    @property
    def quota(self):
        """Its Quota (admission per flow key before each call), or None."""
        return self._state.quota

    def run_for(self, key, fn, /, *args, **kwargs):
        """``rule(fn, ...)`` charged to the flow ``key`` (as inside
        ``with enforcer.flow(key):``)."""
        token = _flow.current_flow.set(key)
        try:
            return self.enforcer._execute_as(self._state, self._state.rule_id, fn, *args,
                                             **kwargs)
        finally:
            _flow.current_flow.reset(token)

    def run_async(self, fn, /, *args, **kwargs):
        """``await rule.run_async(fn, ...)``: the pipeline for coroutines."""
        return self.enforcer._run_async_state(self._state, self._state.rule_id, fn, args,
                                              kwargs)

    def metrics(self, *, json=False):
        """This rule's entry of ``enforcer.rule_metrics()``."""
        return self.enforcer._rule_entry(self._state, json)

    def _observe(self, int64_t elapsed_ns, bint timed_out=False):
        """Feed one recorded latency to the adaptive limit as a call would
        (tests and replays); returns the effective max_exec_ms."""
        if self._state.adaptive is None:
            raise InvalidConfiguration(f"rule {self._state.rule_id!r} has no adaptive limit")
        if self._state.adaptive.record_c(elapsed_ns, timed_out, fp_now_ns()):
            self.enforcer._window_end(self._state)
        return self._state.constraints.max_exec_ms

    def __repr__(self):
        return (f"<Rule {self._state.rule_id!r} {self._state.key!r} "
                f"max_exec_ms={self._state.constraints.max_exec_ms}>")


def _vectorcall_offset_probe():
    cdef Rule probe = Rule.__new__(Rule)
    return <Py_ssize_t>(<char *>&probe._vectorcall - <char *><PyObject *>probe)


fp_enable_vectorcall(Rule, _vectorcall_offset_probe())


def _measure_rule_extras(Py_ssize_t n):
    """(closed breaker, adaptive limit): ns per call that each adds to a rule's
    per-call path, measured in C loops over exactly what _pipeline runs for
    them (a closed breaker's admit_c + record_c on a default-sized count
    window; an adaptive limit's record_c with 1000-call windows, the
    recomputation at each window's end included)."""
    cdef _Breaker breaker = _Breaker.__new__(_Breaker)
    cdef _Adaptive adaptive = _Adaptive(None, 99.0, 1.5, 1, 1000, 1000, 0, None)
    cdef ExecutionBudget budget = ExecutionConstraints(1000).create_budget_c()
    cdef Py_ssize_t i
    cdef int64_t t0, t1, t2, token
    breaker._setup(0.5, 1.0, -1, 20, 100, 0, 30000000000, 1.0, -1, 5, -1, 14, True, None)
    budget._stop_ns = budget._start_ns + 1000
    t0 = fp_now_ns()
    for i in range(n):
        token = _breaker_admit(breaker)
        _breaker_record(breaker, token, budget, 0, 1000000000)
    t1 = fp_now_ns()
    for i in range(n):
        if adaptive.record_c(1000 + (i & 1023), 0, 0):
            adaptive._finish_window()
    t2 = fp_now_ns()
    return (t1 - t0) / <double>n, (t2 - t1) / <double>n
