"""`freshrec explain` against a worker process on the real broker: the command finds the
worker that owns the user through the consumer group and prints its explanation."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest
from kafka import KafkaProducer

from consumer.cli import main
from consumer.datasets import synthetic_catalog, synthetic_events
from tests.integration.helpers import metrics_url, scrape, wait_for
from tests.integration.test_state_recovery import prepare, send, start_worker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def ready(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def stop(worker: subprocess.Popen[bytes], log: Path) -> None:
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=120) == 0, log.read_text()[-3000:]


def test_explain_asks_the_owning_worker_and_prints_the_decomposition(
    bootstrap: str,
    prefix: str,
    producer: KafkaProducer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    items = synthetic_catalog(80, seed=3)
    events = synthetic_events(400, items, n_users=12, seed=3)
    prepare(bootstrap, prefix, producer, items)
    log = tmp_path / "worker.log"
    worker = start_worker(bootstrap, prefix, log, {"FRESHREC_EXPLAIN_ENDPOINT": "true"})
    try:
        url = metrics_url(log)
        port = str(urlparse(url).port)
        send(producer, prefix, events)
        # The worker counts events once their batch is committed.
        done = lambda: scrape(url).get("freshrec_events_processed_total") == len(events)  # noqa: E731
        assert wait_for(done, 300, 0.5), log.read_text()[-3000:]
        user = events[-1].user_id
        history = {ev.item_id for ev in events if ev.user_id == user}
        unseen = next(it.item_id for it in items if it.item_id not in history)
        argv = ["explain", "--bootstrap-servers", bootstrap, "--topic-prefix", prefix]
        argv += ["--group-id", f"{prefix}workers", "--metrics-port", port]
        argv += ["--user", user, "--item", unseen]

        # Found through the group: the only member owns every partition, on 127.0.0.1.
        assert main([*argv, "--json"]) == 0
        answer = json.loads(capsys.readouterr().out)
        assert answer["user_id"] == user and answer["item_id"] == unseen
        assert answer["events"] == sum(ev.user_id == user for ev in events)
        assert answer["excluded"] is None and answer["rank"] >= 1
        assert sum(p["value"] for p in answer["parts"]) == pytest.approx(answer["personal"])
        assert answer["because"] in history

        assert main(argv) == 0  # the readable form, with catalog titles
        text = capsys.readouterr().out
        title = next(it.title for it in items if it.item_id == unseen)
        assert f"item {unseen} ({title[:20]}" in text and "personal score" in text
        assert "content similarity" in text and "because " in text
        assert f"(asked http://127.0.0.1:{port})" in text

        # An item the user already has is explained as excluded, not ranked.
        seen = sorted(history)[0]
        assert main([*argv[:-2], "--item", seen, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["excluded"] == "consumed"

        # An unknown item is an error that names it; the worker goes on.
        assert main([*argv[:-2], "--item", "no-such-item"]) == 2
        assert "no-such-item" in capsys.readouterr().err
        assert worker.poll() is None
    finally:
        stop(worker, log)


def test_explain_says_how_to_switch_the_endpoint_on(
    bootstrap: str,
    prefix: str,
    producer: KafkaProducer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    prepare(bootstrap, prefix, producer, synthetic_catalog(20, seed=1))
    log = tmp_path / "worker.log"
    worker = start_worker(bootstrap, prefix, log)  # --explain-endpoint off: the default
    try:
        url = metrics_url(log).removesuffix("/metrics")
        assert wait_for(lambda: ready(url), 240, 0.5), log.read_text()[-3000:]
        argv = ["explain", "--worker", url, "--user", "u1", "--item", "i1"]
        assert main([*argv, "--bootstrap-servers", bootstrap]) == 2
        assert "--explain-endpoint" in capsys.readouterr().err
    finally:
        stop(worker, log)
