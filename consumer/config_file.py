"""The TOML config file: the layer of settings between the environment and the defaults.

A file holds settings as top-level keys named like the dataclass fields (``top_k = 20``,
``bootstrap_servers = "kafka:9092"``). Tables (``[name]``) are sections that are not worker
settings: ``[rules]`` holds the business rules of every published list (:func:`read_rules`,
into a :class:`~learner.rules.Rules`); any other table is refused. Secrets are refused too: a
config file is copied, diffed and pasted into tickets, so a password belongs in its variable
or in ``sasl_password_file``.

The ``[rules]`` table::

    [rules]
    exclude_items = ["1373", "1374"]   # item ids never recommended

    [rules.exclude_values]             # attribute = values whose items are never recommended
    genres = ["Horror", "Film-Noir"]

    [rules.max_per_value]              # attribute = most items of one value in a list
    genres = 3

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
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from consumer.exceptions import ConfigError
from learner.rules import Rules

__all__ = [
    "CONFIG_ENV",
    "RULES_TABLE",
    "config_path",
    "read_config_file",
    "read_rules",
    "rules_to_toml",
    "to_toml",
]

# The variable naming the config file, when --config is not given.
CONFIG_ENV = "FRESHREC_CONFIG"
RULES_TABLE = "rules"
_RULE_KEYS = ("exclude_items", "exclude_values", "max_per_value")


def config_path(args: object, environ: Mapping[str, str]) -> str | None:
    """The config file a command reads: ``--config`` if given, else ``FRESHREC_CONFIG``.

    Examples
    --------
    >>> import argparse
    >>> config_path(argparse.Namespace(config=None), {"FRESHREC_CONFIG": "a.toml"})
    'a.toml'
    """
    return getattr(args, "config", None) or environ.get(CONFIG_ENV) or None


def _load(path: str | Path) -> dict[str, Any]:
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ConfigError(f"config file {where}: no such file") from err
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        raise ConfigError(f"config file {where}: cannot read: {reason}") from err
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {where}: not valid TOML: {err}") from err


def read_config_file(path: str | Path, cls: type[Any]) -> dict[str, Any]:
    """The settings a TOML file sets, checked against ``cls``'s fields and types.

    Raises :class:`ConfigError` naming the file (and the key) for a file that cannot be read
    or parsed, an unknown key (with the closest setting's name), a secret, or a value of the
    wrong type. An integer is accepted for a float setting.
    """
    where = str(path)
    data = _load(path)
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key == RULES_TABLE:
            _parse_rules(value, path)  # checked here too, so every command refuses bad rules
            continue
        if isinstance(value, dict):
            raise ConfigError(
                f"config file {where}: unknown section [{key}] (the only section is "
                f"[{RULES_TABLE}])"
            )
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


def read_rules(path: str | Path | None) -> Rules:
    """The ``[rules]`` table of a config file as a :class:`~learner.rules.Rules` (no rules
    when ``path`` is None or the file has no such table).

    Raises :class:`ConfigError` naming the file and the key (``rules.max_per_value.genres``)
    for an unknown key, a value of the wrong type, or a cap below 1.

    Examples
    --------
    >>> import tempfile, os
    >>> with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
    ...     _ = f.write('top_k = 5\\n[rules]\\nexclude_items = ["a"]\\n'
    ...                 '[rules.max_per_value]\\ngenres = 3\\n')
    >>> read_rules(f.name)
    Rules(exclude_items=['a'], max_per_value={'genres': 3})
    >>> os.unlink(f.name)
    """
    if path is None:
        return Rules()
    return _parse_rules(_load(path).get(RULES_TABLE), path)


def _parse_rules(table: object, path: str | Path) -> Rules:
    where = f"config file {path}: {RULES_TABLE}"
    if table is None:
        return Rules()
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table ([{RULES_TABLE}]), not {_kind(table)}")
    for key in table:
        if key not in _RULE_KEYS:
            close = difflib.get_close_matches(key, _RULE_KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"{where}.{key}: unknown rule{hint}; rules are {', '.join(_RULE_KEYS)}"
            )
    items = table.get("exclude_items", [])
    if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
        raise ConfigError(
            f"{where}.exclude_items must be a list of item ids (non-empty strings), not {items!r}"
        )
    exclude: dict[str, list[object]] = {}
    for name, values in _subtable(table, "exclude_values", where).items():
        ok = isinstance(values, list) and all(
            isinstance(v, str | int | float) and not isinstance(v, bool) for v in values
        )
        if not ok:
            raise ConfigError(
                f"{where}.exclude_values.{name} must be a list of strings or numbers "
                f"(values of the item attribute {name!r}), not {values!r}"
            )
        exclude[name] = values
    caps: dict[str, int] = {}
    for name, cap in _subtable(table, "max_per_value", where).items():
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
            raise ConfigError(
                f"{where}.max_per_value.{name} must be an integer of at least 1 (the most "
                f"items of one {name!r} value in a list), not {cap!r}"
            )
        caps[name] = cap
    return Rules(items, exclude, caps)


def _subtable(table: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = table.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(
            f"{where}.{key} must be a table ([{RULES_TABLE}.{key}], attribute = ...), "
            f"not {_kind(value)}"
        )
    return value


def _kind(value: object) -> str:
    return f"{type(value).__name__} {value!r}"


def rules_to_toml(rules: Rules) -> str:
    """The ``[rules]`` table that :func:`read_rules` reads back to ``rules`` ("" for none).

    Examples
    --------
    >>> print(rules_to_toml(Rules(["a"], {"genres": ["Horror"]}, {"genres": 3})))
    [rules]
    exclude_items = ["a"]
    <BLANKLINE>
    [rules.exclude_values]
    genres = ["Horror"]
    <BLANKLINE>
    [rules.max_per_value]
    genres = 3
    """
    if not rules.active:
        return ""
    data = rules.as_dict()
    lines = [f"[{RULES_TABLE}]"]
    if "exclude_items" in data:
        lines.append(f"exclude_items = {_toml_value(data['exclude_items'])}")
    for key in ("exclude_values", "max_per_value"):
        table = data.get(key)
        if isinstance(table, dict):
            lines += ["", f"[{RULES_TABLE}.{key}]"]
            lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines)


def _toml_key(key: str) -> str:
    bare = key and all(c.isascii() and (c.isalnum() or c in "-_") for c in key)
    return key if bare else _toml_value(key)


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
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    text = text.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    return f'"{text}"'
