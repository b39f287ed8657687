"""ConstraintEnforcer.from_config and `python -m fastpath.config check`."""

from __future__ import annotations

import http.client
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fastpath import otel
from fastpath.audit import AuditLogSink
from fastpath.config import load_config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "fastpath.toml"


def readme_toml_blocks():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```toml\n(.*?)```", text, flags=re.S)


def test_the_readme_shows_the_example_file():
    assert EXAMPLE.read_text() in readme_toml_blocks()


def test_the_complete_example_loads(fp):
    e = fp.ConstraintEnforcer.from_config(EXAMPLE)
    C = fp.ExecutionConstraints
    assert type(e) is fp.ConstraintEnforcer
    assert e.constraints_for(fp.RuleType.FAST) == C.fast_rule().replace(max_exec_ms=2,
                                                                        cpu_shares=25)
    assert e.constraints_for(fp.RuleType.SEMANTIC) == C.semantic_rule().replace(
        max_exec_ms=150, max_retries=1, retry_backoff_ms=5)
    assert e.constraints_for(fp.RuleType.WASM_HOOK) == C.wasm_hook(10).replace(
        memory_limit_bytes=8_388_608)
    assert e.constraints_for(fp.RuleType.OBSERVATIONAL) == C.observational(0.01)
    assert e._transient == (ConnectionError, TimeoutError, http.client.RemoteDisconnected)
    assert isinstance(e.audit_sink, AuditLogSink) and e.audit_sink.rate_per_s == 5
    assert e.audit_sink.logger is logging.getLogger("fastpath.audit")
    assert e.audit_sink.level == logging.WARNING
    assert e._fallbacks == {fp.RuleType.SEMANTIC: "allow", fp.RuleType.OBSERVATIONAL: False}
    # The transient errors by dotted name are retried.  The call must fit, so it
    # runs on the same file with a minute for SEMANTIC instead of its 150 ms.
    data = __import__("tomllib").loads(EXAMPLE.read_text())
    data["profiles"]["semantic"]["max_exec_ms"] = 60_000
    e = fp.ConstraintEnforcer.from_config(data)
    attempts = []

    def disconnects():
        attempts.append(1)
        if len(attempts) == 1:
            raise http.client.RemoteDisconnected("gone")
        return "second"

    assert e.execute_with_constraints(fp.RuleType.SEMANTIC, disconnects) == "second"


def test_the_examples_rules_are_registered_with_their_parts(fp):
    e = fp.ConstraintEnforcer.from_config(EXAMPLE)
    C = fp.ExecutionConstraints
    rules = e.rules()
    assert set(rules) == {"deny-ua", "classify", "tenant-hook"}
    deny = rules["deny-ua"]
    assert deny is e.rule("deny-ua", fp.RuleType.FAST)       # the registered handle
    assert type(deny) is fp.Rule and deny.rule_type is fp.RuleType.FAST
    # Its type's profile (max_exec_ms 2, cpu_shares 25 from [profiles.fast]) with its own
    # max_exec_ms.
    assert deny.configured_constraints == C.fast_rule().replace(max_exec_ms=3, cpu_shares=25)
    assert deny.fallback is True
    assert isinstance(deny.breaker, fp.core._Breaker)
    assert deny.breaker.settings == {
        "failure_rate": 0.5, "slow_call_rate": 1.0, "slow_call_ms": 3, "minimum_calls": 20,
        "window_calls": 100, "window_s": None, "open_ms": 30000, "open_backoff": 2.0,
        "max_open_ms": 300000, "half_open_calls": 5, "max_half_open_ms": None,
        "record": ("violation", "error")}
    assert deny.adaptive == fp.AdaptiveLimit(percentile=99.0, headroom=1.5, min_ms=1, max_ms=3,
                                             window_calls=1000)
    assert deny.quota is None
    classify = rules["classify"]
    assert classify.configured_constraints == e.constraints_for(fp.RuleType.SEMANTIC)
    assert classify.fallback == "allow"                      # [fallbacks] semantic
    assert classify.breaker is None and classify.adaptive is None
    assert type(classify.quota) is fp.Quota
    from fastpath.redis import RedisQuotaStore

    store = classify.quota.store
    assert isinstance(store, RedisQuotaStore)
    assert (store.prefix, store.lease, store.timeout_ms, store.on_unavailable,
            store.lease_ttl_ms, store.retry_ms) == (
        "fastpath:classify:", 0.05, 50, "fail_closed", 1000, 250)
    assert store._client.connection_pool.connection_kwargs["port"] == 6379
    hook = rules["tenant-hook"]
    assert type(hook.quota.store) is fp.LocalQuotaStore
    assert hook.quota.remaining("t1") == {"calls": 100.0}    # 50 calls/s, burst 2


def test_a_configured_rule_runs_with_its_breaker_and_local_quota(fp):
    e = fp.ConstraintEnforcer.from_config({
        "preempt": False,
        "audit": {"sink": "builtins.id"},
        "rules": {
            "r": {"type": "semantic", "max_exec_ms": 60_000, "fallback": "fb",
                  "breaker": {"minimum_calls": 2, "window_calls": 2, "failure_rate": 1.0},
                  "quota": {"calls": 3, "per_s": 3600, "store": "mem"}}},
        "stores": {"mem": {"type": "local"}}})
    rule = e.rules()["r"]

    def boom():
        raise ValueError("no")

    for _ in range(2):
        with pytest.raises(ValueError):
            rule.run_for("tenant", boom)
    assert rule.breaker.state is fp.CircuitState.OPEN
    assert rule.run_for("tenant", abs, -1) == "fb"          # refused by the open breaker
    rule.breaker.reset()
    assert rule.run_for("tenant", abs, -1) == 1               # the third call of the quota
    assert rule.run_for("tenant", abs, -1) == "fb"          # quota exhausted: fail open
    m = rule.metrics()
    assert m["quota_refused"] == 1 and m["breaker"]["refused"] == 1


def test_a_configured_redis_store_charges_the_real_server(fp, redis_server):
    import tomllib

    data = tomllib.loads(EXAMPLE.read_text())
    data["stores"]["shared"]["url"] = redis_server.url
    data["stores"]["shared"]["prefix"] = f"cfgtest-{fp.kind}:"
    data["profiles"]["semantic"]["max_exec_ms"] = 60_000
    e = fp.ConstraintEnforcer.from_config(data)
    classify = e.rules()["classify"]
    store = classify.quota.store
    store.reset("tenant-1")
    assert classify.run_for("tenant-1", abs, -5) == 5
    assert store.stats()["round_trips"] == 1 and store.stats()["errors"] == 0
    import redis

    client = redis.Redis.from_url(redis_server.url)
    assert client.exists(f"cfgtest-{fp.kind}:classify:quota:s:tenant-1") == 1
    client.close()


def test_a_redis_store_without_the_redis_package_is_invalid_configuration(fp, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "redis", None)          # import redis -> ImportError
    with pytest.raises(fp.InvalidConfiguration,
                       match=r'stores\.shared\.type = "redis" needs the redis package '
                             r"\(pip install fastpath\[redis\]\)"):
        fp.ConstraintEnforcer.from_config(EXAMPLE)
    # A local store needs nothing.
    fp.ConstraintEnforcer.from_config({"rules": {"r": {"type": "fast", "quota": {
        "calls": 1, "store": "s"}}}, "stores": {"s": {"type": "local"}}})


def test_a_mapping_round_trips_every_profile(fp):
    C = fp.ExecutionConstraints
    wanted = {
        "fast": C(3, cpu_shares=None, memory_limit_bytes=2048),
        "semantic": C(250, cpu_shares=80, fail_closed_on_timeout=True, max_retries=0),
        "wasm_hook": C(7, sampling_rate=0.5),
        "observational": C(1, memory_limit_bytes=None, fail_closed_on_timeout=False),
    }
    e = fp.ConstraintEnforcer.from_config(
        {"profiles": {name: c.to_dict() for name, c in wanted.items()},
         "fallbacks": {"semantic": {"verdict": "allow"}}, "preempt": False})
    for name, c in wanted.items():
        assert e.constraints_for(fp.RuleType(name)) == c
    assert e._fallbacks == {fp.RuleType.SEMANTIC: {"verdict": "allow"}}
    assert e._preempt is False
    # ... and through a TOML file: "none" stands for None (TOML has no null).
    config = load_config(EXAMPLE)
    assert config.effective_profiles()["fast"].cpu_shares == 25
    e2 = fp.ConstraintEnforcer.from_config({"profiles": {"fast": {"cpu_shares": "none"}}})
    assert e2.constraints_for(fp.RuleType.FAST).cpu_shares is None


def test_an_empty_configuration_is_the_default_enforcer(fp):
    e = fp.ConstraintEnforcer.from_config({})
    d = fp.ConstraintEnforcer()
    for rule_type in fp.RuleType:
        assert e.constraints_for(rule_type) == d.constraints_for(rule_type)
    assert e.audit_sink.rate_per_s == 10 and e._transient == (ConnectionError, TimeoutError)


BAD = [
    ({"profile": {}}, "profile: unknown key (known: preempt, transient_errors, profiles"),
    ({"preempt": 1}, "preempt must be true or false, got 1"),
    ({"profiles": {"fastest": {}}}, "profiles.fastest: unknown rule type"),
    ({"profiles": {"fast": {"max_exec": 5}}}, "profiles.fast.max_exec: unknown key"),
    ({"profiles": {"fast": {"max_exec_ms": 0}}},
     "profiles.fast.max_exec_ms must be an int in 1..2**53, got 0"),
    ({"profiles": {"fast": {"max_exec_ms": 5.0}}}, "profiles.fast.max_exec_ms must be an int"),
    ({"profiles": {"semantic": {"sampling_rate": 1.5}}},
     "profiles.semantic.sampling_rate must be within [0.0, 1.0], got 1.5"),
    ({"profiles": {"fast": {"cpu_shares": 150}}},
     "profiles.fast.cpu_shares must be an int in 0..100, got 150"),
    ({"profiles": {"fast": {"fail_closed_on_timeout": "yes"}}},
     "profiles.fast.fail_closed_on_timeout must be a bool, got 'yes'"),
    ({"profiles": {"fast": 5}}, "profiles.fast must be a table, got 5"),
    ({"profiles": []}, "profiles must be a table, got []"),
    ({"fallbacks": {"quick": 1}}, "fallbacks.quick: unknown rule type"),
    ({"transient_errors": "ConnectionError"},
     "transient_errors must be a list, got 'ConnectionError'"),
    ({"transient_errors": ["NoSuchError"]},
     "transient_errors[0] names no builtin (write module.attribute), got 'NoSuchError'"),
    ({"transient_errors": ["ConnectionError", "no_such_module.Error"]},
     "transient_errors[1] cannot be imported"),
    ({"transient_errors": ["http.client.NoSuch"]},
     "transient_errors[0] names nothing in module 'http.client', got 'http.client.NoSuch'"),
    ({"transient_errors": ["KeyboardInterrupt"]},
     "transient_errors[0] must name an Exception subclass, got 'KeyboardInterrupt'"),
    ({"transient_errors": ["os.path.join"]},
     "transient_errors[0] must name an Exception subclass"),
    ({"transient_errors": ["bad name"]}, "transient_errors[0] must be a dotted name"),
    ({"audit": {"rate": 5}}, "audit.rate: unknown key (known: rate_per_s, logger, level, sink)"),
    ({"audit": {"rate_per_s": -1}}, "audit.rate_per_s must be within [0.0, inf), got -1"),
    ({"audit": {"rate_per_s": "10"}}, "audit.rate_per_s must be a number, got '10'"),
    ({"audit": {"level": "LOUD"}}, "audit.level must be one of 'DEBUG', 'INFO', 'WARNING'"),
    ({"audit": {"logger": ""}}, "audit.logger must be a non-empty string, got ''"),
    ({"audit": {"sink": "os.sep"}}, "audit.sink must name a callable, got 'os.sep'"),
    ({"audit": {"sink": "logging.info", "rate_per_s": 3}},
     "audit.rate_per_s configures the default log sink; it cannot be given with audit.sink"),
    ({"observability": {"grafana": {}}}, "observability.grafana: unknown key"),
    ({"observability": {"prometheus": {"port": 9000}}},
     "observability.prometheus.port: unknown key"),
    ({"observability": {"prometheus": {"max_rule_ids": -1}}},
     "observability.prometheus.max_rule_ids must be an int >= 0, got -1"),
    ({"observability": {"prometheus": {"buckets": [0.1, 0.01]}}},
     "observability.prometheus.buckets must be increasing, got [0.1, 0.01]"),
    ({"observability": {"prometheus": {"buckets": [0]}}},
     "observability.prometheus.buckets[0] must be within (0.0, inf), got 0"),
    ({"observability": {"prometheus": {"native_schema": 9}}},
     "observability.prometheus.native_schema must be an int in 0..8, got 9"),
    ({"observability": {"otel": {"spans": "every"}}},
     "observability.otel.spans must be one of 'violations', 'all', 'none', got 'every'"),
    ({"rules": {"deny-ua": {"type": "fast", "breaker": {"failure_rate": 2}}}},
     "rules.deny-ua.breaker.failure_rate must be within [0.0, 1.0], got 2"),
    ({"rules": {"deny-ua": {}}}, "rules.deny-ua.type is required"),
    ({"rules": {"deny-ua": {"type": "slow"}}}, "rules.deny-ua.type must be one of"),
    ({"rules": {"deny-ua": {"type": "fast", "max_exec_ms": -1}}},
     "rules.deny-ua.max_exec_ms must be an int in 1..2**53, got -1"),
    ({"rules": {"deny-ua": {"type": "fast", "priority": 1}}},
     "rules.deny-ua.priority: unknown key"),
    ({"rules": {"a.b": {"type": "fast", "breaker": {"open": 1}}}},
     'rules."a.b".breaker.open: unknown key'),
    ({"rules": {"r": {"type": "fast", "breaker": {"record": ["slow"]}}}},
     "rules.r.breaker.record[0] must be one of 'violation', 'timeout', 'cpu', 'memory', "
     "'error', got 'slow'"),
    # What the constructors check, with the key path in front.
    ({"rules": {"r": {"type": "fast", "breaker": {"failure_rate": 0}}}},
     "rules.r.breaker: CircuitBreaker failure_rate must be within (0, 1], got 0"),
    ({"rules": {"r": {"type": "fast", "breaker": {"minimum_calls": 50, "window_calls": 10}}}},
     "rules.r.breaker: CircuitBreaker minimum_calls (50) must be <= window_calls (10)"),
    ({"rules": {"r": {"type": "fast", "breaker": {"open_ms": 10, "max_open_ms": 5}}}},
     "rules.r.breaker: CircuitBreaker max_open_ms must be >= open_ms (10), got 5"),
    ({"rules": {"r": {"type": "fast", "adaptive": {"headroom": 0.5}}}},
     "rules.r.adaptive: AdaptiveLimit headroom must be within [1, 1000], got 0.5"),
    ({"rules": {"r": {"type": "fast", "adaptive": {"min_ms": 5, "max_ms": 2}}}},
     "rules.r.adaptive: AdaptiveLimit max_ms must be >= min_ms (5), got 2"),
    ({"rules": {"r": {"type": "fast", "adaptive": {"max_ms": 50}}}},
     "rules.r.adaptive: AdaptiveLimit max_ms (50) must be <= the rule's max_exec_ms (5)"),
    ({"profiles": {"fast": {"max_exec_ms": 20}},
      "rules": {"r": {"type": "fast", "max_exec_ms": 4, "adaptive": {"min_ms": 10}}}},
     "rules.r.adaptive: AdaptiveLimit min_ms (10) must be <= the rule's max_exec_ms (4)"),
    ({"rules": {"r": {"type": "fast", "quota": {"per_s": 2}}}},
     "rules.r.quota: Quota needs at least one of calls, cpu_ms, wall_ms, got none of them"),
    ({"rules": {"r": {"type": "fast", "quota": {"calls": 0.5}}}},
     "rules.r.quota: Quota calls * burst must be >= 1"),
    ({"rules": {"r": {"type": "fast", "quota": {"calls": True}}}},
     "rules.r.quota.calls must be a number, got True"),
    ({"rules": {"r": {"type": "fast", "quota": {"calls": 1, "tokens": 2}}}},
     "rules.r.quota.tokens: unknown key (known: calls, cpu_ms, wall_ms, per_s, burst, store)"),
    ({"rules": {"r": {"type": "fast", "adaptive": {"window": 2}}}},
     "rules.r.adaptive.window: unknown key"),
    ({"rules": {"r": {"type": "fast", "breaker": 3}}}, "rules.r.breaker must be a table, got 3"),
    ({"rules": {"r": {"type": "fast", "cpu_shares": 101}}},
     "rules.r.cpu_shares must be an int in 0..100, got 101"),
    ({"rules": {"r": {"type": "fast", "breaker": {"window_s": 0}}}},
     "rules.r.breaker.window_s must be within (0.0, inf), got 0"),
    ({"rules": []}, "rules must be a table, got []"),
    ({"rules": {"r": 1}}, "rules.r must be a table, got 1"),
    ({"rules": {"r": {"type": "fast", "adaptive": {"percentile": 0}}}},
     "rules.r.adaptive.percentile must be within (0.0, 100.0], got 0"),
    ({"rules": {"r": {"type": "fast", "quota": {"per_s": 0}}}},
     "rules.r.quota.per_s must be within (0.0, inf), got 0"),
    ({"rules": {"r": {"type": "fast", "quota": {"store": "missing"}}}},
     "rules.r.quota.store must name a [stores.<name>] table, got 'missing'"),
    ({"stores": {"s": {"type": "memcached"}}}, "stores.s.type must be one of 'local', 'redis'"),
    ({"stores": {"s": {"type": "redis"}}}, "stores.s.url must be a redis://"),
    ({"stores": {"s": {"type": "redis", "url": "http://x"}}},
     "stores.s.url must be a redis://, rediss:// or unix:// URL, got 'http://x'"),
    ({"stores": {"s": {"type": "local", "url": "redis://x"}}},
     "stores.s.url: a local store takes no options"),
    ({"stores": {"s": {"url": "redis://x"}}}, "stores.s.type is required"),
    ({"stores": {"s": {"type": "redis", "url": "redis://x", "timeout_ms": 0}}},
     "stores.s.timeout_ms must be within (0.0, inf), got 0"),
    ({"stores": {"s": {"type": "redis", "url": "redis://x", "lease": 1.5}}},
     "stores.s.lease must be within (0.0, 1.0], got 1.5"),
    ({"stores": {"s": {"type": "redis", "url": "redis://x", "on_unavailable": "retry"}}},
     "stores.s.on_unavailable must be one of 'fail_closed', 'fail_open', got 'retry'"),
    ({"stores": {"s": {"type": "redis", "url": "redis://x", "retry_ms": -1}}},
     "stores.s.retry_ms must be within [0.0, inf), got -1"),
    ({"stores": {"s": {"type": "redis", "url": "redis://x", "db": 1}}},
     "stores.s.db: unknown key (known: type, url, prefix, lease, timeout_ms, on_unavailable, "
     "lease_ttl_ms, retry_ms)"),
    ({"stores": {"s": {"type": "redis", "url": "redis://x", "timeout_ms": 120000}},
      "rules": {"r": {"type": "fast", "quota": {"calls": 1, "store": "s"}}}},
     "stores.s: RedisQuotaStore timeout_ms must be within (0, 60000], got 120000"),
    ({"stores": {"s": {"type": "redis", "url": "redis://:hunter2@x:99999/0"}},
      "rules": {"r": {"type": "fast", "quota": {"calls": 1, "store": "s"}}}},
     "stores.s.url is not a usable Redis URL"),
    ({"stores": {"s": {"type": "redis", "url": "http://:hunter2@x/0"}}},
     "stores.s.url must be a redis://, rediss:// or unix:// URL, got 'http://:***@x/0'"),
    ({"stores": []}, "stores must be a table, got []"),
]


@pytest.mark.parametrize("data,message", BAD, ids=[m.split()[0] for _, m in BAD])
def test_every_bad_key_path_is_named_with_its_value(fp, data, message):
    with pytest.raises(fp.InvalidConfiguration) as info:
        fp.ConstraintEnforcer.from_config(data)
    assert message in str(info.value)
    assert "hunter2" not in str(info.value)                  # a password is never shown


def test_bad_sources(fp, tmp_path):
    with pytest.raises(fp.InvalidConfiguration, match="mapping or the path"):
        fp.ConstraintEnforcer.from_config(42)
    bad = tmp_path / "bad.toml"
    bad.write_text("[profiles.fast\nmax_exec_ms = 1\n")
    with pytest.raises(fp.InvalidConfiguration, match="is not valid TOML"):
        fp.ConstraintEnforcer.from_config(bad)
    with pytest.raises(FileNotFoundError):
        fp.ConstraintEnforcer.from_config(tmp_path / "missing.toml")


def test_a_custom_audit_sink_by_dotted_name(fp, tmp_path, monkeypatch):
    (tmp_path / "my_audit_sink.py").write_text("EVENTS = []\ndef send(event):\n"
                                                "    EVENTS.append(event)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    e = fp.ConstraintEnforcer.from_config({"audit": {"sink": "my_audit_sink.send"},
                                           "profiles": {"semantic": {"max_exec_ms": 1}},
                                           "preempt": False})
    import my_audit_sink

    my_audit_sink.EVENTS.clear()        # one module for both cores
    e.execute_with_constraints(fp.RuleType.SEMANTIC, __import__("time").sleep, 0.01)
    assert [ev.rule_id for ev in my_audit_sink.EVENTS] == ["sleep"]
    assert e.audit_sink is my_audit_sink.send


def test_observability_settings_register_the_collector_and_instrument(fp):
    from prometheus_client import REGISTRY

    from fastpath.prometheus import EnforcerCollector

    before = set(REGISTRY._collector_to_names)
    e = fp.ConstraintEnforcer.from_config({"observability": {
        "prometheus": {"register": True, "namespace": "cfgtest", "max_rule_ids": 7},
        "otel": {"instrument": True, "spans": "none"}}})
    try:
        (collector,) = set(REGISTRY._collector_to_names) - before
        assert isinstance(collector, EnforcerCollector) and collector.enforcer is e
        assert collector.namespace == "cfgtest" and collector.max_rule_ids == 7
        assert REGISTRY.get_sample_value("cfgtest_calls_total", {"rule_type": "fast"}) == 0
        inst = otel._instrumented[id(e)]
        assert inst.spans == "none"
    finally:
        REGISTRY.unregister(collector)
        otel._instrumented[id(e)].uninstrument()


def run_check(*args):
    return subprocess.run([sys.executable, "-m", "fastpath.config", *args],
                          capture_output=True, text=True, timeout=60)


def test_config_check_prints_the_effective_profiles():
    done = run_check("check", str(EXAMPLE))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"{EXAMPLE}: valid"
    assert lines[1].split() == ["rule", "type", "max_exec_ms", "cpu_shares",
                                "memory_limit_bytes", "sampling_rate",
                                "fail_closed_on_timeout", "max_retries", "retry_backoff_ms"]
    assert lines[2].split() == ["fast", "2*", "25*", "1048576", "1.0", "True", "-", "-"]
    assert lines[5].split() == ["observational", "2", "5", "524288", "0.01*", "False", "-", "-"]
    assert "transient errors: ConnectionError, TimeoutError, http.client.RemoteDisconnected" \
        in done.stdout
    assert "audit: logger fastpath.audit at WARNING, at most 5 events per rule id per second" \
        in done.stdout
    # The registered rules: their effective constraints, then their parts.
    rules_at = lines.index("rules:")
    assert lines[rules_at + 2].split() == ["deny-ua", "fast", "3*", "25", "1048576", "1.0",
                                           "True", "-", "-"]
    assert lines[rules_at + 3].split()[:3] == ["classify", "semantic", "150"]
    assert "  deny-ua.fallback: True" in lines
    assert "  deny-ua.adaptive: percentile = 99.0, headroom = 1.5, min_ms = 1, max_ms = 3, " \
        "window_calls = 1000" in lines
    assert "  classify.quota: calls = 1000, cpu_ms = 500, per_s = 1.0, store = 'shared'" in lines
    assert "stores.in-process: local; quotas of: tenant-hook" in lines
    assert ("stores.shared: redis, url = 'redis://127.0.0.1:6379/0', prefix = 'fastpath:', "
            "lease = 0.05, timeout_ms = 50, on_unavailable = 'fail_closed', lease_ttl_ms = 1000, "
            "retry_ms = 250; quotas of: classify") in lines


def test_config_check_hides_a_redis_password(tmp_path):
    good = tmp_path / "secret.toml"
    good.write_text("[stores.s]\ntype = 'redis'\nurl = 'redis://app:hunter2@10.0.0.1:6380/2'\n")
    done = run_check("check", str(good))
    assert done.returncode == 0, done.stderr
    assert "url = 'redis://app:***@10.0.0.1:6380/2'" in done.stdout
    assert "hunter2" not in done.stdout


def test_config_check_fails_with_the_key_path(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[rules.deny-ua]\ntype = 'fast'\n[rules.deny-ua.breaker]\nfailure_rate = 2\n")
    done = run_check("check", str(bad))
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip() == (
        f"{bad}: rules.deny-ua.breaker.failure_rate must be within [0.0, 1.0], got 2")
    done = run_check("check", str(tmp_path / "missing.toml"))
    assert done.returncode == 1 and "No such file" in done.stderr
    assert run_check().returncode == 2
