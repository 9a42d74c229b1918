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
from consumer.config_file import read_config_file
from consumer.exceptions import ConfigError


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
