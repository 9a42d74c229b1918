"""Specifications of freshrec's logs: JSON lines off a terminal, readable lines on one, the
structured fields operators query, and dead letters logged as a sample per reason."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from consumer.config import Secret, WorkerConfig, public_settings
from consumer.logs import JsonFormatter, LogSampler, setup_logging
from consumer.source import Record, _Listener


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_auto_format_writes_json_when_not_on_a_terminal() -> None:
    out = io.StringIO()
    setup_logging("INFO", "auto", stream=out)
    logging.getLogger("freshrec.x").info("hello", extra={"event": "greet", "n": 3})
    [line] = lines(out)
    assert line["message"] == "hello" and line["event"] == "greet" and line["n"] == 3
    assert line["level"] == "INFO" and line["logger"] == "freshrec.x"
    assert line["ts"].endswith("Z")


def test_auto_format_writes_readable_lines_on_a_terminal() -> None:
    out = Terminal()
    setup_logging("INFO", "auto", stream=out)
    logging.getLogger("freshrec.x").info("hello %s", "you", extra={"event": "greet"})
    text = out.getvalue()
    assert "INFO freshrec.x: hello you" in text
    assert "{" not in text and "greet" not in text


def test_level_filters_records_below_it() -> None:
    out = io.StringIO()
    setup_logging("WARNING", "json", stream=out)
    logging.getLogger("freshrec.x").info("quiet")
    logging.getLogger("freshrec.x").warning("loud")
    assert [line["message"] for line in lines(out)] == ["loud"]


def test_kafka_client_debug_lines_stay_out_even_at_debug_level() -> None:
    out = io.StringIO()
    setup_logging("DEBUG", "json", stream=out)
    logging.getLogger("kafka.conn").debug("config: sasl_plain_password=hunter2")
    logging.getLogger("freshrec.x").debug("ours")
    assert [line["message"] for line in lines(out)] == ["ours"]


def test_errors_carry_their_traceback_in_one_json_line() -> None:
    out = io.StringIO()
    setup_logging("INFO", "json", stream=out)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("freshrec.x").exception("batch failed")
    [line] = lines(out)
    assert line["level"] == "ERROR" and "RuntimeError: boom" in line["exc"]


def test_start_settings_in_a_log_line_never_show_a_secret() -> None:
    out = io.StringIO()
    setup_logging("INFO", "json", stream=out)
    config = WorkerConfig(sasl_password=Secret("hunter2"), top_k=3)
    logging.getLogger("freshrec").info(
        "starting", extra={"event": "start", "settings": public_settings(config)}
    )
    assert "hunter2" not in out.getvalue()
    [line] = lines(out)
    assert line["settings"]["top_k"] == 3 and line["settings"]["sasl_password"] == "********"


def test_a_value_json_cannot_hold_is_written_as_text() -> None:
    rec = logging.LogRecord("freshrec", logging.INFO, __file__, 1, "m", None, None)
    rec.secret = Secret("hunter2")
    assert json.loads(JsonFormatter().format(rec))["secret"] == "********"


def test_assign_and_revoke_are_logged_with_their_partitions() -> None:
    out = io.StringIO()
    setup_logging("INFO", "json", stream=out)
    listener = _Listener(on_assign=lambda tps: None, on_revoke=lambda tps: None)

    class TP:
        def __init__(self, partition: int) -> None:
            self.topic, self.partition = "freshrec.events", partition

    listener.on_partitions_assigned([TP(1), TP(0)])
    listener.on_partitions_revoked([TP(1)])
    assign, revoke = lines(out)
    assert assign["event"] == "assign"
    assert assign["partitions"] == ["freshrec.events:0", "freshrec.events:1"]
    assert revoke["event"] == "revoke" and revoke["partitions"] == ["freshrec.events:1"]


def test_sampler_admits_one_record_per_key_per_interval_and_counts_the_rest() -> None:
    now = [0.0]
    sampler = LogSampler(10.0, clock=lambda: now[0])
    admitted = [sampler.admit("a") for _ in range(5)]
    assert admitted == [0, None, None, None, None]
    now[0] = 10.0
    assert sampler.admit("a") == 4
    assert sampler.admit("b") == 0


def test_a_flood_of_bad_records_logs_a_sample_per_reason_while_metrics_count_all(
    make_worker: Callable[..., Any], raw_record: Callable[..., Record]
) -> None:
    out = io.StringIO()
    setup_logging("INFO", "json", stream=out)
    rig = make_worker([raw_record(i, b"\xc1") for i in range(50)])
    rig.worker.step()
    dlq = [line for line in lines(out) if line.get("event") == "dlq"]
    assert len(dlq) == 1  # the first of its reason within the interval
    assert dlq[0]["reason"] == "not_msgpack" and dlq[0]["source"] == "freshrec.events:0:0"
    assert rig.sample("freshrec_events_rejected_total", reason="not_msgpack") == 50


def test_setup_rejects_an_unknown_format() -> None:
    with pytest.raises(ValueError, match="log format"):
        setup_logging("INFO", "xml", stream=sys.stderr)


def test_an_unexpected_error_reaches_the_json_log_with_its_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from consumer import cli

    def crash(args: object) -> int:
        cli.setup_logging("INFO", "json")
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "_cmd_config_show", crash)
    assert cli.main(["config", "show"]) == 1
    [line] = [json.loads(x) for x in capsys.readouterr().err.splitlines()]
    assert line["event"] == "crash" and "RuntimeError: a bug" in line["exc"]


def test_a_configuration_error_is_a_json_line_and_a_plain_last_line(
    tmp_path: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from consumer import cli

    monkeypatch.setattr(cli, "version_string", lambda: "freshrec test")
    path = tmp_path / "bad.toml"
    path.write_text("topk = 1\n", encoding="utf-8")
    setup_logging("INFO", "json")  # as a command does once its settings are read
    assert cli.main(["config", "show", "--config", str(path)]) == 2
    *json_lines, last = capsys.readouterr().err.splitlines()
    assert json.loads(json_lines[-1])["event"] == "error"
    assert last.startswith("freshrec: error: config file") and "topk" in last
