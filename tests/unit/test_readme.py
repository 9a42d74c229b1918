"""The README stays the operator's reference: every setting and every series is in it."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from consumer.codec import REASONS
from consumer.config import WorkerConfig, env_name
from consumer.worker import UNKNOWN_ITEM
from serving.metrics import WorkerMetrics
from serving.reference import render

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_readme_opens_with_the_two_commands() -> None:
    first_block = README.split("```")[1]
    assert "make run" in first_block and "make test" in first_block


def test_readme_documents_every_setting_with_its_flag_and_variable() -> None:
    for f in fields(WorkerConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.metadata.get("env_only"):  # a secret: no flag
            assert f"| (none) | `{env_name(f.name)}`" in README, env_name(f.name)
        else:
            assert f"`{flag}` | `{env_name(f.name)}`" in README, flag


def test_readme_names_every_metric_series() -> None:
    names = {
        metric.name for metric in WorkerMetrics().registry.collect() if metric.name != "target_info"
    }
    documented = set(re.findall(r"freshrec_[a-z_]+", README))
    for name in names:
        assert name in documented or f"{name}_total" in documented, name


def test_readme_reference_tables_are_generated_from_the_current_code() -> None:
    assert render(README) == README, "README.md's settings or metrics table is stale: make docs"


def test_readme_names_every_dead_letter_reason() -> None:
    for reason in REASONS | {UNKNOWN_ITEM}:
        assert f"`{reason}`" in README, reason
