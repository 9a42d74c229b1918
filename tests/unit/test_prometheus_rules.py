"""deploy/prometheus: promtool accepts the config and rules, its unit tests pass and cover every
alert both firing and quiet, and the rules read only series the worker exports."""

from __future__ import annotations

import re
import subprocess
from collections import defaultdict
from pathlib import Path

import yaml

from tests.monitoring import (
    PROMETHEUS_CONFIG,
    PROMETHEUS_DIR,
    ROOT,
    RULE_TESTS,
    RULES,
    exported_series,
    github_anchor,
    load_rules,
    metric_names,
    tool,
)

SEVERITIES = {"critical", "warning", "info"}


def promtool(*args: str | Path) -> str:
    run = subprocess.run(
        [tool("FRESHREC_PROMTOOL"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=PROMETHEUS_DIR,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    return output


def alerts() -> list[dict]:
    return [r for r in load_rules() if "alert" in r]


def test_promtool_checks_the_config_and_its_rule_files() -> None:
    out = promtool("check", "config", PROMETHEUS_CONFIG)
    assert "SUCCESS: 1 rule files found" in out, out
    out = promtool("check", "rules", RULES)
    assert f"SUCCESS: {len(load_rules())} rules found" in out, out


def test_promtool_unit_tests_pass() -> None:
    assert RULE_TESTS, "no promtool tests in deploy/prometheus/tests"
    out = promtool("test", "rules", *RULE_TESTS)
    assert out.count("SUCCESS") == len(RULE_TESTS), out


def test_every_alert_is_tested_both_firing_and_not_firing() -> None:
    firing: dict[str, int] = defaultdict(int)
    quiet: dict[str, int] = defaultdict(int)
    for path in RULE_TESTS:
        doc = yaml.safe_load(path.read_text())
        assert doc["rule_files"] == ["../rules.yml"], path
        for case in doc["tests"]:
            for check in case.get("alert_rule_test", []):
                counts = firing if check.get("exp_alerts") else quiet
                counts[check["alertname"]] += 1
    names = {a["alert"] for a in alerts()}
    assert names == set(firing) | set(quiet), "alerts without a test, or tests of no alert"
    assert not names - set(firing), f"never tested firing: {sorted(names - set(firing))}"
    assert not names - set(quiet), f"never tested quiet: {sorted(names - set(quiet))}"


def test_the_issue_s_alerts_exist() -> None:
    assert {a["alert"] for a in alerts()} >= {
        "FreshrecWorkerDown",
        "FreshrecConsumerLagGrowing",
        "FreshrecDeadLetterRateHigh",
        "FreshrecNoRecommendations",
        "FreshrecHitRateDropped",
        "FreshrecDriftDetected",
        "FreshrecPartitionStalled",
        "FreshrecStateRestoreSlow",
    }


def test_every_alert_has_severity_summary_description_and_runbook() -> None:
    for a in alerts():
        assert a["labels"]["severity"] in SEVERITIES, a["alert"]
        notes = a["annotations"]
        assert notes["summary"].strip() and notes["description"].strip(), a["alert"]
        assert notes["runbook"] == f"README.md#runbook-{a['alert'].lower()}", a["alert"]


def test_every_runbook_link_reaches_a_readme_heading() -> None:
    headings = re.findall(r"^#{1,6} (.+?)\s*$", (ROOT / "README.md").read_text(), re.M)
    anchors = {github_anchor(h) for h in headings}
    missing = [
        a["annotations"]["runbook"]
        for a in alerts()
        if a["annotations"]["runbook"].split("#", 1)[1] not in anchors
    ]
    assert not missing, f"README.md has no heading for {missing}"


def test_rules_read_only_series_the_worker_exports_or_rules_record() -> None:
    rules = load_rules()
    known = exported_series() | {r["record"] for r in rules if "record" in r}
    for rule in rules:
        unknown = metric_names(rule["expr"]) - known
        assert not unknown, f"{rule.get('alert') or rule.get('record')} reads {unknown}"


def test_recording_rules_follow_the_level_metric_operation_convention() -> None:
    for rule in load_rules():
        if "record" in rule:
            assert re.fullmatch(r"freshrec:[a-z0-9_]+:[a-z0-9_]+", rule["record"]), rule["record"]


def test_the_scrape_config_targets_the_compose_workers_and_loads_the_rules() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert config["rule_files"] == ["rules.yml"]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "freshrec"]
    assert job["scrape_interval"] == "15s"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == ["worker-1:9108", "worker-2:9108"]
