"""A real Prometheus (Debian's server, from `make tools`) scrapes a ``freshrec worker`` process on
the real broker with the project's prometheus.yml and rules.yml: freshrec's series arrive with the
values the run implies, every rule group loads and evaluates, and every Grafana panel's query
parses and returns data."""

from __future__ import annotations

import json
import math
import re
import shutil
import signal
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kafka import KafkaProducer

from consumer.datasets import synthetic_catalog, synthetic_events
from tests.integration.helpers import wait_for
from tests.integration.test_state_recovery import prepare, send, start_worker
from tests.monitoring import (
    DASHBOARD,
    PROMETHEUS_CONFIG,
    RULES,
    load_rules,
    query_panels,
    substitute,
    tool,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

# Panels that may legitimately have no series here, with the reason; their queries must parse.
CUDA_ONLY = "freshrec_gpu_* exist only when the encoder runs on CUDA; this worker runs on CPU"
MAY_BE_EMPTY = {"GPU utilisation": CUDA_ONLY, "GPU memory used": CUDA_ONLY}
BAD_EVENTS = [b"\xc1 not msgpack", b"\xc1\xc1", b"\x93\x01\x02\x03"]  # 2 not_msgpack, 1 not_a_map


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Run:
    """What the module's worker was sent, and the Prometheus that scraped it."""

    url: str
    instance: str
    items: int
    events: int
    users: int
    log: Path
    prometheus_log: Path

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=30) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as err:  # a query that does not parse: 400 and the reason
            body = json.loads(err.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's samples (it must parse and evaluate)."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        result: list[dict[str, Any]] = data["result"]
        return result

    def value(self, expr: str) -> float:
        """The value of a query that must return exactly one sample."""
        result = self.query(expr)
        assert len(result) == 1, (expr, result)
        return float(result[0]["value"][1])

    def values(self, expr: str) -> dict[str, float]:
        """A query's samples keyed by their label set."""
        return {
            ",".join(f"{k}={v}" for k, v in sorted(s["metric"].items()) if k != "__name__"): float(
                s["value"][1]
            )
            for s in self.query(expr)
        }

    def tail(self) -> str:
        return "worker:\n{}\nprometheus:\n{}".format(
            self.log.read_text(errors="replace")[-3000:],
            self.prometheus_log.read_text(errors="replace")[-2000:],
        )


def scrape_config_for(tmp: Path, worker_target: str) -> Path:
    """The project's prometheus.yml with the target rewritten to the worker, scrapes and rule
    evaluations every second, and the project's own rules.yml (by absolute path)."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    here = PROMETHEUS_CONFIG.parent
    config["rule_files"] = [str((here / f).resolve()) for f in config["rule_files"]]
    assert config["rule_files"] == [str(RULES.resolve())]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "freshrec"]
    job["scrape_interval"] = "1s"
    job["static_configs"] = [{"targets": [worker_target]}]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def run(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    prometheus_bin = tool("FRESHREC_PROMETHEUS")
    tmp = tmp_path_factory.mktemp("prometheus")
    prefix = f"t{uuid.uuid4().hex[:10]}."
    items = synthetic_catalog(120, seed=11)
    events = synthetic_events(600, items, n_users=40, seed=11)

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    prepare(bootstrap, prefix, producer, items)  # topics, and the catalog the worker loads
    producer.send(f"{prefix}items", key=b"bad-item", value=b"\xc1 not an item")
    producer.flush()

    # Prometheus first, so that it scrapes the worker from the moment its metrics server starts;
    # the partitions' restore comes seconds later (after the model and the catalog load), between
    # two scrapes, so that it shows in rate() (the "State restore time" panel).
    metrics_port, web_port = free_port(), free_port()
    target = f"127.0.0.1:{metrics_port}"
    prometheus_log = tmp / "prometheus.log"
    with prometheus_log.open("wb") as out:
        prometheus = subprocess.Popen(
            [
                prometheus_bin,
                f"--config.file={scrape_config_for(tmp, target)}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{web_port}",
            ],
            stdout=out,
            stderr=out,
        )
    log = tmp / "worker.log"
    worker = None
    try:
        r = Run(
            url=f"http://127.0.0.1:{web_port}",
            instance=target,
            items=len(items),
            events=len(events),
            users=len({ev.user_id for ev in events}),
            log=log,
            prometheus_log=prometheus_log,
        )
        assert wait_for(lambda: _ready(r.url), 60), r.tail()
        worker = start_worker(
            bootstrap,
            prefix,
            log,
            {"FRESHREC_METRICS_HOST": "127.0.0.1", "FRESHREC_METRICS_PORT": str(metrics_port)},
        )
        assert wait_for(lambda: _up(r) or worker.poll() is not None, 240), r.tail()
        assert worker.poll() is None, r.tail()

        for value in BAD_EVENTS:
            producer.send(f"{prefix}events", key=b"bad-user", value=value)
        send(producer, prefix, events)
        sent = len(events) + len(BAD_EVENTS)
        consumed = 'sum(freshrec_events_consumed_total{job="freshrec"})'
        assert wait_for(lambda: _scalar(r, consumed) == sent, 240, step_s=0.5), r.tail()
        # ... and scraped at that value for 5 s, so that a series the last batch created has
        # samples enough for rate().
        settled = 'min_over_time(sum(freshrec_events_consumed_total{job="freshrec"})[5s:1s])'
        assert wait_for(lambda: _scalar(r, settled) == sent, 30, step_s=0.5), r.tail()
        # The lag gauges are updated on the polls after the last commit.
        lag = 'sum(freshrec_consumer_lag_events{job="freshrec"})'
        assert wait_for(lambda: _scalar(r, lag) == 0, 60, step_s=0.5), r.tail()
        yield r
    finally:
        producer.close(timeout=10)
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=90)
            except subprocess.TimeoutExpired:
                worker.kill()
        prometheus.terminate()
        try:
            prometheus.wait(timeout=30)
        except subprocess.TimeoutExpired:
            prometheus.kill()
        shutil.rmtree(tmp / "data", ignore_errors=True)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def _up(r: Run) -> bool:
    return r.query('up{job="freshrec"} == 1') != []


def _scalar(r: Run, expr: str) -> float | None:
    result = r.query(expr)
    return float(result[0]["value"][1]) if result else None


def test_prometheus_scrapes_the_worker_with_the_values_of_the_run(run: Run) -> None:
    assert run.values('up{job="freshrec"}') == {f"instance={run.instance},job=freshrec": 1.0}
    sel = f'{{job="freshrec", instance="{run.instance}"}}'
    assert run.value(f"freshrec_events_consumed_total{sel}") == run.events + len(BAD_EVENTS)
    assert run.value(f"freshrec_events_processed_total{sel}") == run.events
    rejected = run.values(f"freshrec_events_rejected_total{sel}")
    assert {k.split("reason=")[1].split(",")[0]: v for k, v in rejected.items()} == {
        "not_msgpack": 2.0,
        "not_a_map": 1.0,
    }
    assert run.value('freshrec_items_rejected_total{reason="not_msgpack"}') == 1
    assert run.value(f"freshrec_catalog_items{sel}") == run.items
    assert run.value(f"freshrec_users_in_state{sel}") == run.users
    published = run.value(f"freshrec_recommendations_published_total{sel}")
    assert 0 < published <= run.events
    assert run.value(f"freshrec_ready{sel}") == 1
    assert run.value(f"freshrec_assigned_partitions{sel}") == 3
    assert run.value('freshrec_rebalances_total{kind="assign"}') >= 1
    # One restore per assigned partition (from an empty changelog).
    assert run.value(f"freshrec_state_restore_seconds_count{sel}") == 3
    assert run.value(f"freshrec_state_records_written_total{sel}") >= run.users
    assert run.value(f"freshrec_event_to_publish_seconds_count{sel}") > 0
    assert run.value(f"freshrec_online_hit_trials_total{sel}") > 0
    assert 0 <= run.value(f"freshrec_online_hit_rate{sel}") <= 1
    assert math.isfinite(run.value(f"freshrec_train_loss{sel}"))
    lags = run.values(f"freshrec_consumer_lag_events{sel}")
    assert len(lags) == 3 and set(lags.values()) == {0.0}, lags
    assert set(run.values(f"freshrec_partition_stalled{sel}").values()) == {0.0}
    assert run.value(f"freshrec_backpressure{sel}") == 0
    assert list(run.values(f"freshrec_model_info{sel}").values()) == [1.0]
    # The CLI times the collector's pauses (young collections surely ran over 600 events) and
    # froze the start-up heap out of its walk.
    pauses = run.values(f"freshrec_gc_pause_seconds_count{sel}")
    assert {k.split("generation=")[1].split(",")[0] for k in pauses} == {"0", "1", "2"}
    assert run.value(f'freshrec_gc_pause_seconds_count{{generation="0", {sel[1:]}') > 0
    assert "start-up objects frozen out of its reach" in run.log.read_text()


def test_every_rule_group_loads_and_evaluates_healthy(run: Run) -> None:
    want: dict[str, set[str]] = {}
    for rule in load_rules():
        want.setdefault(rule["group"], set()).add(rule.get("alert") or rule["record"])

    def groups() -> dict[str, list[dict[str, Any]]]:
        found = run.api("rules")["groups"]
        assert {g["file"] for g in found} == {str(RULES.resolve())}
        return {g["name"]: g["rules"] for g in found}

    # Every rule has been evaluated at least once (health "unknown" before).
    assert wait_for(
        lambda: all(r["health"] != "unknown" for rs in groups().values() for r in rs), 30
    ), groups()
    loaded = groups()
    assert {name: {r["name"] for r in rules} for name, rules in loaded.items()} == want
    for rules in loaded.values():
        for r in rules:
            assert r["health"] == "ok", r
    # The run is healthy, so no critical alert is firing (or pending).
    alerts = run.api("alerts")["alerts"]
    assert not [a for a in alerts if a["labels"].get("severity") == "critical"], alerts


def test_every_dashboard_query_parses_and_returns_data(run: Run) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    titles = {p["title"] for p in query_panels(dashboard)}
    assert set(MAY_BE_EMPTY) <= titles, "a panel allowed to be empty is gone: update MAY_BE_EMPTY"

    # The template variables, resolved as Grafana would against this Prometheus.
    variables: dict[str, str] = {}
    for var in dashboard["templating"]["list"]:
        if var["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", var["definition"])
        assert match, var["definition"]
        series = run.api("series", **{"match[]": substitute(match[1], variables)})
        values = sorted({s[match[2]] for s in series if match[2] in s})
        assert values, f"variable {var['name']} has no values"
        # Grafana's regex formatting of the selected values (backslashes doubled in PromQL).
        variables[var["name"]] = "|".join(re.escape(v).replace("\\", "\\\\") for v in values)
    assert variables["instance"].replace("\\\\", "") == run.instance

    failed: list[str] = []
    ran = 0
    for panel in query_panels(dashboard):
        for target in panel["targets"]:
            expr = substitute(target["expr"], variables)
            try:
                samples = run.query(expr)
            except AssertionError as err:
                failed.append(f"does not parse: {panel['title']}/{target['refId']}: {err}")
                continue
            finite = [s for s in samples if math.isfinite(float(s["value"][1]))]
            if not finite and panel["title"] not in MAY_BE_EMPTY:
                failed.append(f"no data: {panel['title']}/{target['refId']}: {expr} -> {samples}")
            ran += 1
    assert not failed, "\n".join(failed)
    assert ran == sum(len(p["targets"]) for p in query_panels(dashboard))
