"""The worker on a secured broker: SASL/SCRAM-SHA-512 over TLS, from a real local listener.

The module starts its own broker with `FRESHREC_KAFKA_SECURE=1 deploy/kafka/local-kafka.sh`
(fresh storage, a throwaway CA, a SCRAM user with a password made for this run) on
FRESHREC_TEST_SECURE_KAFKA_PORT (``make test``: its broker's port + 10; the SASL_SSL listener is
that + 2), and stops it afterwards whatever the outcome.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from consumer.cli import main
from consumer.config import Secret, WorkerConfig
from consumer.exceptions import KafkaSecurityError
from consumer.replay import load_dataset
from consumer.security import check_kafka_login, kafka_security_settings
from serving.codec import decode_recommendation
from tests.integration.helpers import read_topic, topic_exists, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = str(ROOT / "deploy/kafka/local-kafka.sh")
SUMMARY = re.compile(r"consumed=(\d+) processed=(\d+) rejected=(\d+) published=(\d+)")
USER = "freshrec-test"
DATASET = {"synthetic_items": 60, "synthetic_events": 400, "seed": 5}


@dataclass(frozen=True)
class SecureBroker:
    bootstrap: str  # the SASL_SSL listener
    cafile: str
    password: str

    def config(self, password: str | None = None, **overrides: Any) -> WorkerConfig:
        settings: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": USER,
            "sasl_password": Secret(self.password if password is None else password),
            "ssl_cafile": self.cafile,
        }
        settings.update(overrides)
        return WorkerConfig(**settings)

    def client_settings(self) -> dict[str, Any]:
        """Keyword arguments for the tests' own clients on the secured listener."""
        return kafka_security_settings(self.config())

    def worker_env(self, prefix: str) -> dict[str, str]:
        """The worker's environment, without a password (each test supplies its own)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("FRESHREC_SASL_")}
        env.update(
            FRESHREC_BOOTSTRAP_SERVERS=self.bootstrap,
            FRESHREC_SECURITY_PROTOCOL="SASL_SSL",
            FRESHREC_SASL_MECHANISM="SCRAM-SHA-512",
            FRESHREC_SASL_USERNAME=USER,
            FRESHREC_SSL_CAFILE=self.cafile,
            FRESHREC_TOPIC_PREFIX=prefix,
            FRESHREC_GROUP_ID=f"{prefix}workers",
            FRESHREC_PARTITIONS="2",
            FRESHREC_BATCH_SIZE="100",
            FRESHREC_POLL_TIMEOUT_MS="200",
            FRESHREC_METRICS_HOST="127.0.0.1",
            FRESHREC_METRICS_PORT="0",
            FRESHREC_DEVICE="cpu",
        )
        return env


def _secure_port() -> int:
    given = os.environ.get("FRESHREC_TEST_SECURE_KAFKA_PORT")
    if given:
        return int(given)
    plain = os.environ.get("FRESHREC_TEST_BOOTSTRAP", "127.0.0.1:19092").split(",")[0]
    return int(plain.rsplit(":", 1)[1]) + 10


@pytest.fixture(scope="module")
def secure_broker() -> Iterator[SecureBroker]:
    port = _secure_port()
    password = "pw-" + secrets.token_hex(12)  # unique, so that a leak cannot hide
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("FRESHREC_KAFKA_DIR", "FRESHREC_KAFKA_CONTROLLER_PORT")
        and not k.startswith("FRESHREC_KAFKA_S")  # SECURE_PORT, SCRAM_*
    }
    env.update(
        FRESHREC_KAFKA_PORT=str(port),
        FRESHREC_KAFKA_SECURE="1",
        FRESHREC_KAFKA_SCRAM_USER=USER,
        FRESHREC_KAFKA_SCRAM_PASSWORD=password,
    )
    try:
        # Fresh storage every run: the SCRAM user is created when storage is formatted.
        subprocess.run([SCRIPT, "clean"], env=env, check=True)
        started = time.monotonic()
        subprocess.run([SCRIPT, "start"], env=env, check=True)
        print(f"secured broker started in {time.monotonic() - started:.1f} s")
        cafile = subprocess.run(
            [SCRIPT, "ca-file"], env=env, check=True, capture_output=True, text=True
        ).stdout.strip()
        yield SecureBroker(f"127.0.0.1:{port + 2}", cafile, password)
    finally:
        subprocess.run([SCRIPT, "stop"], env=env, check=False)


def _worker(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "consumer.cli", "worker", *args],
            env=env,
            stdout=out,
            stderr=out,
        )


def test_worker_on_the_sasl_ssl_listener_publishes_recommendations(
    secure_broker: SecureBroker,
    prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    password_file = tmp_path / "kafka-password"
    password_file.write_text(secure_broker.password + "\n")
    password_file.chmod(0o600)
    settings = secure_broker.client_settings()
    log = tmp_path / "worker.log"
    worker = _worker(
        secure_broker.worker_env(prefix), log, "--sasl-password-file", str(password_file)
    )
    try:
        # The worker's admin client creates the topics through the secured listener.
        assert wait_for(
            lambda: topic_exists(secure_broker.bootstrap, f"{prefix}events.dlq", settings), 120
        ), log.read_text()[-3000:]
        cmdline = Path(f"/proc/{worker.pid}/cmdline")
        if cmdline.exists():
            assert secure_broker.password not in cmdline.read_text()

        # `freshrec replay` publishes through the same listener, password from the environment.
        monkeypatch.setenv("FRESHREC_SASL_PASSWORD", secure_broker.password)
        common = [
            "--bootstrap-servers",
            secure_broker.bootstrap,
            "--topic-prefix",
            prefix,
            "--security-protocol",
            "SASL_SSL",
            "--sasl-username",
            USER,
            "--ssl-cafile",
            secure_broker.cafile,
        ]
        replay = ["replay", "--dataset", "synthetic", "--no-progress"]
        replay += ["--synthetic-items", "60", "--synthetic-events", "400", "--seed", "5"]
        assert main([*replay, *common]) == 0

        _, events = load_dataset("synthetic", **DATASET)
        users = {ev.user_id for ev in events}
        records = read_topic(
            secure_broker.bootstrap,
            f"{prefix}recommendations",
            until=lambda rs: {decode_recommendation(r.value)["user_id"] for r in rs} >= users,
            timeout_s=180,
            settings=settings,
        )
        lists = [decode_recommendation(r.value) for r in records]
        assert {msg["user_id"] for msg in lists} == users, log.read_text()[-3000:]
        assert all(msg["items"] for msg in lists)

        # `freshrec watch` connects through the secured listener too (it reads the catalog's
        # titles to the end before it follows the lists; a client without the security
        # settings would fail to bootstrap here).
        watch = ["watch", *common, "--duration", "1", "--metrics-url", "http://127.0.0.1:9/"]
        assert main(watch) == 0

        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if worker.poll() is None:
            worker.kill()
    text = log.read_text()
    found = SUMMARY.findall(text)
    assert found, text[-3000:]
    consumed, processed, rejected, _ = (int(x) for x in found[-1])
    assert (consumed, processed, rejected) == (len(events), len(events), 0)
    assert "sasl_password=Secret('********')" in text  # the start-up settings line
    assert secure_broker.password not in text + capsys.readouterr().err


def test_wrong_password_stops_the_worker_fast_with_a_one_line_error(
    secure_broker: SecureBroker, prefix: str
) -> None:
    wrong = "wrong-" + secrets.token_hex(8)
    env = dict(secure_broker.worker_env(prefix), FRESHREC_SASL_PASSWORD=wrong)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "consumer.cli", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    took = time.monotonic() - started
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("freshrec: error: Kafka authentication failed: "), output[-3000:]
    assert f"user '{USER}'" in last and secure_broker.bootstrap in last
    assert wrong not in output and secure_broker.password not in output
    assert took < 60
    print(f"refused in {took:.1f} s: {last}")


def test_a_ca_that_did_not_sign_the_broker_fails_the_tls_handshake_clearly(
    secure_broker: SecureBroker,
) -> None:
    config = secure_broker.config(ssl_cafile="")  # the system's trust store
    with pytest.raises(KafkaSecurityError, match=r"TLS connection .* certificate verify failed"):
        check_kafka_login(config, secure_broker.bootstrap, timeout_s=30)


def test_right_credentials_pass_the_login_check_and_topics_creates_topics(
    secure_broker: SecureBroker, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    check_kafka_login(secure_broker.config(), secure_broker.bootstrap, timeout_s=30)
    monkeypatch.setenv("FRESHREC_SASL_PASSWORD", secure_broker.password)
    argv = ["topics", "create", "--bootstrap-servers", secure_broker.bootstrap]
    argv += ["--topic-prefix", prefix]
    argv += ["--security-protocol", "SASL_SSL", "--sasl-username", USER]
    argv += ["--ssl-cafile", secure_broker.cafile]
    assert main(argv) == 0
    assert topic_exists(
        secure_broker.bootstrap, f"{prefix}recommendations", secure_broker.client_settings()
    )
