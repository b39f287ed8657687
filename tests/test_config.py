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
from fastpath.config import load_config, validate

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "fastpath.toml"
RULES_EXAMPLE = ROOT / "examples" / "fastpath-rules.toml"


def readme_toml_blocks():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```toml\n(.*?)```", text, flags=re.S)


def test_the_readme_shows_the_example_files():
    blocks = readme_toml_blocks()
    assert EXAMPLE.read_text() in blocks
    assert RULES_EXAMPLE.read_text() in blocks


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


def test_the_rules_example_is_valid_but_not_supported_yet(fp):
    config = validate(__import__("tomllib").loads(RULES_EXAMPLE.read_text()))
    assert config.rules["deny-ua"]["breaker"]["failure_rate"] == 0.5
    assert config.rules["classify"]["quota"]["store"] == "shared"
    assert config.stores["shared"]["url"].startswith("redis://")
    with pytest.raises(fp.InvalidConfiguration, match=r"rules\.deny-ua: rules as objects, "
                       r"circuit breakers, adaptive limits and quotas are not supported yet"):
        fp.ConstraintEnforcer.from_config(RULES_EXAMPLE)
    with pytest.raises(fp.InvalidConfiguration, match=r"stores\.s: .*not supported yet"):
        fp.ConstraintEnforcer.from_config({"stores": {"s": {"type": "local"}}})


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
    ({"rules": {"r": {"type": "fast", "breaker": {"record": ["timeout"]}}}},
     "rules.r.breaker.record[0] must be one of 'violation', 'error', got 'timeout'"),
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
     "stores.s.timeout_ms must be an int >= 1, got 0"),
]


@pytest.mark.parametrize("data,message", BAD, ids=[m.split()[0] for _, m in BAD])
def test_every_bad_key_path_is_named_with_its_value(fp, data, message):
    with pytest.raises(fp.InvalidConfiguration) as info:
        fp.ConstraintEnforcer.from_config(data)
    assert message in str(info.value)


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


def test_config_check_fails_with_the_key_path(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[rules.deny-ua]\ntype = 'fast'\n[rules.deny-ua.breaker]\nfailure_rate = 2\n")
    done = run_check("check", str(bad))
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip() == (
        f"{bad}: rules.deny-ua.breaker.failure_rate must be within [0.0, 1.0], got 2")
    done = run_check("check", str(RULES_EXAMPLE))
    assert done.returncode == 1 and "not supported yet" in done.stderr
    done = run_check("check", str(tmp_path / "missing.toml"))
    assert done.returncode == 1 and "No such file" in done.stderr
    assert run_check().returncode == 2
