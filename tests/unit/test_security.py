"""Specifications of the Kafka security settings, the secret that is never printed, the login
check's reading of kafka-python's failures, and the /metrics bind address."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import socket
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, errors

import consumer.security
from consumer.cli import main
from consumer.config import (
    Secret,
    WorkerConfig,
    add_arguments,
    config_from_args,
    describe,
)
from consumer.exceptions import ConfigError, KafkaSecurityError
from consumer.security import _LoginFailureWatch, check_kafka_login, kafka_security_settings
from serving.http import MetricsServer
from serving.metrics import WorkerMetrics

PASSWORD = "s3cret-Pa55word-9f2c"
A_FILE = __file__  # a file that exists


def build(argv: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> WorkerConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config: WorkerConfig = config_from_args(parser.parse_args(list(argv)), environ or {})
    return config


def sasl(**overrides: object) -> WorkerConfig:
    settings: dict[str, object] = {
        "security_protocol": "SASL_SSL",
        "sasl_username": "app",
        "sasl_password": Secret(PASSWORD),
    }
    settings.update(overrides)
    return WorkerConfig(**settings)


# -- the keyword arguments of every client ---------------------------------------------------


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"])
@pytest.mark.parametrize("client", [KafkaProducer, KafkaConsumer, KafkaAdminClient])
def test_every_setting_is_a_real_kafka_python_parameter(protocol: str, client: type) -> None:
    config = sasl(security_protocol=protocol)
    if not protocol.startswith("SASL_"):
        config = WorkerConfig(security_protocol=protocol)
    assert set(kafka_security_settings(config)) <= set(client.DEFAULT_CONFIG)


def test_plaintext_sets_nothing_but_the_protocol() -> None:
    assert kafka_security_settings(WorkerConfig()) == {"security_protocol": "PLAINTEXT"}


def test_sasl_ssl_passes_mechanism_credentials_and_tls_files(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    config = sasl(sasl_mechanism="SCRAM-SHA-256", ssl_cafile=str(ca), ssl_check_hostname=False)
    assert kafka_security_settings(config) == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "app",
        "sasl_plain_password": PASSWORD,
        "ssl_check_hostname": False,
        "ssl_cafile": str(ca),
        "ssl_certfile": None,
        "ssl_keyfile": None,
    }


def test_sasl_plaintext_sets_no_tls_and_ssl_sets_no_sasl() -> None:
    plain = kafka_security_settings(sasl(security_protocol="SASL_PLAINTEXT"))
    assert not [k for k in plain if k.startswith("ssl_")]
    tls = kafka_security_settings(WorkerConfig(security_protocol="SSL"))
    assert not [k for k in tls if k.startswith("sasl_")]
    assert tls["ssl_check_hostname"] is True


# -- the password: environment or file, never a flag, never printed --------------------------


def test_password_comes_from_the_environment() -> None:
    config = build(
        ["--security-protocol", "SASL_SSL", "--sasl-username", "app"],
        {"FRESHREC_SASL_PASSWORD": PASSWORD},
    )
    assert config.sasl_password.reveal() == PASSWORD


def test_password_file_is_read_once_without_its_trailing_newline(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text(f" {PASSWORD} \n")
    config = build(
        ["--security-protocol", "SASL_SSL", "--sasl-username", "app"],
        {"FRESHREC_SASL_PASSWORD_FILE": str(secret)},
    )
    assert config.sasl_password.reveal() == f" {PASSWORD} "
    assert config.sasl_password_file == str(secret)


def test_password_in_both_the_environment_and_a_file_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text(PASSWORD)
    with pytest.raises(ConfigError, match="both set"):
        build(
            ["--security-protocol", "SASL_SSL", "--sasl-username", "app"],
            {"FRESHREC_SASL_PASSWORD": "other", "FRESHREC_SASL_PASSWORD_FILE": str(secret)},
        )


def test_unreadable_password_file_names_the_setting(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(
        ConfigError, match=r"sasl_password_file \(from --sasl-password-file\).*nope"
    ):
        build(["--security-protocol", "SASL_SSL", "--sasl-password-file", str(missing)])


def test_there_is_no_password_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build(["--sasl-password", PASSWORD])
    assert info.value.code == 2
    assert "--sasl-password" in capsys.readouterr().err


def test_worker_help_names_the_password_variable_but_offers_no_flag(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit):
        main(["worker", "--help"])
    text = capsys.readouterr().out
    assert "FRESHREC_SASL_PASSWORD:" in text
    assert "--sasl-password " not in text and "--sasl-password-file" in text


def test_config_repr_str_and_description_never_hold_the_password() -> None:
    config = sasl()
    shown = [
        repr(config),
        str(config),
        f"{config}",
        describe(config),
        repr(dataclasses.asdict(config)),
        repr(dataclasses.astuple(config)),
    ]
    for text in shown:
        assert PASSWORD not in text
        assert "sasl_password" not in text or "Secret('********')" in text
    assert "sasl_password=Secret('********')" in describe(config)
    assert config == sasl() and config != sasl(sasl_password=Secret("other"))


def test_logged_start_up_settings_never_hold_the_password(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def refuse(config: WorkerConfig, bootstrap_servers: str) -> None:
        raise KafkaSecurityError("Kafka authentication failed: stopped by the test")

    monkeypatch.setattr(consumer.security, "check_kafka_login", refuse)
    monkeypatch.setenv("FRESHREC_SASL_PASSWORD", PASSWORD)
    caplog.set_level(logging.INFO, logger="freshrec")
    argv = ["worker", "--security-protocol", "SASL_PLAINTEXT", "--sasl-username", "app"]

    assert main([*argv, "--bootstrap-servers", "127.0.0.1:9", "--log-level", "DEBUG"]) == 2

    started = [r for r in caplog.records if getattr(r, "event", None) == "start"]
    assert started, caplog.text
    assert "security_protocol='SASL_PLAINTEXT'" in started[0].getMessage()
    assert "sasl_password=Secret('********')" in started[0].getMessage()
    settings = started[0].settings  # type: ignore[attr-defined]
    assert settings["sasl_password"] == "********" and PASSWORD not in repr(settings)
    assert PASSWORD not in caplog.text
    out, err = capsys.readouterr()
    assert PASSWORD not in out + err
    assert err.strip().splitlines()[-1].startswith("freshrec: error: Kafka authentication")


# -- what a protocol needs, and what it would silently ignore ---------------------------------


@pytest.mark.parametrize(
    "argv, environ, message",
    [
        (["--security-protocol", "SASL_SSL"], {"FRESHREC_SASL_PASSWORD": "x"}, "sasl_username"),
        (["--security-protocol", "SASL_PLAINTEXT", "--sasl-username", "a"], {}, "password"),
        (["--sasl-username", "app"], {}, "security_protocol is PLAINTEXT"),
        ([], {"FRESHREC_SASL_PASSWORD": "x"}, "FRESHREC_SASL_PASSWORD"),
        (["--ssl-cafile", A_FILE], {}, "TLS settings apply to SSL and SASL_SSL"),
        (["--security-protocol", "SSL", "--ssl-cafile", "/no/such/ca.pem"], {}, "no such file"),
        (["--security-protocol", "SSL", "--ssl-keyfile", A_FILE], {}, "ssl_certfile"),
    ],
)
def test_security_settings_that_cannot_work_raise_config_error(
    argv: list[str], environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        build(argv, environ)


def test_sasl_mechanism_outside_the_choices_is_refused() -> None:
    with pytest.raises(ConfigError, match="sasl_mechanism"):
        build([], {"FRESHREC_SASL_MECHANISM": "GSSAPI"})


# -- the login check -----------------------------------------------------------------------


def test_login_check_is_a_no_op_for_plaintext() -> None:
    check_kafka_login(WorkerConfig(), "127.0.0.1:9", timeout_s=0.01)


def record(thread: str, msg: str, *args: object) -> logging.LogRecord:
    r = logging.LogRecord("kafka.net.manager", logging.WARNING, __file__, 1, msg, args, None)
    r.threadName = thread
    return r


def test_login_watch_reads_a_refusal_from_its_own_client_only() -> None:
    watch = _LoginFailureWatch(io_thread_marker="check-1")
    refusal = errors.SaslAuthenticationFailedError(
        "SaslAuthenticationFailedError: Authentication failed: invalid credentials"
    )
    watch.emit(record("kafka-io-other", "Bootstrap connection to %s failed: %s", "b-0", refusal))
    assert watch.kind is None
    watch.emit(record("kafka-io-check-1", "Bootstrap connection to %s failed: %s", "b-0", refusal))
    assert (watch.kind, watch.reason) == ("authentication", "invalid credentials")


def test_login_watch_counts_each_closed_connection_once() -> None:
    watch = _LoginFailureWatch(io_thread_marker="check-2")
    for n in range(3):
        closed = errors.KafkaConnectionError("socket disconnected")
        watch.emit(record("kafka-io-check-2", "Abort (%s)", closed))
        watch.emit(record("kafka-io-check-2", "Connection lost: %s", closed))
        assert watch.kind == (None if n < 2 else "closed")


def test_login_watch_reads_a_certificate_that_does_not_verify() -> None:
    watch = _LoginFailureWatch(io_thread_marker="check-3")
    text = (
        "Handshake failed: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
        "self-signed certificate in certificate chain (_ssl.c:992)"
    )
    watch.emit(record("kafka-io-check-3", "Bootstrap connection failed: %s", text))
    assert watch.kind == "tls"
    assert watch.reason == "certificate verify failed: self-signed certificate in certificate chain"


# -- /metrics bind address -----------------------------------------------------------------


def _answers(host: str, port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=5) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def test_metrics_host_setting_keeps_its_default_and_takes_loopback() -> None:
    assert build().metrics_host == "0.0.0.0"
    assert build(["--metrics-host", "127.0.0.1"]).metrics_host == "127.0.0.1"
    assert build([], {"FRESHREC_METRICS_HOST": "127.0.0.1"}).metrics_host == "127.0.0.1"


def test_metrics_bound_to_127_0_0_1_answers_there_and_nowhere_else() -> None:
    config = build(["--metrics-host", "127.0.0.1", "--metrics-port", "0"])
    server = MetricsServer(
        WorkerMetrics().registry, host=config.metrics_host, port=config.metrics_port
    )
    everywhere = MetricsServer(WorkerMetrics().registry, host="0.0.0.0", port=0)
    server.start()
    everywhere.start()
    try:
        assert server.url == f"http://127.0.0.1:{server.port}/metrics"
        assert _answers("127.0.0.1", server.port)
        # Another address of this machine: Linux routes all of 127/8 to the loopback device.
        other = "127.0.0.2"
        if not _answers(other, everywhere.port):
            pytest.skip(f"{other} does not reach this machine here")
        assert not _answers(other, server.port)
        with pytest.raises(OSError), socket.create_connection((other, server.port), timeout=5):
            pass
    finally:
        server.stop()
        everywhere.stop()
