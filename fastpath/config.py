"""``ConstraintEnforcer.from_config``: an enforcer from a TOML file or a mapping.

The file format is documented, with a complete example, in the README's
"Configuration" section.  Every unknown key and every bad value is an
``InvalidConfiguration`` naming the key path and the value
(``profiles.fast.max_exec_ms must be an int in 1..2**53, got 0``).

``python -m fastpath.config check FILE`` validates a file and prints the
effective profiles, the registered rules and the quota stores.

Each ``[rules.<id>]`` becomes ``enforcer.rule(id, ...)`` with its own
``CircuitBreaker``, ``AdaptiveLimit`` and ``Quota``; a quota's ``store`` names a
``[stores.<name>]`` table (``type = "local"`` or ``type = "redis"`` with a
``url``), and each quota gets its own store built from that table (a store
serves one quota; a Redis store's ``prefix`` gets ``<rule id>:`` appended, so
the quotas of two rules never share buckets).  Validation builds these objects
once with the default core, so a value their constructors refuse is refused
with its key path; nothing connects to Redis before a call needs a lease.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import math
import numbers
import os
import re
import sys
import tomllib
import urllib.parse
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from . import _config, _impl
from .adaptive import AdaptiveLimit
from .errors import InvalidConfiguration

__all__ = ["EnforcerConfig", "load_config", "main"]

Source = Union[Mapping[str, Any], str, "os.PathLike[str]"]

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_RULE_TYPES = ("fast", "semantic", "wasm_hook", "observational")
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

def _key(part: str) -> str:
    return part if _BARE_KEY.match(part) else json.dumps(part)


def _path(*parts: str) -> str:
    return ".".join(_key(p) for p in parts)


def _bad(path: str, what: str, value: Any) -> InvalidConfiguration:
    return InvalidConfiguration(f"{path} {what}, got {value!r}")


# ------------------------------------------------------------------ validators
# Each takes (key path, value) and returns the checked value or raises.

Check = Callable[[str, Any], Any]


def _int(lo: int, hi: Optional[int] = None) -> Check:
    def check(path: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(path, "must be an int", value)
        if hi is None and value < lo:
            raise _bad(path, f"must be an int >= {lo}", value)
        if hi is not None and not lo <= value <= hi:
            raise _bad(path, f"must be an int in {lo}..{hi}", value)
        return value
    return check


def _real(lo: float, hi: float = math.inf, *, lo_open: bool = False,
          allow_inf: bool = False) -> Check:
    def check(path: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise _bad(path, "must be a number", value)
        number = float(value)
        if math.isinf(number) and allow_inf and number > 0:
            return number
        if math.isnan(number) or number < lo or number > hi or (lo_open and number == lo):
            left = "(" if lo_open else "["
            right = "]" if not math.isinf(hi) else ")"
            top = "inf" if math.isinf(hi) else f"{hi:.1f}"
            raise _bad(path, f"must be within {left}{lo:.1f}, {top}{right}", value)
        return value if isinstance(value, int) else number   # TOML's 1000 stays 1000
    return check


def _bool(path: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _bad(path, "must be true or false", value)
    return value


def _str(path: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _bad(path, "must be a non-empty string", value)
    return value


def _choice(*options: str) -> Check:
    def check(path: str, value: Any) -> str:
        if value not in options:
            raise _bad(path, f"must be one of {', '.join(map(repr, options))}", value)
        return str(value)
    return check


def _list(item: Check, *, min_len: int = 0) -> Check:
    def check(path: str, value: Any) -> List[Any]:
        if not isinstance(value, list) or len(value) < min_len:
            what = "a list" if not min_len else f"a list of at least {min_len}"
            raise _bad(path, f"must be {what}", value)
        return [item(f"{path}[{i}]", v) for i, v in enumerate(value)]
    return check


def _table(path: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _bad(path, "must be a table", value)
    for key in value:
        if not isinstance(key, str):
            raise _bad(path, "must have string keys", key)
    return value


def _fields(path: str, value: Any, schema: Mapping[str, Check]) -> Dict[str, Any]:
    """Check a table against {key: validator}; unknown keys are errors."""
    table = _table(path, value)
    out = {}
    for key, item in table.items():
        where = _subpath(path, key) if path else _key(key)
        if key not in schema:
            raise InvalidConfiguration(f"{where}: unknown key (known: {', '.join(schema)})")
        out[key] = schema[key](where, item)
    return out


def _subpath(path: str, key: str) -> str:
    return f"{path}.{_key(key)}"


# ------------------------------------------------------------------ the schema

def _check_constraint_fields(path: str, table: Mapping[str, Any], base: Any) -> Dict[str, Any]:
    """ExecutionConstraints overrides: known fields, and values the class accepts
    (its own validation, with the key path in front of its message)."""
    for key in table:
        if key not in _config.FIELDS:
            raise InvalidConfiguration(
                f"{_subpath(path, key)}: unknown key (ExecutionConstraints fields: "
                f"{', '.join(_config.FIELDS)})")
    # TOML has no null: "none" removes an optional limit (cpu_shares = "none").
    table = {k: None if v == "none" and k in _OPTIONAL_FIELDS else v for k, v in table.items()}
    try:
        base.replace(**table)
    except InvalidConfiguration as exc:
        raise InvalidConfiguration(f"{path}.{exc}") from None
    return dict(table)


_OPTIONAL_FIELDS = ("cpu_shares", "memory_limit_bytes", "max_retries", "retry_backoff_ms")

_BREAKER: Dict[str, Check] = {
    # [0, 1] here for the message's sake; CircuitBreaker itself refuses 0.
    "failure_rate": _real(0.0, 1.0),
    "slow_call_rate": _real(0.0, 1.0),
    "slow_call_ms": _int(1),
    "minimum_calls": _int(1),
    "window_calls": _int(1),
    "window_s": _real(0.0, lo_open=True),
    "open_ms": _int(1),
    "open_backoff": _real(1.0),
    "max_open_ms": _int(1),
    "half_open_calls": _int(1),
    "max_half_open_ms": _int(1),
    "record": _list(_choice("violation", "timeout", "cpu", "memory", "error")),
}
_ADAPTIVE: Dict[str, Check] = {
    "percentile": _real(0.0, 100.0, lo_open=True),
    "headroom": _real(0.0, lo_open=True),
    "min_ms": _int(1),
    "max_ms": _int(1),
    "window_calls": _int(1),
    "window_s": _real(0.0, lo_open=True),
}
_QUOTA: Dict[str, Check] = {
    "calls": _real(0.0, lo_open=True),
    "cpu_ms": _real(0.0, lo_open=True),
    "wall_ms": _real(0.0, lo_open=True),
    "per_s": _real(0.0, lo_open=True),
    "burst": _real(0.0, lo_open=True),
    "store": _str,
}
_STORE: Dict[str, Check] = {
    "type": _choice("local", "redis"),
    "url": _str,
    "prefix": _str,
    "lease": _real(0.0, 1.0, lo_open=True),
    "timeout_ms": _real(0.0, lo_open=True),
    "on_unavailable": _choice("fail_closed", "fail_open"),
    "lease_ttl_ms": _real(0.0, lo_open=True),
    "retry_ms": _real(0.0),
}
#: The RedisQuotaStore keyword arguments of a [stores.<name>] table.
_REDIS_OPTIONS = ("lease", "timeout_ms", "on_unavailable", "lease_ttl_ms", "retry_ms")
_AUDIT: Dict[str, Check] = {
    "rate_per_s": _real(0.0, allow_inf=True),
    "logger": _str,
    "level": _choice(*_LEVELS),
    "sink": _str,
}
_PROMETHEUS: Dict[str, Check] = {
    "register": _bool,
    "namespace": _str,
    "max_rule_ids": _int(0),
    "buckets": _list(_real(0.0, lo_open=True), min_len=1),
    "native_histograms": _bool,
    "native_schema": _int(0, 8),
}
_OTEL: Dict[str, Check] = {
    "instrument": _bool,
    "spans": _choice("violations", "all", "none"),
    "max_rule_ids": _int(0),
}
_TOP = ("preempt", "transient_errors", "profiles", "fallbacks", "rules", "stores", "audit",
        "observability")


def resolve_dotted(path: str, name: Any) -> Any:
    """The object a dotted name names: ``ConnectionError`` (a builtin),
    ``http.client.RemoteDisconnected``, ``myapp.audit.send``."""
    name = _str(path, name)
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$", name):
        raise _bad(path, "must be a dotted name (module.attribute)", name)
    parts = name.split(".")
    if len(parts) == 1:
        import builtins

        if hasattr(builtins, name):
            return getattr(builtins, name)
        raise _bad(path, "names no builtin (write module.attribute)", name)
    error: Optional[BaseException] = None
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        try:
            obj: Any = importlib.import_module(module_name)
        except ImportError as exc:
            error = error or exc
            continue
        try:
            for attr in parts[split:]:
                obj = getattr(obj, attr)
        except AttributeError:
            raise _bad(path, f"names nothing in module {module_name!r}", name) from None
        return obj
    raise _bad(path, f"cannot be imported ({error})", name)


# ------------------------------------------------------------------ the result

@dataclasses.dataclass(frozen=True)
class EnforcerConfig:
    """A validated configuration; ``build(cls)`` makes the enforcer."""

    profiles: Dict[str, Dict[str, Any]]       # rule type value -> overrides of the preset
    fallbacks: Dict[str, Any]
    transient_errors: Optional[Tuple[type, ...]]
    transient_error_names: Optional[Tuple[str, ...]]
    preempt: bool
    audit: Dict[str, Any]
    audit_sink: Optional[Callable[..., Any]]
    prometheus: Dict[str, Any]
    otel: Dict[str, Any]
    rules: Dict[str, Dict[str, Any]]
    stores: Dict[str, Dict[str, Any]]
    source: str = "<mapping>"

    def rule_constraints(self, rule_id: str, constraints_class: Any = None) -> Any:
        """The ExecutionConstraints ``[rules.<rule_id>]`` registers its rule with:
        its type's effective profile with the rule's own overrides."""
        rule = self.rules[rule_id]
        base = self.effective_profiles(constraints_class)[rule["type"]]
        return base.replace(**rule["constraints"])

    def effective_profiles(self, constraints_class: Any = None) -> Dict[str, Any]:
        """rule type value -> the ExecutionConstraints the enforcer will use."""
        if constraints_class is None:
            from . import ExecutionConstraints

            constraints_class = ExecutionConstraints
        presets = {
            "fast": constraints_class.fast_rule(),
            "semantic": constraints_class.semantic_rule(),
            "wasm_hook": constraints_class.wasm_hook(10),
            "observational": constraints_class.observational(1.0),
        }
        return {name: presets[name].replace(**self.profiles.get(name, {}))
                for name in _RULE_TYPES}

    def build(self, cls: Any) -> Any:
        from .audit import AuditLogSink
        from .enforcer import RuleType

        profiles = self.effective_profiles(cls._constraints_class)
        kwargs: Dict[str, Any] = {
            "fallbacks": {RuleType(k): v for k, v in self.fallbacks.items()},
            "preempt": self.preempt,
        }
        if self.transient_errors is not None:
            kwargs["transient_errors"] = self.transient_errors
        if self.audit_sink is not None:
            kwargs["audit_sink"] = self.audit_sink
        else:
            kwargs["audit_sink"] = AuditLogSink(
                self.audit.get("rate_per_s", 10.0),
                logger=self.audit.get("logger", "fastpath.audit"),
                level=getattr(logging, self.audit.get("level", "WARNING")))
        enforcer = cls.with_constraints(profiles["fast"], profiles["semantic"],
                                        profiles["wasm_hook"], profiles["observational"],
                                        **kwargs)
        stores = _Stores(self.stores)
        for rule_id, rule in self.rules.items():
            path = _path("rules", rule_id)
            constraints = profiles[rule["type"]].replace(**rule["constraints"])
            parts = _rule_parts(enforcer._core_module, path, rule_id, rule, constraints, stores)
            try:
                enforcer.rule(rule_id, RuleType(rule["type"]), **parts)
            except InvalidConfiguration as exc:
                raise InvalidConfiguration(f"{path}: {exc}") from None
        prometheus = dict(self.prometheus)
        if prometheus.pop("register", False):
            try:
                from prometheus_client import REGISTRY

                from .prometheus import EnforcerCollector
            except ImportError as exc:
                raise InvalidConfiguration(
                    "observability.prometheus.register = true needs prometheus_client "
                    f"(pip install fastpath[prometheus]): {exc}") from None
            try:
                collector = EnforcerCollector(enforcer, **prometheus)
            except InvalidConfiguration as exc:
                raise InvalidConfiguration(f"observability.prometheus: {exc}") from None
            REGISTRY.register(collector)
        otel = dict(self.otel)
        if otel.pop("instrument", False):
            try:
                from .otel import instrument
            except ImportError as exc:
                raise InvalidConfiguration(
                    "observability.otel.instrument = true needs opentelemetry-api "
                    f"(pip install fastpath[otel]): {exc}") from None
            instrument(enforcer, **otel)
        return enforcer


def load_config(source: Source) -> EnforcerConfig:
    """Read and validate a configuration: a mapping, or the path of a TOML file."""
    name = "<mapping>"
    if isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        with open(name, "rb") as fh:
            try:
                data: Any = tomllib.load(fh)
            except tomllib.TOMLDecodeError as exc:
                raise InvalidConfiguration(f"{name} is not valid TOML: {exc}") from None
    elif isinstance(source, Mapping):
        data = source
    else:
        raise InvalidConfiguration(
            f"from_config needs a mapping or the path of a TOML file, got {source!r}")
    return validate(data, name)


def validate(data: Any, source: str = "<mapping>") -> EnforcerConfig:
    """Check every key and value (the rules' breakers, adaptive limits, quotas and
    stores are built once, with the default core, to check what their
    constructors check)."""
    from . import ExecutionConstraints

    top = _table("the configuration", data)
    for key in top:
        if key not in _TOP:
            raise InvalidConfiguration(
                f"{_key(key)}: unknown key (known: {', '.join(_TOP)})")
    preempt = _bool("preempt", top.get("preempt", True))

    presets = {"fast": ExecutionConstraints.fast_rule(),
               "semantic": ExecutionConstraints.semantic_rule(),
               "wasm_hook": ExecutionConstraints.wasm_hook(10),
               "observational": ExecutionConstraints.observational(1.0)}
    profiles: Dict[str, Dict[str, Any]] = {}
    for rule_type, table in _table("profiles", top.get("profiles", {})).items():
        path = _path("profiles", rule_type)
        if rule_type not in _RULE_TYPES:
            raise InvalidConfiguration(
                f"{path}: unknown rule type (known: {', '.join(_RULE_TYPES)})")
        profiles[rule_type] = _check_constraint_fields(path, _table(path, table),
                                                       presets[rule_type])

    fallbacks: Dict[str, Any] = {}
    for rule_type, value in _table("fallbacks", top.get("fallbacks", {})).items():
        if rule_type not in _RULE_TYPES:
            raise InvalidConfiguration(
                f"{_path('fallbacks', rule_type)}: unknown rule type (known: "
                f"{', '.join(_RULE_TYPES)})")
        fallbacks[rule_type] = value

    transient: Optional[Tuple[type, ...]] = None
    transient_names: Optional[Tuple[str, ...]] = None
    if "transient_errors" in top:
        names = _list(_str)("transient_errors", top["transient_errors"])
        classes = []
        for i, dotted in enumerate(names):
            path = f"transient_errors[{i}]"
            cls = resolve_dotted(path, dotted)
            if not (isinstance(cls, type) and issubclass(cls, Exception)):
                raise _bad(path, "must name an Exception subclass", dotted)
            classes.append(cls)
        transient, transient_names = tuple(classes), tuple(names)

    audit = _fields("audit", top.get("audit", {}), _AUDIT)
    sink = None
    if "sink" in audit:
        for key in ("rate_per_s", "logger", "level"):
            if key in audit:
                raise InvalidConfiguration(
                    f"audit.{key} configures the default log sink; it cannot be given with "
                    f"audit.sink, got {audit[key]!r}")
        sink = resolve_dotted("audit.sink", audit["sink"])
        if not callable(sink):
            raise _bad("audit.sink", "must name a callable", audit["sink"])

    observability = _table("observability", top.get("observability", {}))
    for key in observability:
        if key not in ("prometheus", "otel"):
            raise InvalidConfiguration(
                f"{_path('observability', key)}: unknown key (known: prometheus, otel)")
    prometheus = _fields("observability.prometheus", observability.get("prometheus", {}),
                         _PROMETHEUS)
    buckets = prometheus.get("buckets")
    if buckets is not None and any(a >= b for a, b in zip(buckets, buckets[1:], strict=False)):
        raise _bad("observability.prometheus.buckets", "must be increasing", buckets)
    otel = _fields("observability.otel", observability.get("otel", {}), _OTEL)

    stores: Dict[str, Dict[str, Any]] = {}
    for store_name, table in _table("stores", top.get("stores", {})).items():
        path = _path("stores", store_name)
        store = _fields(path, table, _STORE)
        if "type" not in store:
            raise InvalidConfiguration(f"{path}.type is required (local or redis), got none")
        if store["type"] == "redis":
            url = store.get("url")
            if url is None or not re.match(r"^(redis|rediss|unix)://", url):
                raise _bad(f"{path}.url", "must be a redis://, rediss:// or unix:// URL",
                           None if url is None else redact_url(url))
        elif set(store) - {"type"}:
            extra = sorted(set(store) - {"type"})[0]
            raise InvalidConfiguration(
                f"{path}.{extra}: a local store takes no options, got {store[extra]!r}")
        stores[store_name] = store

    effective = {name: presets[name].replace(**profiles.get(name, {})) for name in _RULE_TYPES}
    probe_stores = _Stores(stores)
    rules: Dict[str, Dict[str, Any]] = {}
    rule_keys = {"type", "breaker", "adaptive", "quota", "fallback", *_config.FIELDS}
    for rule_id, table in _table("rules", top.get("rules", {})).items():
        path = _path("rules", rule_id)
        table = _table(path, table)
        for key in table:
            if key not in rule_keys:
                raise InvalidConfiguration(
                    f"{_subpath(path, key)}: unknown key (known: type, fallback, breaker, "
                    f"adaptive, quota, and the ExecutionConstraints fields)")
        if "type" not in table:
            raise InvalidConfiguration(
                f"{path}.type is required ({', '.join(_RULE_TYPES)}), got none")
        rule_type = _choice(*_RULE_TYPES)(f"{path}.type", table["type"])
        rule: Dict[str, Any] = {"type": rule_type}
        overrides = {k: v for k, v in table.items() if k in _config.FIELDS}
        rule["constraints"] = _check_constraint_fields(path, overrides, effective[rule_type])
        if "fallback" in table:
            rule["fallback"] = table["fallback"]
        for sub, schema in (("breaker", _BREAKER), ("adaptive", _ADAPTIVE), ("quota", _QUOTA)):
            if sub in table:
                rule[sub] = _fields(_subpath(path, sub), table[sub], schema)
        quota_store = rule.get("quota", {}).get("store")
        if quota_store is not None and quota_store not in stores:
            raise _bad(f"{path}.quota.store", "must name a [stores.<name>] table", quota_store)
        constraints = effective[rule_type].replace(**rule["constraints"])
        parts = _rule_parts(_impl.core, path, rule_id, rule, constraints, probe_stores)
        if "adaptive" in parts:
            try:                    # the cap check enforcer.rule() makes
                parts["adaptive"]._state_for(_impl.core, constraints)
            except InvalidConfiguration as exc:
                raise InvalidConfiguration(f"{path}.adaptive: {exc}") from None
        rules[rule_id] = rule

    return EnforcerConfig(profiles=profiles, fallbacks=fallbacks, transient_errors=transient,
                          transient_error_names=transient_names, preempt=preempt,
                          audit=audit, audit_sink=sink, prometheus=prometheus, otel=otel,
                          rules=rules, stores=stores, source=source)


# ------------------------------------------------------------------ rules and stores

def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and ``check``)."""
    parts = urllib.parse.urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class _Stores:
    """The quota stores of one build: one redis client per ``[stores.<name>]``
    table (made on first use; redis-py connects at the first command), one new
    store per quota (a store serves one Quota)."""

    def __init__(self, tables: Mapping[str, Dict[str, Any]]) -> None:
        self.tables = tables
        self.clients: Dict[str, Any] = {}

    def for_quota(self, store_name: Optional[str], rule_id: str) -> Any:
        """The store for the quota of ``rule_id``; None: the Quota's own local store."""
        if store_name is None or self.tables[store_name]["type"] == "local":
            return None
        table = self.tables[store_name]
        path = _path("stores", store_name)
        try:
            import redis

            from .redis import RedisQuotaStore
        except ImportError as exc:
            raise InvalidConfiguration(
                f'{path}.type = "redis" needs the redis package (pip install '
                f"fastpath[redis]): {exc}") from None
        client = self.clients.get(store_name)
        if client is None:
            try:
                client = redis.Redis.from_url(table["url"])
            except ValueError as exc:
                raise _bad(f"{path}.url", f"is not a usable Redis URL ({exc})",
                           redact_url(table["url"])) from None
            self.clients[store_name] = client
        options = {key: table[key] for key in _REDIS_OPTIONS if key in table}
        try:
            return RedisQuotaStore(client, prefix=f"{table.get('prefix', 'fastpath:')}{rule_id}:",
                                   **options)
        except InvalidConfiguration as exc:
            raise InvalidConfiguration(f"{path}: {exc}") from None


_BREAKER_CLASSES: Dict[str, Any] = {}


def _breaker_class(core: Any) -> Any:
    """CircuitBreaker of ``core`` (fastpath.CircuitBreaker for the default core)."""
    from . import breaker

    if core is _impl.core:
        return breaker.CircuitBreaker
    cls = _BREAKER_CLASSES.get(core.__name__)
    if cls is None:
        cls = _BREAKER_CLASSES[core.__name__] = breaker._bind_breaker(core)
    return cls


def _made(path: str, cls: Any, kwargs: Mapping[str, Any]) -> Any:
    try:
        return cls(**kwargs)
    except InvalidConfiguration as exc:
        raise InvalidConfiguration(f"{path}: {exc}") from None


def _rule_parts(core: Any, path: str, rule_id: str, rule: Mapping[str, Any],
                constraints: Any, stores: _Stores) -> Dict[str, Any]:
    """The keyword arguments of ``enforcer.rule()`` for one ``[rules.<id>]``
    table, made for ``core``: constraints, fallback, breaker, adaptive, quota."""
    parts: Dict[str, Any] = {}
    if rule["constraints"]:
        parts["constraints"] = constraints
    if "fallback" in rule:
        parts["fallback"] = rule["fallback"]
    if "breaker" in rule:
        settings = dict(rule["breaker"])
        if "record" in settings:
            settings["record"] = tuple(settings["record"])
        parts["breaker"] = _made(f"{path}.breaker", _breaker_class(core), settings)
    if "adaptive" in rule:
        parts["adaptive"] = _made(f"{path}.adaptive", AdaptiveLimit, rule["adaptive"])
    if "quota" in rule:
        settings = dict(rule["quota"])
        settings["store"] = stores.for_quota(settings.pop("store", None), rule_id)
        parts["quota"] = _made(f"{path}.quota", core._quota_class(), settings)
    return parts


# ------------------------------------------------------------------ the command

def describe(config: EnforcerConfig) -> str:
    """The effective configuration as a readable table (``config check``)."""
    profiles = config.effective_profiles()
    lines = _columns(("rule type",), [
        ((name,), constraints, config.profiles.get(name, {}))
        for name, constraints in profiles.items()])
    lines.append("(* set in the file; other values are the preset's)")
    fallbacks = ", ".join(f"{k} = {v!r}" for k, v in config.fallbacks.items()) or "none (None)"
    lines.append(f"fallbacks: {fallbacks}")
    transient = (", ".join(config.transient_error_names) if config.transient_error_names
                 is not None else "ConnectionError, TimeoutError (default)")
    lines.append(f"transient errors: {transient}")
    lines.append(f"preempt: {'true' if config.preempt else 'false'}")
    if config.audit_sink is not None:
        lines.append(f"audit: sink {config.audit['sink']}")
    else:
        rate = config.audit.get("rate_per_s", 10.0)
        limit = ("no rate limit" if math.isinf(rate)
                 else f"at most {rate:g} events per rule id per second")
        lines.append(f"audit: logger {config.audit.get('logger', 'fastpath.audit')} at "
                     f"{config.audit.get('level', 'WARNING')}, {limit}")
    for name, table in (("prometheus", config.prometheus), ("otel", config.otel)):
        lines.append(f"observability.{name}: {_settings(table)}")
    if config.rules:
        lines.append("rules:")
        lines.extend("  " + line for line in _columns(("rule id", "type"), [
            ((rule_id, rule["type"]), config.rule_constraints(rule_id), rule["constraints"])
            for rule_id, rule in config.rules.items()]))
        lines.append("  (* set in the rule's table; other values are its type's profile)")
        for rule_id, rule in config.rules.items():
            for key in ("fallback", "breaker", "adaptive", "quota"):
                if key in rule:
                    value = rule[key]
                    shown = _settings(value) if isinstance(value, dict) else repr(value)
                    if key == "quota" and "store" not in value:
                        shown += " (local store)"
                    lines.append(f"  {_key(rule_id)}.{key}: {shown}")
    for store_name, table in config.stores.items():
        shown = {k: redact_url(v) if k == "url" else v for k, v in table.items() if k != "type"}
        users = [rule_id for rule_id, rule in config.rules.items()
                 if rule.get("quota", {}).get("store") == store_name]
        lines.append(f"stores.{_key(store_name)}: {table['type']}"
                     + (f", {_settings(shown)}" if shown else "")
                     + f"; quotas of: {', '.join(users) or 'no rule'}")
    return "\n".join(lines)


def _settings(table: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} = {v!r}" for k, v in table.items()) or "defaults"


def _columns(heads: Tuple[str, ...], rows: Sequence[Tuple[Tuple[str, ...], Any, Any]]
             ) -> List[str]:
    """A table of ExecutionConstraints, one row each: the leading cells, then
    every field (``*``: the field is in ``given``)."""
    table = [heads + _config.FIELDS]
    for lead, constraints, given in rows:
        cells = list(lead)
        for field in _config.FIELDS:
            value = getattr(constraints, field)
            cells.append(("-" if value is None else str(value)) + ("*" if field in given else ""))
        table.append(tuple(cells))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
            for r in table]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fastpath.config",
        description="Validate a fastpath configuration file and print the effective profiles, "
                    "rules and quota stores.")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser(
        "check", help="validate FILE and print the effective profiles, rules and stores")
    check.add_argument("file", metavar="FILE")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.file)
    except (InvalidConfiguration, OSError) as exc:
        print(f"{args.file}: {exc}", file=sys.stderr)
        return 1
    print(f"{args.file}: valid")
    print(describe(config))
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised through subprocess in the tests
    sys.exit(main())
