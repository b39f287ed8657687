# The C-level API of fastpath's compiled core.
#
# Another Cython module can ``from fastpath._budget cimport ExecutionBudget``
# and check a deadline with ``budget.is_timeout_c()`` -- a C call through the
# vtable, no Python call, no allocation.  Field layout is part of this API.

from cpython.object cimport PyObject
from libc.stdint cimport int64_t, uint32_t, uint64_t

from fastpath._histogram cimport LatencyHistogram
from fastpath._quota cimport Quota


cdef class ExecutionConstraints:
    cdef int64_t _max_exec_ms          # wall-clock budget, ms (1 .. 2**53)
    cdef int64_t _max_exec_ns          # the same in ns, saturated at INT64_MAX
    cdef int _cpu_shares               # 0..100, or -1 when no CPU limit is set
    cdef int64_t _cpu_allowance_ns     # max_exec_ms * cpu_shares / 100 ms in ns; -1: none
    cdef int64_t _memory_limit         # bytes, or -1 when no memory limit is set
    cdef double _sampling_rate         # probability that should_sample() is True
    cdef uint64_t _sample_threshold    # a draw below this samples in (0 < rate < 1)
    cdef int _sample_mode              # 0: never, 1: always, 2: draw
    cdef bint _fail_closed             # deny (raise / interrupt) on a violation
    cdef int64_t _max_retries          # retries after the first call; -1: None
    cdef int64_t _retry_backoff_ms     # delay between retries; -1: None

    # Store validated values (a tuple from fastpath._config.normalize).
    cdef _assign(self, tuple values)
    # The fields as Python values, in declaration order.
    cdef tuple _values(self)
    # One xorshift64* draw on this thread's generator; never fails.
    cdef bint should_sample_c(self) noexcept
    # A started budget (clock read now), built without going through __init__.
    cdef ExecutionBudget create_budget_c(self)


cdef class ExecutionStats:
    cdef readonly int64_t elapsed_ns           # wall time of the budget (frozen when enforce returns)
    cdef readonly int64_t memory_used_bytes    # what the memory limit is checked against
    cdef readonly int64_t memory_allocated_bytes  # gross bytes the calls allocated
    cdef readonly int64_t memory_peak_bytes    # highest live bytes the calls had allocated
    cdef readonly int64_t cpu_time_us          # CPU time; a wall-time bound unless cpu_time_measured
    cdef readonly bint cpu_time_measured       # True: cpu_time_us is a CPU-clock reading
    cdef readonly tuple violations             # ConstraintViolationType values, in recorded order

    cdef tuple _values(self)


cdef class ExecutionBudget:
    cdef ExecutionConstraints _constraints     # the limits this budget enforces
    cdef int64_t _start_ns                     # CLOCK_MONOTONIC at creation
    cdef int64_t _deadline_ns                  # _start_ns + max_exec_ns (saturated)
    cdef int64_t _stop_ns                      # when the last enforce() returned; 0: running
    cdef int64_t _memory_charged               # bytes added with charge_memory()
    cdef int64_t _mem_gross                    # bytes its calls allocated (freed or not) *
    cdef int64_t _mem_net                      # of those, bytes alive *
    cdef int64_t _mem_peak                     # highest live bytes of its blocks *
    cdef int64_t _mem_refused                  # live bytes + the allocation the cap refused; 0: none *
    cdef int64_t _cpu_measured_ns              # CPU time read from the thread's CPU clock
    cdef int64_t _cpu_bound_ns                 # wall time of calls too short to reach the CPU allowance
    cdef bint _cpu_unmeasured                  # some part of _cpu_* is a wall-time bound
    cdef int64_t _cpu_lo                       # lowest the CPU clock was when the running call began
    cdef int _violation_mask                   # bit (1 << kind) per recorded kind
    cdef int _violation_count                  # number of kinds recorded
    cdef unsigned char _violation_order[4]     # kinds in recorded order; no allocation
    cdef bint _preempt                         # may the watchdog interrupt calls of this budget
    cdef uint64_t _gen                         # generation of the enforce() running it; 0: none
    cdef readonly int _ending                  # how its last call ended (fastpath._outcome.Ending)
    cdef public object _scope                  # the open `with` / `async with` block, or None
    cdef uint32_t _mem_rec                     # its memory record (_fp_memhook.h); 0: none yet
    cdef uint64_t _cur_seq                     # when it last became an async current budget
    # * a snapshot taken when its last memory-limited call ended; the figures
    #   themselves live in the record (frees after the call still lower them)

    # True once the wall-clock deadline has passed; a clock read, nothing else.
    cdef bint is_timeout_c(self) noexcept
    # Nanoseconds left before the deadline, never below 0.
    cdef int64_t remaining_ns_c(self) noexcept
    # Record every violated limit; returns the number of kinds recorded so far.
    cdef int check_c(self) except -1
    # Record one violation kind (once per kind).
    cdef void record_c(self, int kind) noexcept
    # Run fn(*args, **kwargs) under the budget: the per-call path of enforce().
    # args/nargs/kwnames are a vectorcall argument vector (kwnames may be NULL).
    cdef object run_c(self, object fn, PyObject **args, Py_ssize_t nargs, PyObject *kwnames,
                      bint preempt)

    # -- private helpers of the per-call path --
    cdef int64_t _now_or_stop(self) noexcept
    cdef int64_t _memory_used(self) noexcept
    cdef void _record_mask(self, int mask) noexcept
    cdef int64_t _cpu_total_now(self) noexcept
    cdef ExecutionStats _stats(self)
    cdef object _violation(self, int mask, int ending, int64_t due)


cdef class _Breaker:
    # A CircuitBreaker's state machine and window (C integers, changed with
    # the GIL held -- inside a critical section on it on a free-threaded
    # build -- and never across fn; fastpath/breaker.py is the Python face).
    cdef int state                     # CLOSED 0, OPEN 1, HALF_OPEN 2, FORCED_OPEN 3, DISABLED 4
    cdef double failure_rate           # trip when failures >= failure_rate * calls
    cdef double slow_call_rate         # trip when slow calls >= slow_call_rate * calls
    cdef int64_t slow_call_ns          # a slow call takes longer; -1: the rule's deadline
    cdef int64_t minimum_calls         # calls in the window before it may trip
    cdef int64_t window_calls          # count window: ring length; 0 when time-based
    cdef int64_t bucket_ns             # time window: width of a bucket; 0 when count-based
    cdef int64_t nbuckets              # time window: buckets in the ring
    cdef unsigned char *ring           # count window: one outcome byte per call
    cdef int64_t *buckets              # time window: (epoch, calls, failures, slow) per bucket
    cdef int64_t ring_pos              # count window: next slot
    cdef int64_t last_epoch            # time window: newest bucket epoch
    cdef int64_t n                     # calls in the window
    cdef int64_t failures              # failed calls in the window
    cdef int64_t slow                  # slow calls in the window
    cdef int64_t open_base_ns          # open_ms
    cdef int64_t open_now_ns           # the current open duration (backed off)
    cdef int64_t max_open_ns           # cap of the backed-off duration; -1: none
    cdef double open_backoff           # multiplier at each re-opening from HALF_OPEN
    cdef int64_t open_until_ns         # OPEN: when probing may start
    cdef int64_t half_open_calls       # probes per HALF_OPEN period
    cdef int64_t max_half_open_ns      # HALF_OPEN longer than this re-opens; -1: no limit
    cdef int64_t half_open_since_ns    # when HALF_OPEN began
    cdef uint64_t half_open_gen        # which HALF_OPEN period a probe belongs to
    cdef int64_t probes_inflight       # probes running now
    cdef int64_t probes_done           # probes finished in this period
    cdef int64_t probes_failed         # of those, failures
    cdef int64_t probes_slow           # of those, slow calls
    cdef int kind_mask                 # violation kinds (1 << kind) that are failures
    cdef bint record_errors            # fn's own exceptions are failures
    cdef object clock                  # None: CLOCK_MONOTONIC; else a callable -> seconds
    cdef uint64_t refused              # calls refused
    cdef uint64_t transitions          # state changes
    cdef uint64_t recorded             # calls recorded in a window (all time)

    # 0: refuse the call; 1: run it (CLOSED / DISABLED); 2 + gen: run it as a probe.
    cdef int64_t admit_c(self) except -1
    cdef int64_t _admit_locked(self) except -1
    # Record the outcome of an admitted call (error: 1 fn raised an Exception,
    # -1 a BaseException that is no outcome, 0 none).
    cdef int record_c(self, int64_t token, ExecutionBudget budget, int error,
                      int64_t deadline_ns) except -1
    cdef int _record_locked(self, int64_t token, int outcome, int error) except -1
    cdef int64_t now_c(self) except? -1
    cdef void _clear(self) noexcept
    cdef int _closed_outcome(self, int outcome) except -1
    cdef int _probe_ended(self, uint64_t gen, int outcome) except -1
    cdef int _move(self, int new_state, int64_t now, str reason) except -1
    cdef tuple _snapshot_locked(self)


cdef class _Adaptive:
    # An adaptive limit's per-rule state: the current window's latencies and
    # the limit they gave (fastpath/adaptive.py is the Python face).
    cdef readonly object settings      # the AdaptiveLimit
    cdef double percentile             # pN of the window
    cdef double headroom               # the limit is pN * headroom
    cdef int64_t min_ms                # the limit never goes below
    cdef int64_t cap_ms                # ... nor above (max_ms or the configured limit)
    cdef int64_t window_calls          # a window is this many calls; 0: time-based
    cdef int64_t window_ns             # ... or this long; 0: count-based
    cdef object clock                  # None: CLOCK_MONOTONIC; else a callable -> seconds
    cdef LatencyHistogram current      # this window's latencies
    cdef LatencyHistogram previous     # the last finished window's (the rotating pair)
    cdef int64_t n                     # calls in this window
    cdef int64_t timeouts              # of those, timed out (their latency is censored)
    cdef int64_t window_start_ns       # time window: when it began
    cdef readonly int64_t limit_ms     # the effective max_exec_ms
    cdef readonly uint64_t windows     # windows finished
    cdef readonly uint64_t changes     # windows that changed the limit

    # 1 when this call ended the window (the caller then runs _finish_window).
    cdef int record_c(self, int64_t elapsed_ns, bint timed_out, int64_t stop_ns) except -1
    cdef int _record_locked(self, int64_t elapsed_ns, bint timed_out, int64_t stop_ns) except -1
    cdef int _ended_locked(self, int64_t stop_ns) except -1
    cdef object _finish_window_locked(self)


cdef class _RuleState:
    # One rule type's profile and counters inside an enforcer (exact: updated
    # with the GIL held, or atomically on a free-threaded build (fp_add), never
    # across the rule's own code).
    cdef readonly object key           # the RuleType member
    cdef readonly ExecutionConstraints constraints  # its profile
    cdef readonly object fallback      # returned when fail-open or sampled out
    cdef bint preempt                  # may calls of this rule type be interrupted
    cdef int64_t backoff_ns            # delay between transient retries
    cdef int64_t max_attempts          # 1 + max_retries
    cdef uint64_t calls                # every call
    cdef uint64_t executed             # calls that ran fn (not sampled out)
    cdef uint64_t sampled_out          # calls skipped by sampling
    cdef uint64_t fail_open            # violated calls that returned the fallback
    cdef uint64_t fail_closed          # violated calls that raised ConstraintViolation
    cdef uint64_t errors               # calls that ended with fn's own exception
    cdef uint64_t retries              # transient-error retries started
    cdef uint64_t violations[6]        # per ConstraintViolationType value
    cdef readonly LatencyHistogram histogram  # elapsed ns of every executed call
    # -- registered rules only (enforcer.rule()); None / 0 for a rule type's state
    cdef readonly object rule_id       # the rule's id
    cdef readonly ExecutionConstraints configured  # its constraints before adaptation
    cdef readonly _Breaker breaker     # its circuit breaker, or None
    cdef readonly _Adaptive adaptive   # its adaptive limit's state, or None
    cdef uint64_t refused              # calls the breaker refused (fn not run)
    cdef public Quota quota            # admission per flow key, or None (see _quota.pxd)
    cdef uint64_t quota_refused        # calls its quota refused (fn not run)


cdef class _EnforcerCore:
    cdef tuple _rules                  # four _RuleState, in RuleType order
    cdef tuple _transient              # exception classes retried as transient
    cdef object _sleep                 # time.sleep

    # The pipeline of one call: sampling, budget, run, retries, policy.
    cdef object _pipeline(self, _RuleState rule, object rule_id, object fn, PyObject **args,
                          Py_ssize_t nargs, PyObject *kwnames)
    cdef _RuleState _rule_for(self, object rule_type)


cdef class Rule:
    # A registered rule (enforcer.rule()): called through vectorcall, straight
    # into _EnforcerCore._pipeline with its own _RuleState.
    cdef void *_vectorcall             # the vectorcall entry (PEP 590)
    cdef readonly _EnforcerCore enforcer  # the enforcer it is registered with
    cdef readonly _RuleState _state    # its profile, breaker, adaptive state, counters
