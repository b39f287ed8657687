"""Fleet-wide quotas on Redis: ``RedisQuotaStore`` (``pip install fastpath[redis]``).

The bucket of each flow key lives in Redis (a hash, refilled by Redis's own
clock).  A process does not ask Redis about every call: one atomic Lua script
(``SCRIPT LOAD`` once, then ``EVALSHA``) grants it a *lease* -- a slice of the
bucket, taken out of it at once -- and the process spends the lease in its
compiled lease table (``fastpath._quota``), so a call normally makes no
network round trip.  The next lease is requested when the current one is spent
or older than ``lease_ttl_ms``; what is left of the old one (or the debt of
CPU and wall time measured past it) goes back to the bucket in the same script
call.  The lease size follows the key's rate: about a quarter of
``lease_ttl_ms`` worth of what the key spent in this process, between one
call and ``lease`` x the bucket's capacity, so a slow key does not strand
capacity in one process.

Worst case over-admission (README "Quotas"): capacity already leased is spent
after it left the bucket, so over any interval the fleet admits at most what
one exact bucket would, plus ``P x L`` (``P`` processes holding leases of the
key, ``L = max(1, floor(lease x calls x burst))`` calls).  CPU and wall time
are debited after the calls: each call in flight may overrun by its own
duration, as with the local store.

Redis unreachable, slow or restarted: the script call has ``timeout_ms`` of
socket time (this store talks through its own connection pool, built from the
client's settings with that timeout and without redis-py's retries), and a
failed call applies ``on_unavailable`` -- ``"fail_closed"`` refuses the calls
that need a lease (the rule's own failure policy then raises
``ResourceExhausted`` or returns the fallback), ``"fail_open"`` admits them --
for ``retry_ms`` without touching Redis, then one call tries again.  A live
lease is still spent while Redis is away.  The first error is logged on the
``fastpath.redis`` logger; later ones are counted in ``stats()``.  After a
restart (``NOSCRIPT``) the script is sent again with ``EVAL``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import numbers
import threading
import time
from typing import Any, Dict, Optional, Tuple

import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError
from redis.retry import Retry

from ._quota_config import RESOURCES, check_key
from .errors import InvalidConfiguration

__all__ = ["RedisQuotaStore", "GRANT_SCRIPT"]

_logger = logging.getLogger("fastpath.redis")

#: Grant a lease: refill the key's bucket by Redis's clock, take back what a
#: process returns (a debt when negative), then -- only if every limited
#: resource is above zero (calls: one whole call) -- take out the lease.
#: KEYS[1]: the bucket.  ARGV: rate per us x3, capacity x3, wanted x3, returned x3.
#: Returns the grants x3 and the levels left x3 (strings: Lua numbers would be
#: truncated to integers on the way out).
GRANT_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local h = redis.call('HMGET', KEYS[1], 'l1', 'l2', 'l3', 'ts')
local dt = now - (tonumber(h[4]) or now)
if dt < 0 then dt = 0 end
local level = {}
local ok = true
for i = 1, 3 do
  local cap = tonumber(ARGV[3 + i])
  if cap > 0 then
    local l = math.min(cap, (tonumber(h[i]) or cap) + tonumber(ARGV[i]) * dt)
    l = math.min(cap, l + tonumber(ARGV[9 + i]))
    level[i] = l
    if (i == 1 and l < 1) or (i > 1 and l <= 0) then ok = false end
  else
    level[i] = 0
  end
end
local out = {}
local ttl = 1000
for i = 1, 3 do
  local cap = tonumber(ARGV[3 + i])
  local grant = 0
  if ok and cap > 0 then
    grant = math.min(tonumber(ARGV[6 + i]), level[i])
    if i == 1 then grant = math.floor(grant) end
    if grant < 0 then grant = 0 end
    level[i] = level[i] - grant
  end
  local rate = tonumber(ARGV[i])
  if cap > 0 and rate > 0 then
    ttl = math.max(ttl, math.ceil((cap - level[i]) / rate / 1000) + 1000)
  end
  out[i] = string.format('%.17g', grant)
  out[3 + i] = string.format('%.17g', level[i])
end
redis.call('HSET', KEYS[1], 'l1', out[4], 'l2', out[5], 'l3', out[6], 'ts',
           string.format('%d', now))
redis.call('PEXPIRE', KEYS[1], ttl)
return out
"""

_POLICIES = ("fail_closed", "fail_open")
# A lease covers about this fraction of lease_ttl_ms at the key's measured rate.
_LEASE_TARGET_FRACTION = 0.25
# The smallest CPU / wall lease, as a fraction of the largest.
_MIN_TIME_LEASE = 1 / 64


def _number(name: str, value: Any, lo: float, hi: float, lo_open: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidConfiguration(f"RedisQuotaStore {name} must be a number, got {value!r}")
    number = float(value)
    if math.isnan(number) or number > hi or number < lo or (lo_open and number == lo):
        bound = f"({lo:g}, {hi:g}]" if lo_open else f"[{lo:g}, {hi:g}]"
        raise InvalidConfiguration(f"RedisQuotaStore {name} must be within {bound}, got {value!r}")
    return number


def _bounded_client(client: Any, timeout_s: float, is_async: bool) -> Any:
    """A client on its own pool: the caller's connection settings, socket and
    connect timeouts of at most ``timeout_s``, and no redis-py retries (the
    store applies its own policy; a retry would multiply the wait)."""
    pool = client.connection_pool
    kwargs = dict(pool.connection_kwargs)
    for name in ("socket_timeout", "socket_connect_timeout"):
        current = kwargs.get(name)
        kwargs[name] = timeout_s if current is None else min(float(current), timeout_s)
    kwargs["retry"] = Retry(NoBackoff(), 0)
    kwargs["retry_on_timeout"] = False
    kwargs.pop("retry_on_error", None)
    if is_async:
        new_pool = redis.asyncio.ConnectionPool(connection_class=pool.connection_class, **kwargs)
        return redis.asyncio.Redis(connection_pool=new_pool)
    new_pool = redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)
    return redis.Redis(connection_pool=new_pool)


class _KeyState:
    __slots__ = ("lock", "quiet_until_ns", "fetching")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.quiet_until_ns = 0       # refused by Redis: no round trip before this
        self.fetching: Optional["asyncio.Future[None]"] = None


class RedisQuotaStore:
    """A fleet-wide quota store on Redis (see the module docstring).

    ``client``: a ``redis.Redis`` or ``redis.asyncio.Redis`` (its connection
    settings are copied into the store's own pool).  ``prefix``: the names of
    the buckets (``prefix + "quota:" + key``); give each quota its own.
    ``lease``: the largest lease, as a fraction of the bucket's capacity (0, 1].
    ``timeout_ms``: socket time allowed for one script call.
    ``on_unavailable``: ``"fail_closed"`` or ``"fail_open"`` while Redis cannot
    answer.  ``lease_ttl_ms``: a lease older than this goes back at the next
    call.  ``retry_ms``: after a failure, how long calls apply the policy
    without trying Redis.

    With a ``redis.asyncio`` client, leases are fetched by async rules
    (``execute_async``); ``remaining``, ``usage``, ``reset`` and ``close`` return
    awaitables.  One store serves one Quota.
    """

    def __init__(self, client: Any, *, prefix: str = "fastpath:", lease: float = 0.05,
                 timeout_ms: float = 50, on_unavailable: str = "fail_closed",
                 lease_ttl_ms: float = 1000, retry_ms: float = 250) -> None:
        if isinstance(client, redis.asyncio.Redis):
            self.is_async = True
        elif isinstance(client, redis.Redis):
            self.is_async = False
        else:
            raise InvalidConfiguration(
                f"RedisQuotaStore client must be a redis.Redis or redis.asyncio.Redis, "
                f"got {client!r}"
            )
        if not isinstance(prefix, str):
            raise InvalidConfiguration(f"RedisQuotaStore prefix must be a str, got {prefix!r}")
        if on_unavailable not in _POLICIES:
            raise InvalidConfiguration(
                f"RedisQuotaStore on_unavailable must be 'fail_closed' or 'fail_open', "
                f"got {on_unavailable!r}"
            )
        self.prefix = prefix
        self.lease = _number("lease", lease, 0.0, 1.0)
        self.timeout_ms = _number("timeout_ms", timeout_ms, 0.0, 60000.0)
        self.lease_ttl_ms = _number("lease_ttl_ms", lease_ttl_ms, 0.0, 3600000.0)
        self.retry_ms = _number("retry_ms", retry_ms, 0.0, 3600000.0, lo_open=False)
        self.on_unavailable = on_unavailable
        self._fail_open = on_unavailable == "fail_open"
        self._timeout_s = self.timeout_ms / 1000
        self._client = _bounded_client(client, self._timeout_s, self.is_async)
        self._sha: Optional[str] = None
        self._quota: Any = None
        self._leases: Any = None
        self._args: Tuple[str, ...] = ()
        self._max_lease = [0.0, 0.0, 0.0]
        self._mask = 0
        self._keys: Dict[Any, _KeyState] = {}
        self._keys_lock = threading.Lock()
        self._down_until_ns = 0
        self._stats_lock = threading.Lock()
        self._stats = {"round_trips": 0, "errors": 0, "refused": 0, "unavailable_admitted": 0,
                       "unavailable_refused": 0, "script_reloads": 0, "recoveries": 0}
        self._logged_error = False
        self._logged_async = False

    # -- binding -------------------------------------------------------------------
    def _bind(self, quota: Any) -> None:
        if self._quota is not None and self._quota is not quota:
            raise InvalidConfiguration(
                f"a RedisQuotaStore serves one Quota; {self!r} already serves {self._quota!r}"
            )
        rates, caps, mask = quota._spec()
        self._quota = quota
        self._mask = mask
        self._caps = caps
        self._leases = quota._new_lease_table()
        # Rates per microsecond (Redis's TIME), capacities, of the limited resources.
        self._args = tuple(repr(r * 1000.0) for r in rates) + tuple(repr(c) for c in caps)
        for i in range(3):
            largest = self.lease * caps[i]
            self._max_lease[i] = max(1.0, math.floor(largest)) if i == 0 else largest

    @property
    def max_lease(self) -> Dict[str, float]:
        """The largest lease of each limited resource (``L`` of the over-admission bound)."""
        return {name: self._max_lease[i] for i, name in enumerate(RESOURCES)
                if self._mask & (1 << i)}

    def _name(self, key: Any) -> str:
        if key is None:
            tag = "none"
        elif isinstance(key, str):
            tag = "s:" + key
        elif isinstance(key, int) and not isinstance(key, bool):
            tag = "i:" + str(key)
        else:
            tag = "r:" + repr(key)
        return f"{self.prefix}quota:{tag}"

    def _state(self, key: Any) -> _KeyState:
        state = self._keys.get(key)
        if state is None:
            with self._keys_lock:
                state = self._keys.setdefault(key, _KeyState())
        return state

    def _count(self, name: str, n: int = 1) -> None:
        with self._stats_lock:
            self._stats[name] += n

    def stats(self) -> Dict[str, Any]:
        """Counters: script round trips, Redis errors, calls Redis refused, calls
        admitted / refused by ``on_unavailable``, script reloads, recoveries; and
        whether the store is treating Redis as unavailable now."""
        with self._stats_lock:
            out: Dict[str, Any] = dict(self._stats)
        out["unavailable"] = time.monotonic_ns() < self._down_until_ns
        return out

    # -- sizing ------------------------------------------------------------------------
    def _wanted(self, rates_per_s: Tuple[float, ...]) -> Tuple[float, float, float]:
        horizon_s = self.lease_ttl_ms / 1000 * _LEASE_TARGET_FRACTION
        wanted = [0.0, 0.0, 0.0]
        for i in range(3):
            if not self._mask & (1 << i):
                continue
            largest = self._max_lease[i]
            smallest = 1.0 if i == 0 else largest * _MIN_TIME_LEASE
            size = rates_per_s[i] * horizon_s
            if i == 0:
                size = math.ceil(size)
            wanted[i] = min(largest, max(smallest, size))
        return wanted[0], wanted[1], wanted[2]

    def _script_args(self, wanted: Tuple[float, ...], back: Tuple[float, ...]) -> Tuple[str, ...]:
        return self._args + tuple(repr(float(w)) for w in wanted) + tuple(
            repr(float(b)) if self._mask & (1 << i) else "0" for i, b in enumerate(back))

    def _parse(self, reply: Any) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
        values = tuple(float(v) for v in reply)
        return values[:3], values[3:]

    # -- failures ------------------------------------------------------------------------
    def _failed(self, exc: BaseException) -> None:
        self._down_until_ns = time.monotonic_ns() + int(self.retry_ms * 1e6)
        self._count("errors")
        if not self._logged_error:
            self._logged_error = True
            _logger.warning(
                "Redis unavailable for quota store %s (%s: %s): applying on_unavailable=%r; "
                "later errors are counted in RedisQuotaStore.stats(), not logged",
                self.prefix, type(exc).__name__, exc, self.on_unavailable)

    def _recovered(self) -> None:
        if self._down_until_ns:
            self._down_until_ns = 0
            self._count("recoveries")

    def _unavailable(self) -> bool:
        if self._fail_open:
            self._count("unavailable_admitted")
            return True
        self._count("unavailable_refused")
        return False

    def _settle(self, key: Any, state: _KeyState, grants: Tuple[float, ...],
                levels: Tuple[float, ...]) -> bool:
        self._recovered()
        now_ns = time.monotonic_ns()        # the lease lives from when it arrived
        self._leases.give(key, grants, now_ns, now_ns + int(self.lease_ttl_ms * 1e6))
        if self._leases.spend(key, now_ns):
            return True
        # Refused by the fleet's bucket: stay quiet until it has refilled above zero.
        wait_ns = 0.0
        for i in range(3):
            if self._mask & (1 << i):
                need = (1.0 if i == 0 else 1e-9) - levels[i]
                rate = self._quota._spec()[0][i]
                if need > 0 and rate > 0:
                    wait_ns = max(wait_ns, need / rate)
        state.quiet_until_ns = now_ns + int(min(wait_ns, self.lease_ttl_ms * 1e6))
        self._count("refused")
        return False

    # -- the slow path of admission (the per-call path is the lease table) -------------
    def _admit(self, key: Any) -> bool:
        now = time.monotonic_ns()
        state = self._state(key)
        if now < state.quiet_until_ns:
            self._count("refused")
            return False
        if self.is_async:
            if not self._logged_async:
                self._logged_async = True
                _logger.warning("RedisQuotaStore %s has a redis.asyncio client: a synchronous "
                                "call cannot fetch a lease; applying on_unavailable=%r",
                                self.prefix, self.on_unavailable)
            return self._unavailable()
        if now < self._down_until_ns:
            return self._unavailable()
        with state.lock:
            now = time.monotonic_ns()
            if self._leases.spend(key, now):
                return True          # another thread refilled it meanwhile
            back, rates = self._leases.take(key, now)
            try:
                reply = self._run_script(self._name(key), self._script_args(self._wanted(rates),
                                                                            back))
            except (RedisError, OSError) as exc:
                self._leases.give(key, back, 0, 0)     # keep what was left (or owed)
                self._failed(exc)
                return self._unavailable()
            grants, levels = self._parse(reply)
            return self._settle(key, state, grants, levels)

    def _run_script(self, name: str, args: Tuple[str, ...]) -> Any:
        self._count("round_trips")
        if self._sha is None:
            self._sha = self._client.script_load(GRANT_SCRIPT)
        try:
            return self._client.evalsha(self._sha, 1, name, *args)
        except NoScriptError:
            # Redis restarted (or SCRIPT FLUSH): EVAL sends it again and caches it.
            self._count("script_reloads")
            return self._client.eval(GRANT_SCRIPT, 1, name, *args)

    async def _admit_async(self, key: Any) -> bool:
        now = time.monotonic_ns()
        state = self._state(key)
        if now < state.quiet_until_ns:
            self._count("refused")
            return False
        if now < self._down_until_ns:
            return self._unavailable()
        while state.fetching is not None:        # one fetch per key at a time
            await asyncio.shield(state.fetching)
            if self._leases.spend(key, time.monotonic_ns()):
                return True
        fetching = state.fetching = asyncio.get_running_loop().create_future()
        try:
            now = time.monotonic_ns()
            back, rates = self._leases.take(key, now)
            try:
                reply = await asyncio.wait_for(
                    self._run_script_async(self._name(key),
                                           self._script_args(self._wanted(rates), back)),
                    self._timeout_s)
            except (RedisError, OSError, asyncio.TimeoutError) as exc:
                self._leases.give(key, back, 0, 0)
                self._failed(exc)
                return self._unavailable()
            grants, levels = self._parse(reply)
            return self._settle(key, state, grants, levels)
        finally:
            state.fetching = None
            fetching.set_result(None)

    async def _run_script_async(self, name: str, args: Tuple[str, ...]) -> Any:
        self._count("round_trips")
        if self._sha is None:
            self._sha = await self._client.script_load(GRANT_SCRIPT)
        try:
            return await self._client.evalsha(self._sha, 1, name, *args)
        except NoScriptError:
            self._count("script_reloads")
            return await self._client.eval(GRANT_SCRIPT, 1, name, *args)

    # -- dashboards ------------------------------------------------------------------------
    def _levels(self, key: Any, reply: Any) -> Dict[str, float]:
        _, levels = self._parse(reply)
        left = self._leases.left(key)
        return {name: levels[i] + left[i] for i, name in enumerate(RESOURCES)
                if self._mask & (1 << i)}

    def _read_args(self) -> Tuple[str, ...]:
        return self._script_args((0.0, 0.0, 0.0), (0.0, 0.0, 0.0))

    def remaining(self, key: Any) -> Any:
        """What is left for ``key``: the fleet bucket now plus this process's
        unused lease, per limited resource (other processes' leases are not
        included).  Raises the client's error if Redis cannot answer."""
        key = check_key(key)
        self._check_bound()
        if self.is_async:
            return self._aremaining(key)
        return self._levels(key, self._run_script(self._name(key), self._read_args()))

    async def _aremaining(self, key: Any) -> Dict[str, float]:
        reply = await self._run_script_async(self._name(key), self._read_args())
        return self._levels(key, reply)

    def usage(self, key: Any) -> Any:
        """How much of ``key``'s buckets is used (capacity - ``remaining``)."""
        if self.is_async:
            return self._ausage(key)
        return self._used(self.remaining(key))

    async def _ausage(self, key: Any) -> Dict[str, float]:
        return self._used(await self.remaining(key))

    def _used(self, left: Dict[str, float]) -> Dict[str, float]:
        return {name: self._caps[RESOURCES.index(name)] - value for name, value in left.items()}

    def reset(self, key: Any) -> Any:
        """Forget ``key`` fleet-wide (its bucket is full again) and drop this
        process's lease of it (other processes keep theirs until they expire)."""
        key = check_key(key)
        self._check_bound()
        self._leases.drop(key)
        self._state(key).quiet_until_ns = 0
        if self.is_async:
            return self._client.delete(self._name(key))
        self._client.delete(self._name(key))
        return None

    def close(self) -> Any:
        """Give every unused lease back to Redis (best effort) and close the pool."""
        if self.is_async:
            return self._aclose()
        for key in self._leases.keys() if self._leases is not None else ():
            back, _ = self._leases.take(key, time.monotonic_ns())
            try:
                self._run_script(self._name(key), self._script_args((0.0, 0.0, 0.0), back))
            except (RedisError, OSError) as exc:
                self._failed(exc)
                break
        # The store built this pool (redis-py leaves a given pool open on close()).
        self._client.connection_pool.disconnect()
        self._client.close()
        return None

    async def _aclose(self) -> None:
        for key in self._leases.keys() if self._leases is not None else ():
            back, _ = self._leases.take(key, time.monotonic_ns())
            try:
                await asyncio.wait_for(self._run_script_async(
                    self._name(key), self._script_args((0.0, 0.0, 0.0), back)), self._timeout_s)
            except (RedisError, OSError, asyncio.TimeoutError) as exc:
                self._failed(exc)
                break
        await self._client.connection_pool.disconnect()
        await self._client.aclose()

    def _check_bound(self) -> None:
        if self._quota is None:
            raise InvalidConfiguration(f"{self!r} is not the store of any Quota yet")

    def __repr__(self) -> str:
        kind = "asyncio" if self.is_async else "sync"
        return (f"<RedisQuotaStore prefix={self.prefix!r} {kind} lease={self.lease:g} "
                f"timeout_ms={self.timeout_ms:g} on_unavailable={self.on_unavailable!r}>")
