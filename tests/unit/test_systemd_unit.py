"""deploy/systemd: the worker's unit file, checked by systemd's own parser (``systemd-analyze
verify`` and ``security``) and against the worker: its command, its settings, its graceful stop.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from consumer.config import env_name
from tests.unit.deploy_checks import (
    CLOSE_MARGIN_S,
    effective_settings,
    graceful_stop_s,
    setting_of,
)

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "systemd" / "freshrec.service"
ENV_FILE = ROOT / "deploy" / "systemd" / "freshrec.env"
EXEC = "/opt/freshrec/venv/bin/freshrec"
CONFIG = "/etc/freshrec/freshrec.toml"
# `systemd-analyze security` exposure, 0 (locked down) to 10; 1.5 when this was written.
MAX_EXPOSURE = 2.0


def _analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    return path


def _service(text: str) -> dict[str, list[str]]:
    """The [Service] section: each key with its values in order (keys may repeat)."""
    section, out = "", {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def _env_file() -> list[tuple[str, str]]:
    pairs = []
    for raw in ENV_FILE.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            pairs.append((name.strip(), value.strip()))
    return pairs


def _environment() -> list[tuple[str, str]]:
    """Environment= lines of the unit, then the EnvironmentFile's (systemd's order)."""
    pairs = []
    for line in _service(UNIT.read_text()).get("Environment", []):
        for assignment in line.split():
            name, _, value = assignment.strip('"').partition("=")
            pairs.append((name, value))
    return pairs + _env_file()


def _runnable_copy(text: str, tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at a stand-in executable: `verify` checks that the
    command exists, and /opt/freshrec is not installed here."""
    assert EXEC in text
    fake = tmp_path / "freshrec"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    unit = tmp_path / "freshrec.service"
    unit.write_text(text.replace(EXEC, str(fake)))
    return unit


def _verify(text: str, tmp_path: Path) -> str:
    """What `systemd-analyze verify` says about the unit: nothing when it is clean (it exits
    0 even for unknown keys and unparsable values, which it only reports)."""
    done = subprocess.run(
        [_analyze(), "verify", "--man=no", str(_runnable_copy(text, tmp_path))],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return f"rc={done.returncode} {done.stdout}{done.stderr}".strip()


def test_the_unit_verifies_cleanly(tmp_path: Path) -> None:
    assert _verify(UNIT.read_text(), tmp_path) == "rc=0"


@pytest.mark.parametrize(
    ("key", "bad"),
    [
        ("ProtectSystem", "ProtectSytem=strict"),
        ("Type", "Type=simpel"),
        ("KillSignal", "KillSignal=SIGBANANA"),
        ("TimeoutStopSec", "TimeoutStopSec=two minutes"),
    ],
)
def test_verify_reports_a_broken_unit(key: str, bad: str, tmp_path: Path) -> None:
    text, found = re.subn(rf"^{key}=.*$", bad, UNIT.read_text(), count=1, flags=re.MULTILINE)
    assert found == 1, f"no {key}= line"
    said = _verify(text, tmp_path)
    bad_key, _, bad_value = bad.partition("=")
    assert said != "rc=0"
    assert bad_key in said or bad_value in said, said


def test_the_unit_is_hardened(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            _analyze(),
            "security",
            "--offline=true",
            f"--threshold={round(MAX_EXPOSURE * 10)}",  # in tenths
            str(_runnable_copy(UNIT.read_text(), tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    verdict = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr
    assert done.returncode == 0, verdict
    service = _service(UNIT.read_text())
    assert service["NoNewPrivileges"] == ["yes"] and service["ProtectSystem"] == ["strict"]
    assert service["User"] != ["root"] and service["User"]


def test_the_unit_runs_the_worker_with_its_config() -> None:
    service = _service(UNIT.read_text())
    assert service["Type"] == ["simple"]
    (exec_start,) = service["ExecStart"]
    argv = exec_start.split()
    assert argv[0] == EXEC
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert Path(argv[0]).name in scripts
    assert argv[1:] == ["worker", "--config", CONFIG]

    from consumer import cli

    parser = cli._parser()
    subparsers = next(a for a in parser._actions if a.choices and "worker" in a.choices)
    if "--config" not in subparsers.choices["worker"]._option_string_actions:
        pytest.skip("this checkout's `freshrec worker` has no --config option yet")
    assert parser.parse_args(argv[1:]).config == CONFIG


def test_the_stop_timeout_outlasts_a_graceful_stop() -> None:
    service = _service(UNIT.read_text())
    assert service["KillSignal"] == ["SIGTERM"]
    assert service["Restart"] == ["on-failure"]
    (timeout,) = service["TimeoutStopSec"]
    done = subprocess.run(
        [_analyze(), "timespan", timeout], capture_output=True, text=True, check=True
    )
    micros = next(
        line.split(":", 1)[1] for line in done.stdout.splitlines() if line.strip().startswith("μs")
    )
    stop_s = int(micros) / 1e6
    settings = effective_settings({}, _environment())
    needed = graceful_stop_s(settings) + CLOSE_MARGIN_S
    assert stop_s >= needed, f"TimeoutStopSec {stop_s} s < {needed} s"
    assert stop_s > settings["commit_timeout_s"]


def test_the_environment_holds_settings_and_the_env_file_only_secrets() -> None:
    for name, _ in _environment():
        assert setting_of(name), f"{name} is not a freshrec setting"
    assert [name for name, _ in _env_file()] == [env_name("sasl_password")]
    service = _service(UNIT.read_text())
    assert service["EnvironmentFile"] == ["/etc/freshrec/freshrec.env"]
    # The state directory systemd creates is the one the worker uses.
    (state,) = service["StateDirectory"]
    assert effective_settings({}, _environment())["state_dir"] == f"/var/lib/{state}"
