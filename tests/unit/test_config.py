"""Specifications of consumer.config and `freshrec worker --help`: flag > env > default."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping, Sequence

import pytest

from consumer.cli import main
from consumer.config import WorkerConfig, add_arguments, config_from_args, env_name
from consumer.exceptions import ConfigError
from learner.exceptions import FreshrecError


def parse(argv: Sequence[str] = ()) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def build(argv: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> WorkerConfig:
    config: WorkerConfig = config_from_args(parse(argv), {} if environ is None else environ)
    return config


# One setting of each type: (field, flag value, env value, parsed flag, parsed env).
SETTINGS = [
    ("top_k", "7", "5", 7, 5),
    ("head_lr", "0.5", "0.25", 0.5, 0.25),
    ("create_topics", "false", "no", False, False),
    ("group_id", "from-flag", "from-env", "from-flag", "from-env"),
    ("log_level", "DEBUG", "WARNING", "DEBUG", "WARNING"),
]


@pytest.mark.parametrize("name, flag_value, env_value, from_flag, from_env", SETTINGS)
def test_flag_beats_environment_beats_default(
    name: str, flag_value: str, env_value: str, from_flag: object, from_env: object
) -> None:
    flag = ["--" + name.replace("_", "-"), flag_value]
    env = {env_name(name): env_value}
    default = getattr(WorkerConfig(), name)

    assert getattr(build(flag, env), name) == from_flag
    assert getattr(build((), env), name) == from_env
    assert getattr(build((), {}), name) == default


def test_no_flags_and_no_environment_give_the_documented_defaults() -> None:
    assert build() == WorkerConfig()


def test_environment_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRESHREC_BATCH_SIZE", "42")
    monkeypatch.setenv("FRESHREC_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    config = config_from_args(parse())
    assert config.batch_size == 42
    assert config.bootstrap_servers == "k1:9092,k2:9092"


def test_variables_without_the_prefix_are_ignored() -> None:
    assert build((), {"TOP_K": "99", "freshrec_top_k": "98"}).top_k == WorkerConfig().top_k


@pytest.mark.parametrize("text", ["1", "true", "YES", " on "])
def test_boolean_environment_values_accept_common_spellings_of_true(text: str) -> None:
    assert build((), {"FRESHREC_CREATE_TOPICS": text}).create_topics is True


@pytest.mark.parametrize(
    "variable, value",
    [
        ("FRESHREC_TOP_K", "ten"),
        ("FRESHREC_BATCH_SIZE", "1.5"),
        ("FRESHREC_HEAD_LR", "fast"),
        ("FRESHREC_CREATE_TOPICS", "maybe"),
        ("FRESHREC_METRICS_PORT", ""),
    ],
)
def test_unparsable_environment_value_raises_config_error_naming_the_variable(
    variable: str, value: str
) -> None:
    with pytest.raises(ConfigError) as info:
        build((), {variable: value})
    assert variable in str(info.value)
    assert isinstance(info.value, FreshrecError)


@pytest.mark.parametrize(
    "argv",
    [["--top-k", "0"], ["--batch-size", "0"], ["--partitions", "0"], ["--head-lr", "-0.1"]],
)
def test_out_of_range_values_raise_config_error(argv: list[str]) -> None:
    with pytest.raises(ConfigError):
        build(argv)


def test_value_outside_choices_from_environment_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="log_level"):
        build((), {"FRESHREC_LOG_LEVEL": "CHATTY"})


def test_flag_outside_choices_is_refused_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse(["--log-level", "CHATTY"])
    assert info.value.code == 2
    assert "--log-level" in capsys.readouterr().err


@pytest.mark.parametrize(
    "variable, value",
    [("FRESHREC_BATCH_SIZE", "0"), ("FRESHREC_TOP_K", "-3"), ("FRESHREC_LOG_LEVEL", "CHATTY")],
)
def test_out_of_range_environment_value_error_names_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        build((), {variable: value})
    assert variable in str(info.value)


def test_config_is_frozen() -> None:
    config = build()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.top_k = 3  # type: ignore[misc]


def test_topic_names_carry_the_prefix() -> None:
    config = build(["--topic-prefix", "shop."])
    assert (
        config.events_topic,
        config.items_topic,
        config.recommendations_topic,
        config.dlq_topic,
    ) == ("shop.events", "shop.items", "shop.recommendations", "shop.events.dlq")


@pytest.fixture
def worker_help(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> str:
    """The text of `freshrec worker --help`, normalised to single spaces."""
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as info:
        main(["worker", "--help"])
    assert info.value.code == 0
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(WorkerConfig)])
def test_worker_help_documents_every_setting_with_flag_and_variable(
    worker_help: str, field: str
) -> None:
    env_only = {f.name: f.metadata.get("env_only") for f in dataclasses.fields(WorkerConfig)}[field]
    flag = "--" + field.replace("_", "-") + " "
    # Secrets have a variable only: a flag's value would show in `ps`.
    assert (flag not in worker_help) if env_only else (flag in worker_help)
    assert "FRESHREC_" + field.upper() in worker_help


def test_worker_help_shows_defaults(worker_help: str) -> None:
    assert "default: 500" in worker_help  # batch_size
    assert "default: 'freshrec.'" in worker_help  # topic_prefix
