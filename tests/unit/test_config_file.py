"""Specifications of the TOML config file and `freshrec config show`.

Precedence: flag > environment variable > config file > default.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from consumer.cli import main
from consumer.config import WorkerConfig, add_arguments, config_from_args, resolve_config
from consumer.config_file import read_config_file, read_rules, rules_to_toml
from consumer.exceptions import ConfigError
from learner.rules import Rules


def build(
    argv: Sequence[str] = (), environ: Mapping[str, str] | None = None
) -> tuple[WorkerConfig, dict[str, str]]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config, origin = resolve_config(parser.parse_args(list(argv)), dict(environ or {}))
    return config, origin


@pytest.fixture
def toml(tmp_path: Path) -> Path:
    path = tmp_path / "freshrec.toml"
    path.write_text(
        'top_k = 20\nbatch_size = 100\ngroup_id = "from-file"\nhead_lr = 1\n'
        "create_topics = false\n",
        encoding="utf-8",
    )
    return path


def test_file_values_are_used_where_no_flag_or_variable_is_given(toml: Path) -> None:
    config, origin = build(["--config", str(toml)])
    assert (config.top_k, config.batch_size, config.group_id) == (20, 100, "from-file")
    assert config.create_topics is False
    assert config.head_lr == 1.0 and isinstance(config.head_lr, float)
    assert origin["top_k"] == f"file {toml}"


def test_flag_beats_variable_beats_file_beats_default(toml: Path) -> None:
    config, origin = build(
        ["--config", str(toml), "--top-k", "7"],
        {"FRESHREC_TOP_K": "5", "FRESHREC_BATCH_SIZE": "50"},
    )
    assert config.top_k == 7 and origin["top_k"] == "--top-k"
    assert config.batch_size == 50 and origin["batch_size"] == "FRESHREC_BATCH_SIZE"
    assert config.group_id == "from-file"
    assert config.poll_timeout_ms == WorkerConfig().poll_timeout_ms
    assert "poll_timeout_ms" not in origin


def test_freshrec_config_variable_names_the_file(toml: Path) -> None:
    config, _ = build([], {"FRESHREC_CONFIG": str(toml)})
    assert config.top_k == 20


def test_config_flag_beats_the_variable(toml: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.toml"
    other.write_text("top_k = 3\n", encoding="utf-8")
    config, _ = build(["--config", str(other)], {"FRESHREC_CONFIG": str(toml)})
    assert config.top_k == 3


def test_unknown_key_is_refused_with_the_closest_setting(tmp_path: Path) -> None:
    path = tmp_path / "typo.toml"
    path.write_text("topk = 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"unknown setting 'topk' \(did you mean 'top_k'\?\)"):
        build(["--config", str(path)])


def test_secrets_are_refused_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "secret.toml"
    path.write_text('sasl_password = "hunter2"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="FRESHREC_SASL_PASSWORD") as info:
        build(["--config", str(path)])
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    "line, kind",
    [('top_k = "10"', "int"), ("top_k = true", "int"), ("create_topics = 1", "bool"),
     ("group_id = 3", "str"), ('head_lr = "fast"', "float")],
)  # fmt: skip
def test_wrong_types_name_the_file_and_the_key(tmp_path: Path, line: str, kind: str) -> None:
    path = tmp_path / "types.toml"
    path.write_text(line + "\n", encoding="utf-8")
    key = line.split()[0]
    with pytest.raises(ConfigError, match=f"{path}: {key} must be a TOML {kind}"):
        build(["--config", str(path)])


def test_values_from_the_file_are_validated_like_any_other(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('guarantee = "at-most-once"\ntop_k = 0\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"guarantee \(from file .*bad.toml\) must be one of"):
        build(["--config", str(path)])


@pytest.mark.parametrize(
    "text, message",
    [("top_k = ", "not valid TOML"), ("[logging]\nx = 1\n", r"unknown section \[logging\]")],
)
def test_unreadable_files_are_config_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        build(["--config", str(path)])


def test_a_missing_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no-such\.toml: no such file"):
        build(["--config", str(tmp_path / "no-such.toml")])


def test_relative_paths_and_numbers_in_the_file_keep_their_meaning(tmp_path: Path) -> None:
    path = tmp_path / "f.toml"
    path.write_text('state_dir = "state"\nmax_event_bytes = 65536\n', encoding="utf-8")
    assert read_config_file(path, WorkerConfig) == {"state_dir": "state", "max_event_bytes": 65536}


def run_show(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["config", "show", *argv]) == 0
    return capsys.readouterr().out


def test_config_show_prints_toml_that_reads_back_as_the_same_settings(
    toml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FRESHREC_BATCH_SIZE", "50")
    out = run_show(["--config", str(toml), "--top-k", "7"], capsys)
    assert "top_k = 7  # from --top-k" in out
    assert "batch_size = 50  # from FRESHREC_BATCH_SIZE" in out
    assert f'group_id = "from-file"  # from file {toml}' in out
    shown = tmp_path / "shown.toml"
    shown.write_text(out, encoding="utf-8")
    monkeypatch.delenv("FRESHREC_BATCH_SIZE")
    again = config_from_args(argparse.Namespace(config=str(shown)), {})
    expected = config_from_args(argparse.Namespace(config=str(toml), top_k=7, batch_size=50), {})
    assert again == expected


def test_config_show_never_prints_a_secret(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FRESHREC_SASL_PASSWORD", "hunter2-secret")
    argv = ["--security-protocol", "SASL_PLAINTEXT", "--sasl-username", "me"]
    out = run_show(argv, capsys)
    assert "hunter2-secret" not in out
    assert "# sasl_password: set, from FRESHREC_SASL_PASSWORD" in out
    out_json = run_show([*argv, "--format", "json"], capsys)
    assert "hunter2-secret" not in out_json
    assert json.loads(out_json)["settings"]["sasl_password"] == "********"


def test_version_names_freshrec_and_its_components(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("freshrec 0.") and "torch" in out and "kafka-python" in out


def test_commands_without_an_action_show_their_usage(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("topics", "config"):
        with pytest.raises(SystemExit) as info:
            main([command])
        assert info.value.code == 2
        assert "ACTION" in capsys.readouterr().err


# -- the [rules] table ----------------------------------------------------------------------

RULES_TOML = """top_k = 12

[rules]
exclude_items = ["1373", "1374"]

[rules.exclude_values]
genres = ["Horror", "Film-Noir"]
year = [1995]

[rules.max_per_value]
genres = 3
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_rules_table_becomes_a_rules_value_beside_the_settings(tmp_path: Path) -> None:
    path = write(tmp_path, RULES_TOML)
    assert read_rules(path) == Rules(
        ["1373", "1374"], {"genres": ["Horror", "Film-Noir"], "year": [1995]}, {"genres": 3}
    )
    assert read_config_file(path, WorkerConfig) == {"top_k": 12}


def test_no_file_or_no_table_means_no_rules(tmp_path: Path) -> None:
    assert read_rules(None) == Rules() and not read_rules(None).active
    assert read_rules(write(tmp_path, "top_k = 3\n")) == Rules()


@pytest.mark.parametrize(
    "text, message",
    [
        (
            '[rules]\nexclude_item = ["a"]\n',
            r"rules\.exclude_item: unknown rule \(did you mean 'exclude_items'\?\)",
        ),
        ('[rules]\nexclude_items = "a"\n', r"rules\.exclude_items must be a list of item ids"),
        ('[rules]\nexclude_items = [""]\n', r"rules\.exclude_items must be a list"),
        ('[rules]\nexclude_values = ["Horror"]\n', r"rules\.exclude_values must be a table"),
        (
            '[rules.exclude_values]\ngenres = "Horror"\n',
            r"rules\.exclude_values\.genres must be a list",
        ),
        (
            "[rules.exclude_values]\ngenres = [true]\n",
            r"rules\.exclude_values\.genres must be a list",
        ),
        (
            "[rules.max_per_value]\ngenres = 0\n",
            r"rules\.max_per_value\.genres must be an integer of at least 1",
        ),
        (
            "[rules.max_per_value]\ngenres = 2.5\n",
            r"rules\.max_per_value\.genres must be an integer",
        ),
        ('rules = "none"\n', r"rules must be a table"),
    ],
)
def test_bad_rules_are_errors_naming_the_file_and_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        read_rules(path)
    assert str(path) in str(info.value)
    # Every command reads the settings of the same file, and refuses it too.
    with pytest.raises(ConfigError, match=message):
        read_config_file(path, WorkerConfig)


def test_rules_print_as_toml_that_reads_back_to_the_same_rules(tmp_path: Path) -> None:
    rules = read_rules(write(tmp_path, RULES_TOML))
    again = tmp_path / "again.toml"
    again.write_text(rules_to_toml(rules), encoding="utf-8")
    assert read_rules(again) == rules
    assert rules_to_toml(Rules()) == ""


def test_config_show_prints_the_rules_table_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, RULES_TOML)
    out = run_show(["--config", str(path)], capsys)
    assert "[rules]" in out and 'genres = ["Film-Noir", "Horror"]' in out
    shown = tmp_path / "shown.toml"
    shown.write_text(out, encoding="utf-8")
    assert read_rules(shown) == read_rules(path)
    assert config_from_args(argparse.Namespace(config=str(shown)), {}).top_k == 12
    as_json = json.loads(run_show(["--config", str(path), "--format", "json"], capsys))
    assert as_json["rules"]["max_per_value"] == {"genres": 3}


def test_diversity_must_lie_between_zero_and_one() -> None:
    assert build(["--diversity", "0.3"])[0].diversity == 0.3
    with pytest.raises(ConfigError, match=r"diversity \(from --diversity\) must lie in \[0, 1\]"):
        build(["--diversity", "1.5"])
