"""The TOML config file: the layer of settings between the environment and the defaults.

A file holds settings as top-level keys named like the dataclass fields (``top_k = 20``,
``bootstrap_servers = "kafka:9092"``). Tables (``[name]``) are kept for sections that are not
worker settings and are refused until one is defined. Secrets are refused too: a config file
is copied, diffed and pasted into tickets, so a password belongs in its variable or in
``sasl_password_file``.

Examples
--------
>>> import tempfile, os
>>> from consumer.config import WorkerConfig
>>> with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
...     _ = f.write('top_k = 20\\nbootstrap_servers = "kafka:9092"\\n')
>>> read_config_file(f.name, WorkerConfig)
{'top_k': 20, 'bootstrap_servers': 'kafka:9092'}
>>> os.unlink(f.name)
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

from consumer.exceptions import ConfigError

__all__ = ["CONFIG_ENV", "read_config_file", "to_toml"]

# The variable naming the config file, when --config is not given.
CONFIG_ENV = "FRESHREC_CONFIG"


def read_config_file(path: str | Path, cls: type[Any]) -> dict[str, Any]:
    """The settings a TOML file sets, checked against ``cls``'s fields and types.

    Raises :class:`ConfigError` naming the file (and the key) for a file that cannot be read
    or parsed, an unknown key (with the closest setting's name), a secret, or a value of the
    wrong type. An integer is accepted for a float setting.
    """
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ConfigError(f"config file {where}: no such file") from err
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        raise ConfigError(f"config file {where}: cannot read: {reason}") from err
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {where}: not valid TOML: {err}") from err
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            raise ConfigError(f"config file {where}: unknown section [{key}]")
        f = known.get(key)
        if f is None:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"config file {where}: unknown setting {key!r}{hint}")
        if f.metadata.get("env_only"):
            raise ConfigError(
                f"config file {where}: {key} is a secret and is not read from a file that "
                f"may be shared; set FRESHREC_{key.upper()} or sasl_password_file instead"
            )
        values[key] = _typed(value, str(f.type), f"config file {where}: {key}")
    return values


def _typed(value: object, kind: str, where: str) -> Any:
    expected: dict[str, tuple[type, ...]] = {
        "int": (int,),
        "float": (int, float),
        "bool": (bool,),
        "str": (str,),
    }
    allowed = expected[kind]
    # bool is an int in Python; TOML's true is not a number of events.
    if (isinstance(value, bool) and kind != "bool") or not isinstance(value, allowed):
        raise ConfigError(f"{where} must be a TOML {kind}, not {type(value).__name__} {value!r}")
    if kind == "float":
        assert isinstance(value, int | float)
        return float(value)
    return value


def to_toml(values: dict[str, Any], comments: dict[str, str] | None = None) -> str:
    """Settings as TOML text that :func:`read_config_file` reads back, with an optional
    end-of-line comment per key.

    Examples
    --------
    >>> print(to_toml({"top_k": 5, "group_id": 'a "b"', "ratio": 0.5, "on": True},
    ...               {"top_k": "from FRESHREC_TOP_K"}))
    top_k = 5  # from FRESHREC_TOP_K
    group_id = "a \\"b\\""
    ratio = 0.5
    on = true
    """
    comments = comments or {}
    lines = []
    for key, value in values.items():
        line = f"{key} = {_toml_value(value)}"
        if key in comments:
            line += f"  # {comments[key]}"
        lines.append(line)
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    text = text.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    return f'"{text}"'
