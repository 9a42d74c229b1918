"""The README's reference tables, generated from the code: every setting and every metric.

``python -m serving.reference`` (or ``make docs``) rewrites the blocks between
``<!-- BEGIN generated: NAME -->`` and ``<!-- END generated: NAME -->`` in README.md;
``--check`` only says whether they are current (the unit tests run that check, so a new
setting or metric without its README row fails the suite).

Examples
--------
>>> print(metrics_table().splitlines()[2])
| `freshrec_events_consumed_total` | counter | | Event records read from Kafka |
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from dataclasses import MISSING, fields
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = ["BLOCKS", "exported_families", "metrics_table", "render", "settings_table"]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def settings_table() -> str:
    """Markdown rows: flag, variable, default, help of every ``WorkerConfig`` field."""
    from consumer.config import WorkerConfig, env_name

    rows = [
        "| flag | environment variable | default | what it does |",
        "|---|---|---|---|",
    ]
    for f in fields(WorkerConfig):
        flag = "(none)" if f.metadata.get("env_only") else f"`--{f.name.replace('_', '-')}`"
        default = "" if f.default is MISSING else f"`{f.default!r}`"
        if f.metadata.get("env_only"):
            default = "unset"
        rows.append(f"| {flag} | `{env_name(f.name)}` | {default} | {_cell(f.metadata['help'])} |")
    return "\n".join(rows)


def metrics_table() -> str:
    """Markdown rows: name, type, labels, help of every series the worker can export
    (the GPU series only on CUDA)."""
    families = exported_families()
    rows = ["| series | type | labels | what it measures |", "|---|---|---|---|"]
    for family in families:
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = sorted(
            {k for s in family.samples for k in s.labels if k not in ("le", "quantile")}
            | set(_declared_labels(family.name))
        )
        note = " (CUDA only)" if name.startswith("freshrec_gpu_") else ""
        label_text = ", ".join(f"`{k}`" for k in labels)
        rows.append(
            f"| `{name}` | {family.type} | {label_text} | {_cell(family.documentation)}{note} |"
        )
    return "\n".join(rows).replace("|  |", "| |")


def exported_families() -> list[Metric]:
    """Every metric family a worker can export: its registry's, and the GPU collector's
    (registered only on CUDA; read here through a stand-in for ``torch.cuda``)."""
    from serving.gpu import GpuCollector
    from serving.metrics import WorkerMetrics

    class _NoGpu:
        def utilization(self, device: str) -> int:
            return 0

        def mem_get_info(self, device: str) -> tuple[int, int]:
            return (0, 0)

    families = [m for m in WorkerMetrics().registry.collect() if m.name != "target_info"]
    return families + list(GpuCollector("cuda", _NoGpu()).collect())


def _declared_labels(name: str) -> tuple[str, ...]:
    """Labels of a family that has no samples yet (labelled metrics start empty)."""
    from serving.metrics import WorkerMetrics

    for value in vars(WorkerMetrics()).values():
        if getattr(value, "_name", None) == name:
            return tuple(getattr(value, "_labelnames", ()))
    return ()


BLOCKS = {"settings": settings_table, "metrics": metrics_table}


def render(text: str) -> str:
    """``text`` with every generated block replaced by its current content."""
    for name, make in BLOCKS.items():
        pattern = re.compile(
            rf"(<!-- BEGIN generated: {name} [^\n]*-->\n).*?(\n<!-- END generated: {name} -->)",
            re.S,
        )
        if not pattern.search(text):
            raise ValueError(f"README has no generated block {name!r}")
        text = pattern.sub(_replacement(make()), text)
    return text


def _replacement(body: str) -> Callable[[re.Match[str]], str]:
    return lambda m: m.group(1) + body + m.group(2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readme", default="README.md")
    parser.add_argument("--check", action="store_true", help="exit 1 if the README is stale")
    args = parser.parse_args(argv)
    path = Path(args.readme)
    text = path.read_text(encoding="utf-8")
    new = render(text)
    if args.check:
        if new != text:
            print(f"{path} is stale: run `make docs`", file=sys.stderr)
            return 1
        return 0
    path.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
