"""deploy/k8s: the manifests an operator applies, validated against the Kubernetes schemas (and
the ServiceMonitor CRD), and checked against the worker they run: its settings, its endpoints,
its graceful stop, its measured memory.

The operator applies ``kubectl apply -k deploy/k8s/base`` (CPU) or ``-k deploy/k8s/gpu``; these
tests render both with ``kubectl kustomize`` (kubectl's built-in kustomize, offline) and check
the rendered output, and validate every plain manifest file as it is too.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_client import CollectorRegistry

from consumer.config import WorkerConfig, env_name
from serving.http import MetricsServer
from tests.unit.deploy_checks import (
    CLOSE_MARGIN_S,
    effective_settings,
    graceful_stop_s,
    image_instructions,
    setting_of,
)

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
VARIANTS = {"cpu": K8S / "base", "gpu": K8S / "gpu"}
IMAGES = {"cpu": "freshrec:cpu", "gpu": "freshrec:cuda"}
# The images' sources (deploy/docker, another change); checks of what they set skip without.
DOCKERFILES = {
    "cpu": ROOT / "deploy" / "docker" / "Dockerfile",
    "gpu": ROOT / "deploy" / "docker" / "Dockerfile.cuda",
}
# The Kubernetes releases whose schemas the manifests must satisfy (kubernetes-validate bundles
# them; nothing is downloaded): 1.30, whose stable APIs are all the manifests use, and the
# newest the installed kubernetes-validate knows, which would catch an API removed since.
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.latest_version())
SERVICEMONITOR_CRD = (
    ROOT / "tests" / "fixtures" / "k8s" / "monitoring.coreos.com_servicemonitors.yaml"
)
SOAK = ROOT / "docs" / "reliability" / "soak.json"
CONFIG_KEY = "freshrec.toml"
GPU = "nvidia.com/gpu"


# -- validation ------------------------------------------------------------------------------


def _closed(schema: dict[str, Any]) -> dict[str, Any]:
    """A CRD's openAPIV3Schema with unknown fields refused, as the API server's strict field
    validation (kubectl's default) refuses them; fields marked to keep unknowns stay open."""
    out = dict(schema)
    if "properties" in schema:
        out["properties"] = {k: _closed(v) for k, v in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties", "not"):
        if isinstance(schema.get(key), dict):
            out[key] = _closed(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            out[key] = [_closed(v) for v in schema[key]]
    return out


def _crd_validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    docs = [d for d in yaml.safe_load_all(SERVICEMONITOR_CRD.read_text()) if d]
    validators = {}
    for crd in docs:
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = _closed(version["schema"]["openAPIV3Schema"])
            cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
            validators[(f"{group}/{version['name']}", kind)] = cls(schema)
    return validators


CRDS = _crd_validators()


def validate(doc: dict[str, Any]) -> None:
    """Raise unless ``doc`` is valid: the built-in kinds against Kubernetes' own schemas
    (strict: unknown fields refused), custom resources against their vendored CRD."""
    crd = CRDS.get((doc.get("apiVersion", ""), doc.get("kind", "")))
    if crd is not None:
        crd.validate(doc)
        return
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


def load_yaml(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def render(directory: Path) -> list[dict[str, Any]]:
    """What ``kubectl apply -k directory`` would send, rendered by kubectl's kustomize."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip(
            "kubectl is not installed, and its built-in kustomize renders deploy/k8s as an "
            "operator applies it; the plain files are still validated "
            "(test_every_manifest_file_is_valid)"
        )
    done = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "KUBECONFIG": os.devnull},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


# -- the rendered variants -------------------------------------------------------------------


@dataclass
class Applied:
    """One rendered variant (cpu or gpu), with the parts the checks look at."""

    variant: str
    docs: list[dict[str, Any]]

    def one(self, kind: str) -> dict[str, Any]:
        found = [d for d in self.docs if d["kind"] == kind]
        assert len(found) == 1, f"{self.variant}: {len(found)} {kind}s"
        return found[0]

    @property
    def deployment(self) -> dict[str, Any]:
        return self.one("Deployment")

    @property
    def pod(self) -> dict[str, Any]:
        return self.deployment["spec"]["template"]

    @property
    def container(self) -> dict[str, Any]:
        containers = self.pod["spec"]["containers"]
        assert [c["name"] for c in containers] == ["worker"]
        return containers[0]

    @property
    def argv(self) -> list[str]:
        return list(self.container.get("command", [])) + list(self.container.get("args", []))

    @property
    def config_path(self) -> str:
        argv = self.argv
        assert "--config" in argv, argv
        return argv[argv.index("--config") + 1]

    def mount_of(self, path: str) -> tuple[dict[str, Any], dict[str, Any], str]:
        """The volume mount that holds ``path``, its volume, and the path inside the volume."""
        best: tuple[dict[str, Any], str] | None = None
        for mount in self.container.get("volumeMounts", []):
            root = mount["mountPath"].rstrip("/")
            if path == root:
                inside = mount.get("subPath", "")
            elif path.startswith(root + "/"):
                inside = os.path.join(mount.get("subPath", ""), path[len(root) + 1 :])
            else:
                continue
            if best is None or len(root) > len(best[0]["mountPath"].rstrip("/")):
                best = (mount, inside)
        assert best is not None, f"{self.variant}: nothing is mounted at {path}"
        mount, inside = best
        volumes = {v["name"]: v for v in self.pod["spec"].get("volumes", [])}
        return mount, volumes[mount["name"]], inside

    def config_values(self) -> dict[str, Any]:
        """The TOML that the container reads with --config (through its ConfigMap mount)."""
        _, volume, inside = self.mount_of(self.config_path)
        assert "configMap" in volume, volume
        key = _key_of(volume["configMap"], inside)
        maps = [
            d
            for d in self.docs
            if d["kind"] == "ConfigMap" and d["metadata"]["name"] == volume["configMap"]["name"]
        ]
        assert len(maps) == 1, f"ConfigMap {volume['configMap']['name']} is not applied"
        return tomllib.loads(maps[0]["data"][key])

    def env_literals(self) -> list[tuple[str, str]]:
        return [(e["name"], e["value"]) for e in self.container.get("env", []) if "value" in e]

    def image(self) -> tuple[list[tuple[str, str]], str | None]:
        """The settings among the image's ENV, and its USER ([] and None without a
        Dockerfile in this checkout)."""
        dockerfile = DOCKERFILES[self.variant]
        if not dockerfile.exists():
            return [], None
        env, user = image_instructions(dockerfile.read_text())
        return [(n, v) for n, v in env if setting_of(n)], user

    def settings(self) -> dict[str, Any]:
        """The worker's effective settings in this pod: defaults < file < environment (the
        image's ENV, then the container's env, which Kubernetes lets override it)."""
        image_env, _ = self.image()
        return effective_settings(self.config_values(), image_env + self.env_literals())


def _key_of(source: dict[str, Any], inside: str) -> str:
    """The ConfigMap or Secret key a file inside its volume comes from."""
    for item in source.get("items", []):
        if item["path"] == inside:
            return str(item["key"])
    assert "items" not in source, f"{inside} is not among the volume's items {source['items']}"
    return inside


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def applied(request: pytest.FixtureRequest) -> Applied:
    return Applied(request.param, render(VARIANTS[request.param]))


@pytest.fixture(scope="module")
def worker_http() -> Iterator[tuple[MetricsServer, dict[str, bool]]]:
    """The worker's real HTTP server (serving/http.py) with switchable alive/ready states."""
    state = {"alive": True, "ready": True}
    server = MetricsServer(
        CollectorRegistry(),
        host="127.0.0.1",
        port=0,
        is_alive=lambda: state["alive"],
        is_ready=lambda: state["ready"],
    )
    server.start()
    try:
        yield server, state
    finally:
        server.stop()


def _get(server: MetricsServer, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def _quantity(text: str | int | float) -> float:
    """A Kubernetes quantity as a number (bytes, or cores)."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    units["m"] = 1e-3
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(text))
    assert match, text
    return float(match.group(1)) * units.get(match.group(2), 1)


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# -- schema validation -------------------------------------------------------------------------


def _manifest_files() -> list[Path]:
    """Every complete manifest under deploy/k8s: all YAML except kustomize's own files and the
    patches they apply (those are checked in the rendered output)."""
    patches = set()
    for kustomization in K8S.rglob("kustomization.yaml"):
        for patch in yaml.safe_load(kustomization.read_text()).get("patches", []):
            patches.add((kustomization.parent / patch["path"]).resolve())
    return sorted(
        p
        for p in K8S.rglob("*.yaml")
        if p.name != "kustomization.yaml" and p.resolve() not in patches
    )


def test_the_manifests_are_all_found() -> None:
    names = {p.relative_to(K8S).as_posix() for p in _manifest_files()}
    assert {
        "base/deployment.yaml",
        "base/service.yaml",
        "base/servicemonitor.yaml",
        "base/pdb.yaml",
        "examples/kafka-secrets.example.yaml",
    } <= names


@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: p.relative_to(K8S).as_posix())
def test_every_manifest_file_is_valid(path: Path) -> None:
    docs = load_yaml(path)
    assert docs, f"{path} holds no resource"
    for doc in docs:
        validate(doc)


def test_the_rendered_manifests_are_valid(applied: Applied) -> None:
    kinds = sorted(d["kind"] for d in applied.docs)
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "Namespace",
        "PodDisruptionBudget",
        "Service",
        "ServiceMonitor",
    ]
    for doc in applied.docs:
        validate(doc)
    namespace = applied.one("Namespace")["metadata"]["name"]
    for doc in applied.docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace, doc["metadata"]


def _base(kind: str) -> dict[str, Any]:
    docs = [d for p in _manifest_files() for d in load_yaml(p) if d["kind"] == kind]
    assert len(docs) == 1
    return docs[0]


def _broken(kind: str, *paths_and_values: tuple[tuple[Any, ...], Any]) -> dict[str, Any]:
    doc = copy.deepcopy(_base(kind))
    for path, value in paths_and_values:
        node = doc
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = value
    return doc


@pytest.mark.parametrize(
    ("kind", "change"),
    [
        ("Deployment", (("spec", "replicas"), "three")),
        # A typo'd field, which a lax validation would ignore and the worker would run without.
        ("Deployment", (("spec", "template", "spec", "containers", 0, "livenesProbe"), {})),
        ("Deployment", (("spec", "template", "spec", "containers", 0, "image"), 7)),
        ("Service", (("spec", "ports", 0, "port"), "metrics")),
        ("PodDisruptionBudget", (("spec", "maxUnavailabe"), 1)),
        ("ServiceMonitor", (("spec", "endpoints", 0, "interval"), "fifteen seconds")),
        ("ServiceMonitor", (("spec", "endpoint"), [{"port": "metrics"}])),
        ("ServiceMonitor", (("spec", "selector", "matchLabels"), "freshrec")),
    ],
    ids=lambda v: v if isinstance(v, str) else ".".join(map(str, v[0])),
)
def test_the_validation_rejects_a_broken_manifest(
    kind: str, change: tuple[tuple[Any, ...], Any]
) -> None:
    validate(_base(kind))  # the unbroken one passes
    with pytest.raises(jsonschema.ValidationError):
        validate(_broken(kind, change))


def test_the_validation_knows_every_kind_it_is_given() -> None:
    # An unknown kind must fail, not pass unchecked.
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        validate({"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor", "spec": {}})


# -- the worker's settings -------------------------------------------------------------------


def test_the_config_file_holds_settings_and_no_secret(applied: Applied) -> None:
    values = applied.config_values()
    settings = {f.name: f for f in fields(WorkerConfig)}
    assert values, "the config file sets nothing"
    for key, value in values.items():
        assert key in settings, f"{key} in {CONFIG_KEY} is not a freshrec setting"
        spec = settings[key]
        assert not spec.metadata.get("env_only"), f"{key} is a secret: not in a ConfigMap"
        assert "password" not in key or key.endswith("_file"), key
        default = spec.default
        expected = float if isinstance(default, float) else type(default)
        ok = isinstance(value, int | float) if expected is float else type(value) is expected
        assert ok, f"{key} = {value!r}: the setting takes {expected.__name__}"
        choices = spec.metadata.get("choices")
        assert not choices or value in choices, f"{key} = {value!r}, not one of {choices}"
    # No secret value hides under another key either (e.g. a password pasted into a user name).
    example = load_yaml(K8S / "examples" / "kafka-secrets.example.yaml")
    for secret in example:
        for text in secret.get("stringData", {}).values():
            assert text.strip() not in json.dumps(values)


def test_the_image_does_not_override_the_config_file(applied: Applied) -> None:
    """A FRESHREC_* variable baked into the image beats the ConfigMap (environment > file):
    where both set a setting they must agree, or the file would be silently ignored."""
    if not DOCKERFILES[applied.variant].exists():
        pytest.skip(f"no {DOCKERFILES[applied.variant].name} in this checkout")
    image_env, user = applied.image()
    file_values = applied.config_values()
    container_env = {n for n, _ in applied.env_literals()}
    for name, raw in image_env:
        setting = setting_of(name)
        if setting in file_values and name not in container_env:
            from_image = effective_settings({}, [(name, raw)])[setting]
            assert from_image == file_values[setting], (
                f"the image sets {name}={raw}, which beats {setting} = "
                f"{file_values[setting]!r} in {CONFIG_KEY}"
            )
    # runAsNonRoot can only verify a numeric user; it must be the one the manifests run as.
    pod_security = applied.pod["spec"]["securityContext"]
    assert user == f"{pod_security['runAsUser']}:{pod_security['runAsGroup']}", user


def test_the_config_file_sets_what_the_deployment_relies_on(applied: Applied) -> None:
    s = applied.settings()
    assert s["security_protocol"] == "SASL_SSL" and s["sasl_username"]
    assert s["metrics_host"] not in ("127.0.0.1", "localhost", "::1"), "probes come from outside"


def test_every_variable_is_a_setting_and_the_password_comes_from_a_secret(
    applied: Applied,
) -> None:
    env = applied.container.get("env", [])
    assert not applied.container.get("envFrom"), "every variable is named, so it can be checked"
    for var in env:
        assert setting_of(var["name"]), f"{var['name']} is not a freshrec setting"
    by_name = {var["name"]: var for var in env}
    assert len(by_name) == len(env), "a variable is set twice"
    password = by_name[env_name("sasl_password")]
    assert "value" not in password, "the SASL password must come from a Secret, not the manifest"
    ref = password["valueFrom"]["secretKeyRef"]
    # The example Secret has the name and key the Deployment reads.
    example = {
        s["metadata"]["name"]: s for s in load_yaml(K8S / "examples" / "kafka-secrets.example.yaml")
    }
    assert ref["key"] in example[ref["name"]]["stringData"]
    assert not any(d["kind"] == "Secret" for d in applied.docs), "examples are never applied"


def test_the_command_is_the_worker_with_the_mounted_config(applied: Applied) -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    argv = applied.argv
    assert argv[0] in pyproject["project"]["scripts"], argv
    assert argv[1] == "worker", argv
    _, volume, inside = applied.mount_of(applied.config_path)
    assert "configMap" in volume and _key_of(volume["configMap"], inside) == CONFIG_KEY

    from consumer import cli

    parser = cli._parser()
    subparsers = next(a for a in parser._actions if a.choices and "worker" in a.choices)
    worker = subparsers.choices["worker"]
    if "--config" not in worker._option_string_actions:
        pytest.skip("this checkout's `freshrec worker` has no --config option yet")
    args = parser.parse_args(argv[1:])
    assert args.config == applied.config_path


def test_replicas_do_not_exceed_the_partitions(applied: Applied) -> None:
    replicas = applied.deployment["spec"]["replicas"]
    partitions = applied.settings()["partitions"]
    assert 1 <= replicas <= partitions, f"{replicas} replicas for {partitions} partitions"
    # The default too: the file says the same as the worker would without it.
    assert replicas <= WorkerConfig().partitions


def test_the_grace_period_outlasts_a_graceful_stop(applied: Applied) -> None:
    s = applied.settings()
    grace = applied.pod["spec"]["terminationGracePeriodSeconds"]
    needed = graceful_stop_s(s) + CLOSE_MARGIN_S
    assert grace >= needed, (
        f"terminationGracePeriodSeconds {grace} < {needed}: delivery_timeout_s "
        f"{s['delivery_timeout_s']}, commit_timeout_s {s['commit_timeout_s']}"
    )
    assert grace > s["commit_timeout_s"]


# -- probes, ports and the worker's endpoints ------------------------------------------------


def _port(applied: Applied, port: str | int) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in applied.container["ports"] if "name" in p}
    return int(named[port])


def test_the_probes_hit_the_worker_health_endpoints(
    applied: Applied, worker_http: tuple[MetricsServer, dict[str, bool]]
) -> None:
    server, state = worker_http
    metrics_port = applied.settings()["metrics_port"]
    probes = {
        kind: applied.container[kind]
        for kind in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    for kind, probe in probes.items():
        assert _port(applied, probe["httpGet"]["port"]) == metrics_port, kind

    def answers(path: str, *, alive: bool, ready: bool) -> int:
        state.update(alive=alive, ready=ready)
        return _get(server, path)

    # Liveness follows the loop being alive, whatever readiness says...
    live = probes["livenessProbe"]["httpGet"]["path"]
    assert answers(live, alive=True, ready=False) == 200
    assert answers(live, alive=False, ready=True) == 503
    # ...readiness and startup follow the catalog being loaded, whatever liveness says.
    for kind in ("readinessProbe", "startupProbe"):
        path = probes[kind]["httpGet"]["path"]
        assert answers(path, alive=False, ready=True) == 200, kind
        assert answers(path, alive=True, ready=False) == 503, kind
    # Liveness only after startup: a catalog load takes minutes, and the liveness check
    # would count it as a stalled loop.
    startup = probes["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 15 * 60


def test_the_service_and_servicemonitor_scrape_the_workers(
    applied: Applied, worker_http: tuple[MetricsServer, dict[str, bool]]
) -> None:
    server, _ = worker_http
    pod_labels = applied.pod["metadata"]["labels"]
    assert _selects(applied.deployment["spec"]["selector"]["matchLabels"], pod_labels)
    service = applied.one("Service")
    assert _selects(service["spec"]["selector"], pod_labels)
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert "metrics" in ports
    assert _port(applied, ports["metrics"]["targetPort"]) == applied.settings()["metrics_port"]

    monitor = applied.one("ServiceMonitor")
    assert _selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in ports
        path = endpoint.get("path", "/metrics")
        assert _get(server, path) == 200, path
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=10) as r:
            assert r.headers["Content-Type"].startswith("text/plain; version=")


def test_the_disruption_budget_covers_the_workers_and_allows_drains(applied: Applied) -> None:
    pdb = applied.one("PodDisruptionBudget")
    assert _selects(pdb["spec"]["selector"]["matchLabels"], applied.pod["metadata"]["labels"])
    replicas = applied.deployment["spec"]["replicas"]
    if "maxUnavailable" in pdb["spec"]:
        assert 1 <= pdb["spec"]["maxUnavailable"] < max(replicas, 2)
    else:
        assert pdb["spec"]["minAvailable"] < replicas, "no node could ever be drained"


# -- pod security, storage and resources -------------------------------------------------------


def test_the_pod_runs_as_non_root_on_a_read_only_root(applied: Applied) -> None:
    pod_security = applied.pod["spec"]["securityContext"]
    container_security = applied.container["securityContext"]
    assert pod_security["runAsNonRoot"] is True and pod_security["runAsUser"] != 0
    assert container_security["readOnlyRootFilesystem"] is True
    assert container_security["allowPrivilegeEscalation"] is False
    assert container_security["capabilities"]["drop"] == ["ALL"]
    # So the worker has to write to volumes only: its state directory and /tmp.
    state_dir = applied.settings()["state_dir"]
    assert state_dir, "state_dir unset: the worker would make one under /tmp"
    for path in (state_dir, "/tmp"):
        mount, volume, _ = applied.mount_of(path)
        assert "emptyDir" in volume or "persistentVolumeClaim" in volume, (path, volume)
        assert not mount.get("readOnly"), path


def test_the_ca_bundle_is_mounted_where_the_config_points(applied: Applied) -> None:
    cafile = applied.settings()["ssl_cafile"]
    _, volume, inside = applied.mount_of(cafile)
    assert "secret" in volume, volume
    name, key = volume["secret"]["secretName"], _key_of(volume["secret"], inside)
    example = {
        s["metadata"]["name"]: s for s in load_yaml(K8S / "examples" / "kafka-secrets.example.yaml")
    }
    assert key in example[name]["stringData"], (name, key)


def test_the_resources_cover_the_measured_worker(applied: Applied) -> None:
    resources = applied.container["resources"]
    for what in ("cpu", "memory"):
        request = _quantity(resources["requests"][what])
        limit = _quantity(resources["limits"][what])
        assert 0 < request <= limit, (what, request, limit)
    soak = json.loads(SOAK.read_text())
    peak_rss = max(sample["rss_mib"] for sample in soak["samples"]) * 2**20
    assert _quantity(resources["requests"]["memory"]) >= peak_rss
    assert _quantity(resources["limits"]["memory"]) >= 1.25 * peak_rss
    # That peak holds for the soak's bound on users in memory; without one RSS grows with users.
    soak_bound = int(soak["settings"]["worker_env"][env_name("max_users_in_memory")])
    assert 0 < applied.settings()["max_users_in_memory"] <= soak_bound
    # torch would start one thread per node core, far more than the CPU limit allows.
    threads = applied.settings()["torch_threads"]
    assert 1 <= threads <= _quantity(resources["limits"]["cpu"])


def test_the_gpu_variant_requests_a_gpu_and_the_cpu_one_does_not(applied: Applied) -> None:
    resources = applied.container["resources"]
    assert applied.container["image"] == IMAGES[applied.variant]
    device = applied.settings()["device"]
    if applied.variant == "gpu":
        assert _quantity(resources["limits"][GPU]) == 1
        assert _quantity(resources["requests"].get(GPU, resources["limits"][GPU])) == 1
        assert device.startswith("cuda"), device
        # A surge pod would wait for a spare GPU: replace in place.
        rolling = applied.deployment["spec"]["strategy"]["rollingUpdate"]
        assert rolling["maxSurge"] == 0 and rolling["maxUnavailable"] >= 1
    else:
        assert GPU not in resources.get("limits", {}) and GPU not in resources.get("requests", {})
        assert device == "cpu", device
