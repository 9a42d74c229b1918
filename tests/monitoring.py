"""Shared by the Prometheus and Grafana tests: the files under deploy/, the series the worker
exports, the metric names a PromQL expression uses, and a dashboard's queries."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = ROOT / "deploy/prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES = PROMETHEUS_DIR / "rules.yml"
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
DASHBOARD = ROOT / "deploy/grafana/freshrec.json"

# Series of each metric type, as Prometheus stores them (the text format's sample names).
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_NAME = re.compile(r"\bfreshrec[_:][a-zA-Z0-9_:]*")


def tool(variable: str) -> str:
    """The path in ``variable`` (set by the Makefile, which unpacks Debian's prometheus
    package); outside ``make`` the test is skipped, under it a missing binary fails."""
    path = os.environ.get(variable)
    if not path:
        pytest.skip(f"{variable} is not set: run under `make test` (target `tools` fetches it)")
    assert Path(path).is_file(), f"{variable}={path} does not exist: run `make tools`"
    return path


def exported_series() -> set[str]:
    """Every series name the worker's registry can export (whether or not it has a sample
    yet: labelled metrics have none until first used)."""
    from serving.reference import exported_families

    names = set()
    for family in exported_families():
        names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
    return names


def metric_names(expr: str) -> set[str]:
    """The freshrec series and recording rules an expression reads (label values and other
    strings are not names).

    >>> sorted(metric_names('sum by (topic) (freshrec_consumer_lag_events{job="freshrec_x"})'))
    ['freshrec_consumer_lag_events']
    >>> sorted(metric_names("freshrec:a:rate5m / on() freshrec_b_total"))
    ['freshrec:a:rate5m', 'freshrec_b_total']
    """
    return set(_NAME.findall(_STRING.sub('""', expr)))


def load_rules() -> list[dict[str, Any]]:
    """Every rule of rules.yml, each with its group's name under ``group``."""
    doc = yaml.safe_load(RULES.read_text())
    return [dict(rule, group=g["name"]) for g in doc["groups"] for rule in g["rules"]]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation other than ``-``
    and ``_`` dropped, spaces to ``-``.

    >>> github_anchor("Runbook: FreshrecWorkerDown")
    'runbook-freshrecworkerdown'
    """
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' collapsed children included."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def query_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """The panels that query (all but rows)."""
    return (p for p in panels(dashboard) if p["type"] != "row")


# What the Grafana built-ins stand for when a test runs a panel's query by itself.
BUILTINS = {"__rate_interval": "10m", "__interval": "1m", "__range": "10m"}


def substitute(expr: str, variables: Mapping[str, str]) -> str:
    """``expr`` with ``$name``, ``${name}`` and ``[[name]]`` replaced; an unknown variable is
    an error.

    >>> substitute('rate(x{instance=~"$instance"}[$__rate_interval])', {"instance": "a"})
    'rate(x{instance=~"a"}[10m])'
    """
    values = {**BUILTINS, **variables}

    def value(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        if name not in values:
            raise KeyError(f"unknown variable ${name} in {expr!r}")
        return values[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]", value, expr)
