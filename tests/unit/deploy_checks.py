"""What the deploy/ tests share: the worker's effective settings and its graceful-stop budget."""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import fields
from typing import Any

from consumer.config import ENV_PREFIX, Secret, WorkerConfig, add_arguments

__all__ = [
    "CLOSE_MARGIN_S",
    "effective_settings",
    "graceful_stop_s",
    "image_instructions",
    "setting_of",
]

# After its last commit a stopping worker sends its model tombstone, leaves the group and
# closes its clients: a few seconds on a healthy cluster.
CLOSE_MARGIN_S = 15.0


def setting_of(variable: str) -> str | None:
    """The setting a ``FRESHREC_*`` variable sets, or None when it is not one.

    Examples
    --------
    >>> setting_of("FRESHREC_DEVICE"), setting_of("FRESHREC_DEVISE"), setting_of("HOME")
    ('device', None, None)
    """
    if not variable.startswith(ENV_PREFIX):
        return None
    name = variable[len(ENV_PREFIX) :].lower()
    return name if name in {f.name for f in fields(WorkerConfig)} else None


def effective_settings(
    file_values: Mapping[str, Any], environ: Iterable[tuple[str, str]] = ()
) -> dict[str, Any]:
    """The defaults of consumer/config.py, overridden by a config file's values, overridden by
    ``FRESHREC_*`` variables (read by the worker's own parser), the worker's precedence.

    Examples
    --------
    >>> s = effective_settings({"partitions": 12}, [("FRESHREC_COMMIT_TIMEOUT_S", "5")])
    >>> s["partitions"], s["commit_timeout_s"], s["delivery_timeout_s"]
    (12, 5.0, 30.0)
    """
    values = {f.name: f.default for f in fields(WorkerConfig)}
    values.update(file_values)
    for variable, raw in environ:
        name = setting_of(variable)
        if name is None:
            raise KeyError(f"{variable} is not a freshrec setting")
        values[name] = _parse(name, raw)
    return values


def _parse(name: str, raw: str) -> Any:
    """One setting's text as the worker's own flag parser converts it (a secret has no flag)."""
    spec = next(f for f in fields(WorkerConfig) if f.name == name)
    if spec.metadata.get("env_only"):
        return Secret(raw)
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_arguments(parser, only=[name])
    return getattr(parser.parse_args(["--" + name.replace("_", "-"), raw]), name)


def graceful_stop_s(settings: Mapping[str, Any]) -> float:
    """The longest a SIGTERM'd worker spends finishing the batch in hand and committing it.

    The loop stops after the current step (consumer/worker.py, ``Worker.stop``): at most one
    poll, the flush of the batch's recommendations and dead letters and then the flush of its
    state records (each bounded by ``delivery_timeout_s``; a failed one is not retried once
    stopping), and the offset commit: ``commit_timeout_s`` under exactly-once, kafka-python's
    ``request_timeout_ms`` (freshrec keeps its default) for the consumer's own commit under
    at-least-once. Its clients close after that (:data:`CLOSE_MARGIN_S`).

    Examples
    --------
    >>> graceful_stop_s(effective_settings({}))  # the defaults: 0.5 + 2 x 30 + 30
    90.5
    """
    from kafka import KafkaConsumer

    request_timeout_s = KafkaConsumer.DEFAULT_CONFIG["request_timeout_ms"] / 1000.0
    return (
        settings["poll_timeout_ms"] / 1000.0
        + 2 * settings["delivery_timeout_s"]
        + max(settings["commit_timeout_s"], request_timeout_s)
    )


def image_instructions(dockerfile: str) -> tuple[list[tuple[str, str]], str | None]:
    r"""The ``ENV`` pairs (in order) and the ``USER`` of a Dockerfile's last stage: the image
    a container runs, whose variables beat the config file (environment > file).

    Examples
    --------
    >>> text = "FROM a AS build\nENV X=1\nFROM b\n# note\nENV A=1 \\\n    B='two words'\n"
    >>> image_instructions(text + "ENV C 3\nUSER 10001:10001\nCMD [\"worker\"]\n")
    ([('A', '1'), ('B', 'two words'), ('C', '3')], '10001:10001')
    """
    pairs: list[tuple[str, str]] = []
    user = None
    for line in re.sub(r"\\\n", " ", dockerfile).splitlines():
        words = line.strip().split(maxsplit=1)
        if not words or words[0].startswith("#"):
            continue
        instruction, rest = words[0].upper(), words[1] if len(words) > 1 else ""
        if instruction == "FROM":
            pairs, user = [], None
        elif instruction == "USER":
            user = rest.strip()
        elif instruction == "ENV":
            tokens = shlex.split(rest)
            if tokens and "=" not in tokens[0]:  # the legacy form: ENV NAME value
                pairs.append((tokens[0], rest.split(maxsplit=1)[1].strip()))
                continue
            pairs.extend((n, v) for n, _, v in (t.partition("=") for t in tokens))
    return pairs, user
