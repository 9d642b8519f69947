"""The packaging and deployment files under deploy/, checked without a Docker engine or a cluster.

Real validators run as subprocesses from this interpreter's bin directory (they come
with the `test` extras): check-jsonschema with the vendored Compose Specification,
hadolint, and kubernetes-validate in strict mode. The other tests check what no
validator can know: that the files agree with Herald's settings and with each other.
Nothing here uses the network.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from adapters.registry import PLATFORMS
from bots.config import load_config
from core.config import ENV_PREFIX, ConfigError, Settings
from core.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
KUSTOMIZATION = K8S / "kustomization.yaml"
# Examples kept out of the kustomization: custom resources and prometheus-adapter's values.
MONITORING = K8S / "monitoring"
PODMONITOR = MONITORING / "podmonitor.yaml"
ADAPTER_VALUES = MONITORING / "prometheus-adapter-values.yaml"
# The validators live beside the interpreter running the tests (the project's venv).
BIN = Path(sys.executable).parent
# A Kubernetes release whose schemas kubernetes-validate ships (>= 1.28 for the pod-index label).
K8S_VERSION = "1.30.0"
# Variables that compose.yaml interpolates for its model servers: not Herald settings.
COMPOSE_ONLY_VARIABLES = {"HERALD_MODEL_ID", "HERALD_GGUF_MODEL"}
HERALD_NAME = re.compile(r"\bHERALD_[A-Z0-9_]+\b")
# The gauge of events in the intake stream that no worker has taken: the workers' HPA
# scales on it. Herald's Metrics will export it as `intake_waiting`; until then this
# name stands alone (herald_intake_waiting_name() checks Metrics once it is there).
INTAKE_WAITING_METRIC = "herald_intake_waiting"
# Which Herald workloads run which role (HERALD_ROLE), by name.
GATEWAYS = {"herald-telegram", "herald-discord"}
WORKERS = {"herald-worker"}

# Top-level fields of a kustomize Kustomization (kustomize v5, including deprecated ones).
KUSTOMIZE_FIELDS = {
    "apiVersion", "kind", "metadata", "resources", "components", "crds", "bases",
    "namespace", "namePrefix", "nameSuffix", "commonLabels", "labels", "commonAnnotations",
    "patches", "patchesStrategicMerge", "patchesJson6902", "images", "replicas",
    "configMapGenerator", "secretGenerator", "generatorOptions", "generators", "transformers",
    "validators", "vars", "replacements", "configurations", "openapi", "buildMetadata",
    "helmCharts", "helmGlobals", "helmChartInflationGenerator", "sortOptions",
}  # fmt: skip
KUSTOMIZE_LABEL_FIELDS = {"pairs", "includeSelectors", "includeTemplates", "fields"}
KUSTOMIZE_GENERATOR_FIELDS = {
    "name",
    "namespace",
    "behavior",
    "files",
    "literals",
    "envs",
    "env",
    "options",
    "type",
}
KUSTOMIZE_IMAGE_FIELDS = {"name", "newName", "newTag", "digest", "tagSuffix"}


# --------------------------------------------------------------------------- helpers


def run_tool(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    exe = BIN / tool
    if not exe.exists():
        pytest.fail(f"{exe} is missing: install the test extras (pip install -e '.[test]')")
    return subprocess.run(
        [str(exe), *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, (
        f"{' '.join(result.args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    )


def all_settings() -> dict[str, Any]:
    """Every setting Herald reads (the core's and each platform's), by environment name."""
    classes = (Settings, *(platform.settings for platform in PLATFORMS))
    return {
        str(cls.model_config["env_prefix"]) + name.upper(): info
        for cls in classes
        for name, info in cls.model_fields.items()
    }


def setting_names() -> set[str]:
    return set(all_settings())


def setting_default(env_name: str) -> Any:
    found = all_settings()
    assert env_name in found, f"{env_name} is not a setting of Herald's core or of any platform"
    return found[env_name].default


def port_of(address: str) -> int:
    return int(str(address).rpartition(":")[2])


def seconds(duration: str) -> float:
    """A Compose duration such as 45s, 1m30s or 2m."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 0.000001}
    return sum(float(n) * scale[u] for n, u in parts)


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def kustomization() -> dict[str, Any]:
    return dict(yaml.safe_load(KUSTOMIZATION.read_text()))


def listed_resources() -> list[Path]:
    return [K8S / name for name in kustomization().get("resources", [])]


def k8s_objects() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in listed_resources():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path, doc


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    found = [doc for _, doc in k8s_objects() if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name} among the kustomization's resources"
    return found[0]


def configmap_data() -> dict[str, str]:
    return {str(k): str(v) for k, v in k8s_object("ConfigMap", "herald-config")["data"].items()}


def is_herald_image(image: str) -> bool:
    return image.split("@")[0].rsplit(":", 1)[0].rsplit("/", 1)[-1] == "herald"


def herald_workloads() -> list[dict[str, Any]]:
    """Deployments and StatefulSets whose pods run the Herald image."""
    return [
        doc
        for _, doc in k8s_objects()
        if doc["kind"] in ("Deployment", "StatefulSet")
        and any(is_herald_image(c["image"]) for c in doc["spec"]["template"]["spec"]["containers"])
    ]


def herald_container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    (container,) = [c for c in containers if is_herald_image(c["image"])]
    return dict(container)


def container_env(workload: dict[str, Any]) -> dict[str, str]:
    """The HERALD_* environment a Herald container gets: ConfigMap, then placeholder Secret, then env."""
    container = herald_container(workload)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            assert source["configMapRef"]["name"] == "herald-config"
            env.update(configmap_data())
        if "secretRef" in source:
            assert source["secretRef"]["name"] == "herald-secrets"
            env.update(read_env_file(K8S / "secret.example.env"))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "fieldRef" in item.get("valueFrom", {}):
            env[item["name"]] = "0"  # a pod index
        elif "secretKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "herald-secrets"
            env[item["name"]] = read_env_file(K8S / "secret.example.env")[ref["key"]]
    return env


def read_env_file(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not KEY=value: {line!r}"
            pairs[key] = value
    return pairs


def named_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(number)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        if raw.lstrip().startswith("#"):
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        line = (pending + raw).strip()
        pending = ""
        if line:
            lines.append(line)
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    return instructions[last_from:]


def herald_workload(name: str) -> dict[str, Any]:
    (found,) = [w for w in herald_workloads() if w["metadata"]["name"] == name]
    return found


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"]["labels"])


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def herald_intake_waiting_name() -> str:
    """The name Herald exports the intake's waiting gauge under."""
    gauge = getattr(Metrics(), "intake_waiting", None)
    if gauge is None:  # core/metrics.py does not export it yet
        return INTAKE_WAITING_METRIC
    (family,) = gauge.describe()
    return str(family.name)


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Validate an environment as Herald would at start-up (no .env, nothing else from this process)."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    unknown = sorted(set(env) - setting_names())
    assert not unknown, f"not Herald settings: {unknown}"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        return load_config(env_file=None).core
    except ConfigError as err:
        pytest.fail(err.render())


# --------------------------------------------------------------------------- the validators


def test_compose_file_follows_the_compose_specification() -> None:
    assert_ok(run_tool("check-jsonschema", "--builtin-schema", "vendor.compose-spec", str(COMPOSE)))


def test_dockerfile_passes_hadolint_without_warnings() -> None:
    assert_ok(run_tool("hadolint", "--failure-threshold", "warning", str(DOCKERFILE)))


def test_kubernetes_manifests_pass_strict_schema_validation() -> None:
    files = [str(path) for path in listed_resources()]
    assert files
    assert_ok(run_tool("kubernetes-validate", "--kubernetes-version", K8S_VERSION, "--strict", *files))


@pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) not on PATH"
)
def test_kustomize_builds_and_the_result_validates(tmp_path: Path) -> None:
    built = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=120, check=False
    )
    assert_ok(built)
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(built.stdout)
    docs = [doc for doc in yaml.safe_load_all(built.stdout) if doc]
    assert all(doc["metadata"].get("namespace") == "herald" for doc in docs if doc["kind"] != "Namespace")
    assert {"herald-secrets", "huggingface"} <= {
        doc["metadata"]["name"].rsplit("-", 1)[0] for doc in docs if doc["kind"] == "Secret"
    }
    assert_ok(run_tool("kubernetes-validate", "--kubernetes-version", K8S_VERSION, "--strict", str(rendered)))


# --------------------------------------------------------------------------- the kustomization


def test_kustomization_lists_every_manifest_and_only_existing_files() -> None:
    listed = kustomization().get("resources", [])
    assert len(listed) == len(set(listed)), "a resource is listed twice"
    missing = [name for name in listed if not (K8S / name).is_file()]
    assert not missing, f"listed in kustomization.yaml but missing: {missing}"
    generators = kustomization().get("secretGenerator", []) + kustomization().get("configMapGenerator", [])
    inputs = {f.rpartition("=")[2] for g in generators for f in g.get("files", [])}  # data, not manifests
    on_disk = {p.name for p in K8S.iterdir() if p.suffix in (".yaml", ".yml")} - {KUSTOMIZATION.name}
    assert on_disk - set(listed) - inputs == set(), (
        f"not listed in kustomization.yaml: {sorted(on_disk - set(listed) - inputs)}"
    )
    for generator in generators:
        for name in generator.get("envs", []) + [f.rpartition("=")[2] for f in generator.get("files", [])]:
            assert (K8S / name).is_file(), f"generator {generator['name']} reads missing {name}"


def test_kustomization_uses_only_kustomize_fields() -> None:
    doc = kustomization()
    assert doc["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert doc["kind"] == "Kustomization"
    assert set(doc) <= KUSTOMIZE_FIELDS, f"unknown kustomize fields: {sorted(set(doc) - KUSTOMIZE_FIELDS)}"
    assert doc["namespace"] == "herald"
    assert isinstance(doc["resources"], list)
    for entry in doc.get("labels", []):
        assert set(entry) <= KUSTOMIZE_LABEL_FIELDS, f"unknown fields in labels: {entry}"
        assert entry.get("includeSelectors") is not True, "selectors are immutable: keep labels out of them"
    for entry in doc.get("secretGenerator", []) + doc.get("configMapGenerator", []):
        assert set(entry) <= KUSTOMIZE_GENERATOR_FIELDS, f"unknown fields in a generator: {entry}"
    for entry in doc.get("images", []):
        assert set(entry) <= KUSTOMIZE_IMAGE_FIELDS, f"unknown fields in images: {entry}"
    namespaces = [d for _, d in k8s_objects() if d["kind"] == "Namespace"]
    assert [d["metadata"]["name"] for d in namespaces] == [doc["namespace"]]


# --------------------------------------------------------------------------- the image


def test_image_healthcheck_asks_healthz_on_the_default_http_port() -> None:
    default_port = port_of(setting_default("HERALD_HTTP_ADDR"))
    (check,) = [args for op, args in final_stage() if op == "HEALTHCHECK"]
    assert "/healthz" in check
    assert {int(p) for p in re.findall(r":(\d+)", check)} == {default_port}
    exposed = {int(p) for op, args in final_stage() if op == "EXPOSE" for p in args.split()}
    assert exposed == {default_port, port_of(setting_default("HERALD_TELEGRAM_WEBHOOK_LISTEN"))}


def test_image_runs_herald_as_a_non_root_user_from_the_builders_venv_only() -> None:
    stage = final_stage()
    ops = dict(stage)  # the last of each instruction
    assert re.fullmatch(r"python:3\.12\.\d+-slim(-\w+)?", ops["FROM"]), ops["FROM"]
    user = ops["USER"].split(":")[0]
    assert user.isdigit() and int(user) > 0, "USER must be a numeric non-root uid (for runAsNonRoot)"
    for workload in herald_workloads():
        assert workload["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(user)
    assert ops["ENTRYPOINT"].replace(" ", "") == '["herald"]'
    assert ops["CMD"].replace(" ", "") == '["run"]'
    env = " ".join(args for op, args in stage if op == "ENV")
    assert "HERALD_LOG_FORMAT=json" in env and "PYTHONUNBUFFERED=1" in env
    copies = [args for op, args in stage if op == "COPY"]
    assert copies and all(args.startswith("--from=builder ") for args in copies), copies
    runs = " ".join(args for op, args in stage if op == "RUN")
    assert not re.search(r"apt-get|apk |gcc|build-essential|pip install", runs), runs
    builder_runs = " ".join(args for op, args in dockerfile_instructions() if op == "RUN")
    assert re.search(r"pip install [^&]*(?<![-\w])\.(\s|$)", builder_runs), "the builder must `pip install .`"
    assert not re.search(r"pip install[^&]*(\s-e\s|--editable|\[test\])", builder_runs)


def test_dockerignore_admits_exactly_what_the_dockerfile_copies() -> None:
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*", ".dockerignore should exclude everything, then admit what the build needs"
    admitted = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    copied = set()
    for op, args in dockerfile_instructions():
        if op == "COPY" and not args.startswith("--from"):
            copied.update(part.removeprefix("./").rstrip("/") for part in args.split()[:-1])
    assert copied == admitted, f"COPY {sorted(copied)} but .dockerignore admits {sorted(admitted)}"
    for needed in ("pyproject.toml", "README.md"):
        assert needed in copied
    packages = re.findall(r'"(\w+)\*"', (ROOT / "pyproject.toml").read_text().split("packages.find]")[1])
    assert set(packages) <= copied, f"pyproject's packages {packages} must all be copied"


# --------------------------------------------------------------------------- settings


def test_every_herald_name_in_the_deploy_files_is_a_real_setting() -> None:
    real = setting_names()
    assert not COMPOSE_ONLY_VARIABLES & real, "a compose-only variable collides with a setting"
    files = [
        DOCKERFILE,
        COMPOSE,
        DEPLOY / "README.md",
        *sorted(K8S.glob("*.yaml")),
        *sorted(K8S.glob("*.env")),
    ]
    unknown = {}
    for path in files:
        names = set(HERALD_NAME.findall(path.read_text())) - real
        if path == COMPOSE:
            text = COMPOSE.read_text()
            for name in names & COMPOSE_ONLY_VARIABLES:
                assert len(re.findall(rf"\b{name}\b", text)) == len(re.findall(rf"\$\{{{name}\b", text)), (
                    f"{name} may appear in compose.yaml only as an interpolation"
                )
            names -= COMPOSE_ONLY_VARIABLES
        if path == DEPLOY / "README.md":
            names -= COMPOSE_ONLY_VARIABLES
        if names:
            unknown[str(path.relative_to(ROOT))] = sorted(names)
    assert not unknown, f"HERALD_* names that no settings of Herald define: {unknown}"


def test_kubernetes_herald_pods_have_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    workloads = herald_workloads()
    assert {w["kind"] for w in workloads} == {"Deployment", "StatefulSet"}
    for workload in workloads:
        env = container_env(workload)
        with monkeypatch.context() as patch:
            settings = settings_from({k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}, patch)
        assert settings.redis_url, f"{workload['metadata']['name']}: a container must not use embedded Redis"


def test_compose_herald_services_have_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose()["services"]
    herald = [name for name, svc in services.items() if "build" in svc]
    assert sorted(herald) == ["herald", "herald-cpu", "herald-cpu-worker", "herald-worker"]
    for name in herald:
        env = {k: str(v) for k, v in services[name]["environment"].items()}
        with monkeypatch.context() as patch:
            settings = settings_from(env, patch)
        assert settings.redis_url, f"{name}: a container must not use embedded Redis"
        host = urlsplit(settings.tgi_url).hostname
        assert host in services and set(services[host]["profiles"]) >= set(services[name]["profiles"])
        assert services[name]["depends_on"][host]["condition"] == "service_healthy"


def test_compose_runs_one_receiving_service_and_extra_workers_on_demand() -> None:
    services = compose()["services"]
    for receiver, worker in (("herald", "herald-worker"), ("herald-cpu", "herald-cpu-worker")):
        # The receiving service runs every role unless deploy/.env says HERALD_ROLE=gateway.
        assert "HERALD_ROLE" not in services[receiver]["environment"], receiver
        assert services[receiver].get("scale", 1) == 1, f"{receiver}: one receiver (one Telegram poller)"
        env = dict(services[worker]["environment"])
        assert env.pop("HERALD_ROLE") == "worker", worker
        # The same model server and settings as the receiving service, and no way in.
        assert env == services[receiver]["environment"], f"{worker} differs from {receiver}"
        assert services[worker]["profiles"] == services[receiver]["profiles"]
        assert services[worker]["depends_on"] == services[receiver]["depends_on"]
        assert services[worker]["image"] == services[receiver]["image"]
        assert "ports" not in services[worker], f"{worker} publishes ports: it could not scale"
        assert services[worker]["scale"] == 0, f"{worker}: no extra workers unless asked for"


def test_grace_periods_exceed_herald_shutdown_grace() -> None:
    default = float(setting_default("HERALD_SHUTDOWN_GRACE_SECONDS"))
    for workload in herald_workloads():
        grace = float(container_env(workload).get("HERALD_SHUTDOWN_GRACE_SECONDS", default))
        period = workload["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
        assert period > grace, (
            f"{workload['metadata']['name']}: terminationGracePeriodSeconds {period} <= {grace}"
        )
    for name, svc in compose()["services"].items():
        if "build" in svc:
            grace = float(svc["environment"].get("HERALD_SHUTDOWN_GRACE_SECONDS", default))
            assert seconds(svc.get("stop_grace_period", "10s")) > grace, f"compose {name}: stop_grace_period"


# --------------------------------------------------------------------------- ports and probes


def test_kubernetes_probes_and_services_use_herald_ports() -> None:
    http_port = port_of(setting_default("HERALD_HTTP_ADDR"))
    assert port_of(configmap_data().get("HERALD_HTTP_ADDR", f":{http_port}")) == http_port
    for workload in herald_workloads():
        container = herald_container(workload)
        expected = {"readinessProbe": "/readyz", "livenessProbe": "/healthz", "startupProbe": "/healthz"}
        for probe, path in expected.items():
            get = container[probe]["httpGet"]
            assert get["path"] == path, f"{workload['metadata']['name']} {probe}"
            assert named_port(container, get["port"]) == http_port, f"{workload['metadata']['name']} {probe}"
    deployment = k8s_object("Deployment", "herald-telegram")
    container = herald_container(deployment)
    webhook_port = port_of(
        container_env(deployment).get(
            "HERALD_TELEGRAM_WEBHOOK_LISTEN", setting_default("HERALD_TELEGRAM_WEBHOOK_LISTEN")
        )
    )
    service_ports = {p["name"]: p for p in k8s_object("Service", "herald-telegram")["spec"]["ports"]}
    assert named_port(container, service_ports["http"]["targetPort"]) == http_port
    assert named_port(container, service_ports["telegram"]["targetPort"]) == webhook_port
    worker = k8s_object("Deployment", "herald-worker")
    (port,) = k8s_object("Service", "herald-worker")["spec"]["ports"]
    assert named_port(herald_container(worker), port["targetPort"]) == http_port
    for name, svc in compose()["services"].items():
        if "build" in svc and svc["environment"].get("HERALD_ROLE") != "worker":
            targets = {int(str(p).rpartition(":")[2]) for p in svc["ports"]}
            assert http_port in targets, f"compose {name} does not publish {http_port}"


def test_every_herald_pod_is_scraped_on_the_metrics_port() -> None:
    http_port = port_of(setting_default("HERALD_HTTP_ADDR"))
    for workload in herald_workloads():
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        name = workload["metadata"]["name"]
        assert annotations["prometheus.io/scrape"] == "true", name
        assert int(annotations["prometheus.io/port"]) == http_port, name
        assert annotations["prometheus.io/path"] == "/metrics", name


def test_ingress_routes_the_telegram_webhook_url_to_the_webhook_port() -> None:
    url = urlsplit(container_env(k8s_object("Deployment", "herald-telegram"))["HERALD_TELEGRAM_WEBHOOK_URL"])
    ingress = k8s_object("Ingress", "herald-telegram")
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == url.hostname
    assert url.hostname in [h for tls in ingress["spec"].get("tls", []) for h in tls["hosts"]]
    (path,) = rule["http"]["paths"]
    if path["pathType"] == "Exact":
        assert path["path"] == url.path
    else:
        assert url.path.startswith(path["path"])
    assert path["backend"]["service"] == {"name": "herald-telegram", "port": {"name": "telegram"}}


# --------------------------------------------------------------------------- roles and scaling


def test_every_herald_workload_runs_its_one_role(monkeypatch: pytest.MonkeyPatch) -> None:
    roles = {}
    for workload in herald_workloads():
        name = workload["metadata"]["name"]
        args = herald_container(workload).get("args", [])
        assert "--role" not in " ".join(args), f"{name}: set the role in HERALD_ROLE, not in args"
        env = container_env(workload)
        # Said in each workload: the default (all) would receive and answer in one pod.
        assert "HERALD_ROLE" in {item["name"] for item in herald_container(workload)["env"]}, name
        with monkeypatch.context() as patch:
            roles[name] = settings_from(
                {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}, patch
            ).role
    assert roles == {**dict.fromkeys(GATEWAYS, "gateway"), **dict.fromkeys(WORKERS, "worker")}


def test_services_and_disruption_budgets_select_one_workload_each() -> None:
    pods = {w["metadata"]["name"]: pod_labels(w) for _, w in k8s_objects() if "template" in w.get("spec", {})}
    for _, doc in k8s_objects():
        if doc["kind"] == "Service":
            selector = doc["spec"]["selector"]
        elif doc["kind"] == "PodDisruptionBudget":
            selector = doc["spec"]["selector"]["matchLabels"]
        else:
            continue
        matched = [name for name, labels in pods.items() if selects(selector, labels)]
        assert len(matched) == 1, f"{doc['kind']} {doc['metadata']['name']} selects {matched}"
    for workload in herald_workloads():
        labels = workload["spec"]["selector"]["matchLabels"]
        assert [n for n, pod in pods.items() if selects(labels, pod)] == [workload["metadata"]["name"]]


def test_telegram_gateway_receives_by_webhook_and_holds_only_telegrams_secrets() -> None:
    deployment = k8s_object("Deployment", "herald-telegram")
    container = herald_container(deployment)
    env = container_env(deployment)
    assert deployment["spec"]["replicas"] >= 2
    # Several replicas: Telegram long polling allows one poller per token.
    assert env.get("HERALD_TELEGRAM_WEBHOOK_URL", "").startswith("https://")
    assert env.get("HERALD_TELEGRAM_WEBHOOK_SECRET")
    assert env.get("HERALD_TELEGRAM_TOKEN")
    assert all("secretRef" not in source for source in container.get("envFrom", []))
    secrets = {
        item["valueFrom"]["secretKeyRef"]["key"]
        for item in container["env"]
        if "secretKeyRef" in item.get("valueFrom", {})
    }
    assert secrets == {"HERALD_TELEGRAM_TOKEN", "HERALD_TELEGRAM_WEBHOOK_SECRET"}
    assert env["HERALD_SCHEDULER"] == "false"
    pdb = k8s_object("PodDisruptionBudget", "herald-telegram")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_workers_answer_run_the_scheduler_and_hold_no_platform_connection() -> None:
    deployment = k8s_object("Deployment", "herald-worker")
    container = herald_container(deployment)
    env = container_env(deployment)
    # Every token, to answer and publish over REST.
    assert any(source.get("secretRef", {}).get("name") == "herald-secrets" for source in container["envFrom"])
    assert env.get("HERALD_TELEGRAM_TOKEN") and env.get("HERALD_DISCORD_TOKEN")
    # Nothing that receives (the role opens no Discord gateway), no Telegram webhook (or its
    # port); HERALD_DISCORD_GATEWAY=false would mean publishing only: no answers at all.
    assert env.get("HERALD_DISCORD_GATEWAY", "true") == "true"
    assert "HERALD_TELEGRAM_WEBHOOK_URL" not in env
    assert [p["name"] for p in container["ports"]] == ["http"]
    assert env.get("HERALD_SCHEDULER", "true") == "true"
    # The HPA owns the replica count: a value here would reset it on every apply.
    assert "replicas" not in deployment["spec"]
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pdb = k8s_object("PodDisruptionBudget", "herald-worker")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert "minAvailable" not in pdb["spec"], "the HPA moves the replicas: budget maxUnavailable"
    hpa = k8s_object("HorizontalPodAutoscaler", "herald-worker")
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]


def test_worker_hpa_scales_the_worker_deployment_on_the_intake_queue() -> None:
    (hpa,) = [doc for _, doc in k8s_objects() if doc["kind"] == "HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert target == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "herald-worker"}
    workers = k8s_object("Deployment", target["name"])
    assert container_env(workers)["HERALD_ROLE"] == "worker"
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    # One queue for all workers: an External metric whose AverageValue the HPA
    # divides by the replicas (a Pods metric would average the same number).
    external = metrics["External"]["external"]
    assert external["metric"]["name"] == INTAKE_WAITING_METRIC == herald_intake_waiting_name()
    assert external["target"]["type"] == "AverageValue"
    assert float(external["target"]["averageValue"]) > 0
    # CPU utilization is a share of the request, so the request must be there.
    cpu = metrics["Resource"]["resource"]
    assert cpu["name"] == "cpu" and cpu["target"]["type"] == "Utilization"
    assert herald_container(workers)["resources"]["requests"]["cpu"]
    behavior = hpa["spec"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 60
    assert (
        behavior["scaleUp"]["stabilizationWindowSeconds"]
        < behavior["scaleDown"]["stabilizationWindowSeconds"]
    )


def test_prometheus_adapter_rule_serves_the_metric_the_hpa_reads() -> None:
    (hpa,) = [doc for _, doc in k8s_objects() if doc["kind"] == "HorizontalPodAutoscaler"]
    (metric,) = [m["external"]["metric"] for m in hpa["spec"]["metrics"] if m["type"] == "External"]
    values = yaml.safe_load(ADAPTER_VALUES.read_text())
    rules = [r for r in values["rules"]["external"] if r["name"]["as"] == metric["name"]]
    assert len(rules) == 1, f"no single prometheus-adapter external rule serves {metric['name']}"
    (rule,) = rules
    series = herald_intake_waiting_name()
    assert re.match(rule["name"]["matches"], series)
    assert rule["seriesQuery"].startswith(series + "{")
    # Namespaced: the adapter then limits the query to the HPA's namespace.
    assert rule["resources"]["overrides"]["namespace"] == {"resource": "namespace"}
    # Every pod reports the whole queue: take the max, never the sum.
    query = rule["metricsQuery"]
    assert query.startswith("max(<<.Series>>{<<.LabelMatchers>>})"), query
    assert "sum" not in query and not metric.get("selector")


def test_podmonitor_example_scrapes_every_herald_pod() -> None:
    http_port = port_of(setting_default("HERALD_HTTP_ADDR"))
    (monitor,) = [doc for doc in yaml.safe_load_all(PODMONITOR.read_text()) if doc]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == "PodMonitor"
    namespace = kustomization()["namespace"]
    assert monitor["metadata"]["namespace"] == namespace
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [namespace]}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics"
    for workload in herald_workloads():
        assert selects(monitor["spec"]["selector"]["matchLabels"], pod_labels(workload))
        assert named_port(herald_container(workload), endpoint["port"]) == http_port
    # Custom resources stay out of the kustomization (strictly validated against core schemas).
    assert not [p for p in listed_resources() if MONITORING in p.parents]


def test_redis_keeps_an_append_only_file_synced_every_second() -> None:
    (redis,) = [c for c in k8s_object("StatefulSet", "redis")["spec"]["template"]["spec"]["containers"]]
    for where, command in (("k8s", redis["args"]), ("compose", compose()["services"]["redis"]["command"])):
        line = " ".join(command)
        assert "--appendonly yes" in line, where
        assert "--appendfsync everysec" in line, where


def test_discord_statefulset_runs_one_shard_per_pod_and_nothing_else() -> None:
    sts = k8s_object("StatefulSet", "herald-discord")
    container = herald_container(sts)
    env_items = {item["name"]: item for item in container["env"]}
    assert all("secretRef" not in source for source in container.get("envFrom", []))
    env = container_env(sts)
    assert env["HERALD_ROLE"] == "gateway"
    assert "HERALD_TELEGRAM_TOKEN" not in env
    assert env["HERALD_SCHEDULER"] == "false"
    assert env.get("HERALD_DISCORD_GATEWAY", "true") == "true"
    assert int(env["HERALD_DISCORD_SHARD_COUNT"]) == sts["spec"]["replicas"]
    field = env_items["HERALD_DISCORD_SHARD_IDS"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert field == "metadata.labels['apps.kubernetes.io/pod-index']"
    assert env_items["HERALD_DISCORD_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "HERALD_DISCORD_TOKEN"
    service = k8s_object("Service", sts["spec"]["serviceName"])
    assert service["spec"].get("clusterIP") == "None"


def test_herald_pods_are_locked_down() -> None:
    for workload in herald_workloads():
        spec = workload["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        ctx = herald_container(workload)["securityContext"]
        assert ctx["readOnlyRootFilesystem"] is True
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"]["drop"] == ["ALL"]
        resources = herald_container(workload)["resources"]
        assert resources["requests"] and resources["limits"]


# --------------------------------------------------------------------------- images and profiles


def test_images_are_pinned_and_tgi_agrees_between_compose_and_kubernetes() -> None:
    images = {f"compose {n}": s["image"] for n, s in compose()["services"].items()}
    for path, doc in k8s_objects():
        if doc["kind"] in ("Deployment", "StatefulSet"):
            for c in doc["spec"]["template"]["spec"]["containers"]:
                images[f"{path.name} {c['name']}"] = c["image"]
    for where, image in images.items():
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        assert tag and tag != "latest", f"{where}: {image} is not pinned by tag"
    tgi = {where: image for where, image in images.items() if "text-generation-inference" in image}
    assert len(tgi) == 2 and len(set(tgi.values())) == 1, f"TGI images differ: {tgi}"


def test_compose_profiles_keep_gpu_services_out_of_the_cpu_profile() -> None:
    services = compose()["services"]
    assert all(svc.get("profiles") for svc in services.values()), (
        "a service without profile starts every time"
    )
    assert "cpu" not in services["tgi"]["profiles"]
    assert services["tgi"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    for name, svc in services.items():
        for dependency, how in svc.get("depends_on", {}).items():
            assert set(svc["profiles"]) <= set(services[dependency]["profiles"]), f"{name} -> {dependency}"
            assert how["condition"] == "service_healthy" and "healthcheck" in services[dependency]
    for profile in ("gpu", "cpu"):
        assert any("build" in svc and profile in svc["profiles"] for svc in services.values()), profile
