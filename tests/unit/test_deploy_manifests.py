"""deploy/ checked where Docker and a cluster are not: the Kubernetes manifests against the
Kubernetes schemas (kubernetes-validate ships them, so this runs offline), compose.yaml and the
manifests against the settings the services really read (variable names, ports, health ports),
every service's probes, the Dockerfile's runtime stage, .dockerignore, and the two scripts the
image runs (deploy/healthcheck.py, deploy/make_credentials.py).

Each check is a function returning the problems it finds, so the same function is run on the
real files (no problem) and on a copy with one planted mistake (the problem is found).
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import re
import socket
import stat
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import kubernetes_validate
import pytest
import yaml
from cryptography import x509
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from bench import extrapolate_national
from services._common.auth import Security
from services._common.config import DEFAULT_PORTS, SERVICE_NAMES, ConfigError
from services.colour.config import ColourConfig
from services.declaration.config import DeclarationConfig
from services.display.config import DisplayConfig
from services.gateway.config import GatewayConfig
from services.risk_index.config import RiskIndexConfig

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
KUBERNETES_VERSION = "1.37.0"
NOT_APPLIED = {"kustomization.yaml"}  # kustomize's own file, not a Kubernetes object
TEMPLATE = "secrets.template.yaml"  # validated, but not applied by kustomization.yaml
WORKLOADS = {"Deployment", "StatefulSet"}
# `python -m services.<module>` -> the name the settings use (HEALTHCODE_<NAME>_...).
GRPC_SERVICES = {f"services.{name}": name for name in SERVICE_NAMES}
GATEWAY = "services.gateway"
NAME = re.compile(r"HEALTHCODE_[A-Z0-9_]+")
SECRET_HEX = "ab" * 32

Problems = list[str]


def _load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"deploy_{name}", DEPLOY / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


healthcheck = _load_script("healthcheck")
make_credentials = _load_script("make_credentials")


# --- what the services read ---------------------------------------------------------------


class RecordingEnv(Mapping[str, str]):
    """An environment that remembers every name looked up in it."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return self._values[key]

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.read.add(key)
        return key in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


SETTINGS: dict[str, Callable[[Mapping[str, str]], object]] = {
    "services.declaration": DeclarationConfig.from_env,
    "services.risk_index": RiskIndexConfig.from_env,
    "services.colour": ColourConfig.from_env,
    "services.display": DisplayConfig.from_env,
    "services.gateway": GatewayConfig.from_env,
}
IDENTITY = {**GRPC_SERVICES, GATEWAY: "gateway"}


def names_read_by(module: str, data_dir: Path) -> set[str]:
    """Every HEALTHCODE_* name the service's settings object and its credentials look up."""
    env = RecordingEnv({"HEALTHCODE_DATA_DIR": str(data_dir), "HEALTHCODE_SECRET": SECRET_HEX})
    SETTINGS[module](env)
    with pytest.raises(ConfigError):  # no certificate in data_dir: read, then refused
        Security.from_env(data_dir, IDENTITY[module], env)
    return {name for name in env.read if name.startswith("HEALTHCODE_")}


def names_in_common_code() -> set[str]:
    """HEALTHCODE_* names that services/_common reads outside the settings objects (logs,
    traces, keepalive, the secret file): string constants that are a whole name, and
    f-strings `HEALTHCODE_{service}_SUFFIX` expanded over the services. Docstrings and comments
    are not names."""
    found: set[str] = set()
    for path in (ROOT / "services" / "_common").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if NAME.fullmatch(node.value):
                    found.add(node.value)
            elif isinstance(node, ast.JoinedStr) and len(node.values) == 3:
                head, _, tail = node.values
                if (
                    isinstance(head, ast.Constant)
                    and head.value == "HEALTHCODE_"
                    and isinstance(tail, ast.Constant)
                    and isinstance(tail.value, str)
                ):
                    found |= {f"HEALTHCODE_{s.upper()}{tail.value}" for s in SERVICE_NAMES}
    return found


@pytest.fixture(scope="module")
def read_names(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """Per service module, the names it reads (its own settings, and the common code)."""
    common = names_in_common_code()
    data_dir = tmp_path_factory.mktemp("settings")
    return {module: names_read_by(module, data_dir) | common for module in SETTINGS}


def default_port(module: str) -> int:
    if module == GATEWAY:
        return GatewayConfig.from_env({}).port
    return int(getattr(DEFAULT_PORTS, GRPC_SERVICES[module]))


# --- the files ----------------------------------------------------------------------------


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name not in NOT_APPLIED)


def k8s_objects() -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for path in manifest_files():
        if path.name != TEMPLATE:
            objects += [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    return objects


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def service_module(args: list[str]) -> str | None:
    """`services.colour` from a container's arguments (the image's entrypoint is python -m)."""
    return next((a for a in args if a in SETTINGS), None)


def containers(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in objects:
        if obj["kind"] in WORKLOADS:
            for container in obj["spec"]["template"]["spec"]["containers"]:
                yield obj["metadata"]["name"], container


def env_of(container: Mapping[str, Any]) -> dict[str, str]:
    return {e["name"]: str(e.get("value", "")) for e in container.get("env", [])}


# --- checks: each returns what is wrong -----------------------------------------------------


def is_service_port(name: str) -> bool:
    """HEALTHCODE_<SERVICE>_PORT: the port the service answers on (not health, not metrics)."""
    return name.endswith("_PORT") and not name.endswith(("_HEALTH_PORT", "_METRICS_PORT"))


def check_env_names(module: str, env: Mapping[str, Any], read: Mapping[str, set[str]]) -> Problems:
    return [
        f"{module}: {name} is not a setting it reads"
        for name in env
        if name.startswith("HEALTHCODE_") and name not in read[module]
    ]


def check_k8s_workloads(objects: list[dict[str, Any]], read: Mapping[str, set[str]]) -> Problems:
    """Names, ports, addresses and probes of every container against the services."""
    problems: Problems = []
    services = {
        o["metadata"]["name"]: {p["port"] for p in o["spec"]["ports"]}
        for o in objects
        if o["kind"] == "Service"
    }
    modules_seen: set[str] = set()
    for workload, container in containers(objects):
        where = f"{workload}/{container['name']}"
        module = service_module(container.get("args", []))
        if module is None:
            problems.append(f"{where}: runs no known service ({container.get('args')})")
            continue
        modules_seen.add(module)
        env = env_of(container)
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        problems += check_env_names(module, env, read)
        main = "http" if module == GATEWAY else "grpc"
        if ports.get(main) != default_port(module):
            problems.append(f"{where}: {main} port {ports.get(main)}, not {default_port(module)}")
        for name, value in env.items():
            if is_service_port(name) and int(value) != default_port(module):
                problems.append(f"{where}: {name}={value}, not {default_port(module)}")
            if name.endswith("_ADDR"):
                problems += check_address(where, name, value, services)
        problems += check_k8s_probes(where, module, env, ports, container)
    for module in SETTINGS:
        if module not in modules_seen:
            problems.append(f"no workload runs {module}")
    return problems


def check_address(where: str, name: str, value: str, hosts: Mapping[str, set[int]]) -> Problems:
    """HEALTHCODE_<PEER>_ADDR names a Service (or compose service) of that peer, on its port."""
    peer = name.removeprefix("HEALTHCODE_").removesuffix("_ADDR").lower()
    if peer not in SERVICE_NAMES:
        return [f"{where}: {name} is no peer's address"]
    host, _, port = value.removeprefix("dns:///").rpartition(":")
    short = host.split(".")[0]
    expected = int(getattr(DEFAULT_PORTS, peer))
    problems = []
    if int(port) != expected:
        problems.append(f"{where}: {name}={value}: {peer} listens on {expected}")
    if short not in hosts or expected not in hosts[short]:
        problems.append(f"{where}: {name}={value}: no Service {short} on port {expected}")
    elif short.split("-")[0] != peer.split("_")[0]:
        problems.append(f"{where}: {name}={value}: {short} is not {peer}")
    return problems


def check_k8s_probes(
    where: str,
    module: str,
    env: Mapping[str, str],
    ports: Mapping[str, int],
    container: Mapping[str, Any],
) -> Problems:
    """Every probe there; readiness on the health port; startup and liveness that pass while a
    replica waits for the index (never the readiness signal)."""
    problems = [
        f"{where}: no {probe}"
        for probe in ("startupProbe", "readinessProbe", "livenessProbe")
        if probe not in container
    ]
    if problems:
        return problems
    if module == GATEWAY:
        if container["readinessProbe"].get("httpGet", {}).get("path") != "/healthz":
            problems.append(f"{where}: readiness is not GET /healthz")
        for probe in ("startupProbe", "livenessProbe"):
            if "tcpSocket" not in container[probe]:
                problems.append(f"{where}: {probe} should only need the port (not the services)")
        return problems
    service = GRPC_SERVICES[module]
    variable = f"HEALTHCODE_{service.upper()}_HEALTH_PORT"
    if variable not in env:
        return [f"{where}: {variable} unset: the service opens no health port"]
    health_port = int(env[variable])
    if ports.get("health") != health_port:
        problems.append(f"{where}: containerPort health {ports.get('health')} != {health_port}")
    if container["readinessProbe"].get("grpc", {}).get("port") != health_port:
        problems.append(f"{where}: readiness is not gRPC health on {health_port}")
    for probe in ("startupProbe", "livenessProbe"):
        command = container[probe].get("exec", {}).get("command", [])
        if not ("/app/deploy/healthcheck.py" in command and service in command):
            problems.append(f"{where}: {probe} is not deploy/healthcheck.py {service}")
        elif "--alive" not in command:
            problems.append(f"{where}: {probe} without --alive fails while it waits for the index")
    metrics = env.get(f"HEALTHCODE_{service.upper()}_METRICS_PORT")
    if metrics is not None and ports.get("metrics") != int(metrics):
        problems.append(f"{where}: containerPort metrics {ports.get('metrics')} != {metrics}")
    return problems


QUANTITY = re.compile(r"(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|Ti)?")
UNITS = {None: 1.0, "m": 1e-3, "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40}
# What a process holding the index needs at 18 M people (BENCHMARKS.md, `make bench-matcher`:
# 1.34 GiB resident after the build, 1.92 GiB at its peak).
INDEX_PEAK_BYTES = 1.92 * 2**30


def quantity(text: str | int) -> float:
    match = QUANTITY.fullmatch(str(text))
    if match is None:
        raise ValueError(f"{text!r} is not a resource quantity")
    return float(match.group(1)) * UNITS[match.group(2)]


def check_resources(objects: list[dict[str, Any]]) -> Problems:
    """Requests and limits of CPU and memory on every container, requests within limits, and
    room for the index where a process holds one."""
    problems: Problems = []
    for workload, container in containers(objects):
        resources = container.get("resources", {})
        for kind in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in resources.get(kind, {}):
                    problems.append(f"{workload}: no {resource} {kind[:-1]}")
        if problems:
            continue
        for resource in ("cpu", "memory"):
            request = quantity(resources["requests"][resource])
            if request > quantity(resources["limits"][resource]):
                problems.append(f"{workload}: {resource} request above its limit")
        module = service_module(container.get("args", []))
        holds_index = module in {"services.risk_index", "services.colour", "services.display"}
        if holds_index and quantity(resources["limits"]["memory"]) < INDEX_PEAK_BYTES:
            problems.append(f"{workload}: memory limit below the index's 1.92 GiB peak at 18 M")
    return problems


def check_compose(stack: Mapping[str, Any], read: Mapping[str, set[str]]) -> Problems:
    problems: Problems = []
    hosts = {
        name: {default_port(service_module(s.get("command", [])) or "")}
        for name, s in stack["services"].items()
        if service_module(s.get("command", []))
    }
    seen: set[str] = set()
    for name, spec in stack["services"].items():
        module = service_module(spec.get("command", []))
        if module is None:
            continue
        seen.add(module)
        env = {k: str(v) for k, v in (spec.get("environment") or {}).items()}
        problems += check_env_names(module, env, read)
        port = default_port(module)
        published = [str(p).rsplit(":", 1)[-1] for p in spec.get("ports", [])]
        if str(port) not in published:
            problems.append(f"compose {name}: port {port} not published ({published})")
        for key, value in env.items():
            if is_service_port(key) and int(value) != port:
                problems.append(f"compose {name}: {key}={value}, not {port}")
            if key.endswith("_ADDR"):
                problems += check_address(f"compose {name}", key, value, hosts)
        test = (spec.get("healthcheck") or {}).get("test", [])
        if module == GATEWAY:
            if not any(f"{port}/healthz" in str(part) for part in test):
                problems.append(f"compose {name}: no health check on /healthz")
            continue
        service = GRPC_SERVICES[module]
        if f"HEALTHCODE_{service.upper()}_HEALTH_PORT" not in env:
            problems.append(f"compose {name}: no HEALTHCODE_{service.upper()}_HEALTH_PORT")
        if not ("/app/deploy/healthcheck.py" in test and service in test):
            problems.append(f"compose {name}: health check is not healthcheck.py {service}")
        if service != "risk_index" and spec.get("depends_on", {}).get("risk-index") is None:
            problems.append(f"compose {name}: does not wait for the risk index")
    for module in SETTINGS:
        if module not in seen:
            problems.append(f"compose runs no {module}")
    return problems


def check_compose_volumes(stack: Mapping[str, Any]) -> Problems:
    """Every stateful service keeps /data in a named volume; credentials are mounted."""
    problems: Problems = []
    named = set(stack.get("volumes", {}))
    for name, spec in stack["services"].items():
        module = service_module(spec.get("command", []))
        mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in spec.get("volumes", [])}
        if module in GRPC_SERVICES and mounts.get("/data") not in named:
            problems.append(f"compose {name}: /data is not a named volume")
        if module is not None and mounts.get("/credentials") not in named:
            problems.append(f"compose {name}: no credentials mounted")
    return problems


def dockerfile_stages(text: str) -> list[dict[str, Any]]:
    """The Dockerfile's stages: FROM image, and its instructions (continuations joined)."""
    joined = re.sub(r"\\\n", " ", text)
    args: dict[str, str] = {}
    stages: list[dict[str, Any]] = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        op = op.upper()
        if op == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key.strip()] = value.strip()
            if stages:
                stages[-1]["args"][key.strip()] = value.strip()
        if op == "FROM":
            image = rest.split()[0]
            image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), image)
            stages.append({"from": image, "lines": [], "args": dict(args)})
        elif stages:
            stages[-1]["lines"].append((op, rest))
    return stages


def check_dockerfile(text: str) -> Problems:
    problems: Problems = []
    stages = dockerfile_stages(text)
    if len(stages) < 2:
        return ["not multi-stage"]
    runtime = stages[-1]
    lines = runtime["lines"]
    users = [rest for op, rest in lines if op == "USER"]
    if not users:
        problems.append("the runtime stage runs as root (no USER)")
    else:
        user = re.sub(r"\$\{(\w+)\}", lambda m: runtime["args"].get(m.group(1), "?"), users[-1])
        if user.split(":")[0] in {"0", "root", "?"}:
            problems.append(f"the runtime stage runs as {users[-1]!r} ({user})")
    runs = " ".join(rest for op, rest in lines if op == "RUN")
    if not re.search(r"mkdir[^&]*/data", runs) or not re.search(r"chown[^&]*/data", runs):
        problems.append("the runtime stage does not make /data its user's")
    if not any(op == "ENV" and "HEALTHCODE_DATA_DIR=/data" in rest for op, rest in lines):
        problems.append("HEALTHCODE_DATA_DIR is not /data")
    venv_stage = next(
        (s for s in stages[:-1] if any("-m venv /opt/venv" in r for _, r in s["lines"])), None
    )
    if venv_stage is None:
        problems.append("no build stage makes /opt/venv")
    elif venv_stage["from"] != runtime["from"]:
        problems.append(
            f"/opt/venv is made on {venv_stage['from']} but runs on {runtime['from']}: its "
            "interpreter would be missing"
        )
    if not any(op == "COPY" and "--from=build /opt/venv" in rest for op, rest in lines):
        problems.append("the runtime stage does not take /opt/venv from the build")
    if "maturin build" not in text:
        problems.append("the wheel is not built with maturin")
    return problems


def check_dockerignore(text: str) -> Problems:
    patterns = {line.strip() for line in text.splitlines() if line.strip()}
    wanted = {".venv": {".venv"}, "target": {"target", "**/target"}, ".git": {".git"}}
    wanted["data"] = {"data", "/data"}
    return [f".dockerignore lets {what} in" for what, ok in wanted.items() if not ok & patterns]


def check_secrets(objects: list[dict[str, Any]], template: list[dict[str, Any]]) -> Problems:
    """Each workload mounts one Secret holding its own certificate, key, the CA and the secret
    file its settings name; the template and kustomization's generator define the same."""
    problems: Problems = []
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    generated = {
        g["name"]: {f.split("=")[0] for f in g["files"]} for g in kustomization["secretGenerator"]
    }
    templated = {s["metadata"]["name"]: set(s["stringData"]) for s in template}
    if generated != templated:
        problems.append(f"template {templated} != generator {generated}")
    for obj in objects:
        if obj["kind"] not in WORKLOADS:
            continue
        pod = obj["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            module = service_module(container.get("args", [])) or ""
            env = env_of(container)
            mount = next(
                (m for m in container["volumeMounts"] if m["mountPath"] == "/credentials"), None
            )
            if mount is None or env.get("HEALTHCODE_CREDENTIALS") != "/credentials":
                problems.append(f"{obj['metadata']['name']}: credentials not at /credentials")
                continue
            secret = volumes[mount["name"]].get("secret", {}).get("secretName")
            keys = generated.get(secret, set())
            identity = IDENTITY.get(module, "?")
            needed = {"ca.pem", f"{identity}.pem", f"{identity}.key"}
            if secret_file := env.get("HEALTHCODE_SECRET_FILE"):
                needed.add(secret_file.removeprefix("/credentials/"))
            if missing := needed - keys:
                problems.append(f"{obj['metadata']['name']}: {secret} lacks {sorted(missing)}")
            if "ca.key" in keys:
                problems.append(f"{secret}: the CA's private key must not be mounted")
            if "issuer.key" in keys and module != "services.declaration":
                problems.append(f"{secret}: only the sign-in service holds issuer.key")
    return problems


# --- the tests ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(path: Path) -> None:
    documents = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    assert documents
    for document in documents:
        # strict: an unknown or misspelt field is an error, not silently dropped
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_the_schema_validation_rejects_a_misspelt_field() -> None:
    document = copy.deepcopy(next(o for o in k8s_objects() if o["kind"] == "Deployment"))
    document["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_kustomization_applies_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in manifest_files()} - {TEMPLATE}
    assert listed == on_disk
    assert kustomization["namespace"] == "healthcode"


def test_the_settings_scan_finds_what_the_services_read(
    read_names: dict[str, set[str]],
) -> None:
    # The recording sees the per-service names the settings build with f-strings, and the
    # scan of the common code sees the variables read outside them.
    assert "HEALTHCODE_COLOUR_HEALTH_PORT" in read_names["services.colour"]
    assert "HEALTHCODE_SMS" in read_names["services.declaration"]
    assert "HEALTHCODE_SMS" not in read_names["services.colour"]
    assert "HEALTHCODE_GATEWAY_ORIGINS" in read_names["services.gateway"]
    assert {"HEALTHCODE_LOG_FORMAT", "HEALTHCODE_SECRET_FILE"} <= read_names["services.display"]


def test_manifests_name_only_settings_ports_and_probes_the_services_have(
    read_names: dict[str, set[str]],
) -> None:
    assert check_k8s_workloads(k8s_objects(), read_names) == []


def test_every_container_has_requests_and_limits_room_for_the_index() -> None:
    objects = k8s_objects()
    assert check_resources(objects) == []
    colour = next(c for _, c in containers(objects) if c["name"] == "colour")
    colour["resources"]["limits"]["memory"] = "1536Mi"
    assert check_resources(objects) == [
        "colour: memory request above its limit",
        "colour: memory limit below the index's 1.92 GiB peak at 18 M",
    ]


@pytest.mark.parametrize(
    ("mistake", "found"),
    [
        ("misspelt variable", "HEALTHCODE_COLOUR_HEALTHPORT is not a setting"),
        ("another service's variable", "HEALTHCODE_SMS is not a setting"),
        ("wrong port", "grpc port 50054"),
        ("liveness on readiness", "livenessProbe is not deploy/healthcheck.py"),
        ("liveness without --alive", "fails while it waits for the index"),
        ("peer on the wrong port", "risk_index listens on 50052"),
    ],
)
def test_a_planted_mistake_in_a_manifest_is_found(
    read_names: dict[str, set[str]], mistake: str, found: str
) -> None:
    objects = copy.deepcopy(k8s_objects())
    colour = next(c for _, c in containers(objects) if c["name"] == "colour")
    env = colour["env"]
    if mistake == "misspelt variable":
        env.append({"name": "HEALTHCODE_COLOUR_HEALTHPORT", "value": "51053"})
    elif mistake == "another service's variable":
        env.append({"name": "HEALTHCODE_SMS", "value": "reply"})
    elif mistake == "wrong port":
        colour["ports"][0]["containerPort"] = 50054
    elif mistake == "liveness on readiness":
        colour["livenessProbe"] = {"grpc": {"port": 51053}}
    elif mistake == "liveness without --alive":
        colour["livenessProbe"]["exec"]["command"].remove("--alive")
    else:
        next(e for e in env if e["name"] == "HEALTHCODE_RISK_INDEX_ADDR")["value"] = "risk-index:1"
    problems = check_k8s_workloads(objects, read_names)
    assert any(found in p for p in problems), problems


def test_compose_names_only_settings_ports_and_health_checks_the_services_have(
    read_names: dict[str, set[str]],
) -> None:
    stack = compose()
    assert check_compose(stack, read_names) == []
    assert check_compose_volumes(stack) == []


def test_a_planted_mistake_in_compose_is_found(read_names: dict[str, set[str]]) -> None:
    stack = copy.deepcopy(compose())
    stack["services"]["display"]["environment"]["HEALTHCODE_DISPLAY_TOKEN_TTL"] = "60"
    stack["services"]["colour"]["environment"]["HEALTHCODE_RISK_INDEX_ADDR"] = "risk_index:50052"
    del stack["services"]["declaration"]["healthcheck"]
    stack["services"]["colour"]["volumes"] = ["credentials:/credentials:ro"]
    problems = check_compose(stack, read_names) + check_compose_volumes(stack)
    assert any("HEALTHCODE_DISPLAY_TOKEN_TTL is not a setting" in p for p in problems)
    assert any("risk_index:50052: no Service risk_index" in p for p in problems)
    assert any("compose declaration: health check" in p for p in problems)
    assert any("compose colour: /data is not a named volume" in p for p in problems)


def test_every_workload_mounts_the_credentials_its_service_loads() -> None:
    template = [d for d in yaml.safe_load_all((K8S / TEMPLATE).read_text(encoding="utf-8")) if d]
    assert check_secrets(k8s_objects(), template) == []
    # planted: the colour Secret's template without its key
    broken = copy.deepcopy(template)
    del next(s for s in broken if "colour" in s["metadata"]["name"])["stringData"]["colour.key"]
    assert any("template" in p for p in check_secrets(k8s_objects(), broken))


def test_the_secret_generator_reads_files_make_credentials_writes(tmp_path: Path) -> None:
    made = set(make_credentials.make_credentials(tmp_path))
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    for generator in kustomization["secretGenerator"]:
        for entry in generator["files"]:
            key, _, source = entry.partition("=")
            assert source == f"credentials/{key}"
            assert key in made, f"{generator['name']}: make_credentials writes no {key}"


def test_the_runtime_image_runs_as_a_user_who_owns_data() -> None:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert check_dockerfile(text) == []
    as_root = text.replace("USER ${UID}:${UID}", "USER root")
    assert any("runs as 'root'" in p for p in check_dockerfile(as_root))
    no_chown = re.sub(r"chown [^\n]*/credentials", "true", text)
    assert "the runtime stage does not make /data its user's" in check_dockerfile(no_chown)
    other_python = text.replace(
        "ARG PYTHON_IMAGE=python:3.11-slim-bookworm", "ARG PYTHON_IMAGE=python:3.12-slim"
    ).replace("FROM ${PYTHON_IMAGE}\n", "FROM python:3.11-slim-bookworm\n")
    assert any("interpreter would be missing" in p for p in check_dockerfile(other_python))


def test_dockerignore_keeps_the_developer_machine_out() -> None:
    text = (ROOT / ".dockerignore").read_text(encoding="utf-8")
    assert check_dockerignore(text) == []
    assert check_dockerignore(text.replace(".venv\n", "")) == [".dockerignore lets .venv in"]


# --- the scripts the image runs ---------------------------------------------------------------


@pytest.fixture
def health_server() -> Iterator[tuple[health.HealthServicer, int]]:
    """A bare gRPC health service on a free loopback port, plain text like the health port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, port
    finally:
        server.stop(None).wait()


def test_healthcheck_tells_ready_from_alive(
    health_server: tuple[health.HealthServicer, int],
) -> None:
    servicer, port = health_server
    env = {"HEALTHCODE_COLOUR_HEALTH_PORT": str(port)}
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    # a replica waiting for its index: not ready, but alive (liveness must not restart it)
    assert healthcheck.main(["colour"], env) == 1
    assert healthcheck.main(["colour", "--alive"], env) == 0
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert healthcheck.main(["colour"], env) == 0


def test_healthcheck_fails_when_nothing_answers_or_no_port_is_set(
    health_server: tuple[health.HealthServicer, int],
) -> None:
    _, port = health_server
    closed = {"HEALTHCODE_DISPLAY_HEALTH_PORT": str(closed_port())}
    assert healthcheck.main(["display", "--alive", "--timeout", "2"], closed) == 1
    assert healthcheck.main(["display"], {}) == 2
    assert healthcheck.main(["display", "--port", str(port)], {}) == 0


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_make_credentials_names_every_service_as_its_peers_dial_it(tmp_path: Path) -> None:
    make_credentials.make_credentials(tmp_path)
    dialled = {
        value.removeprefix("dns:///").rpartition(":")[0]
        for _, container in containers(k8s_objects())
        for name, value in env_of(container).items()
        if name.endswith("_ADDR")
    }
    dialled |= {
        str(value).rpartition(":")[0]
        for spec in compose()["services"].values()
        for name, value in (spec.get("environment") or {}).items()
        if name.endswith("_ADDR")
    }
    for host in dialled:
        names_of = {
            i: (h, *make_credentials.EXTRA_HOSTS.get(i, ()))
            for i, h in make_credentials.SERVICE_HOSTS.items()
        }
        peer = next(i for i, hs in names_of.items() if host.split(".")[0] in hs)
        cert = x509.load_pem_x509_certificate((tmp_path / f"{peer}.pem").read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert host in names.get_values_for_type(x509.DNSName), (peer, host)
    # the headless Service's names too, for client-side round robin
    colour = x509.load_pem_x509_certificate((tmp_path / "colour.pem").read_bytes())
    sans = colour.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "colour-headless.healthcode.svc.cluster.local" in sans.get_values_for_type(x509.DNSName)


def test_make_credentials_is_idempotent_and_keeps_keys_private(tmp_path: Path) -> None:
    first = make_credentials.make_credentials(tmp_path)
    secret = (tmp_path / "identifier.secret").read_text(encoding="ascii")
    assert make_credentials.make_credentials(tmp_path) == []
    assert (tmp_path / "identifier.secret").read_text(encoding="ascii") == secret
    assert len(bytes.fromhex(secret.strip())) == 32
    for name in first:
        if name.endswith((".key", ".secret")):
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    # every service's settings accept what it made
    for module, identity in IDENTITY.items():
        security = Security.from_env(tmp_path, identity, {"HEALTHCODE_CREDENTIALS": str(tmp_path)})
        assert security is not None and security.identity == identity, module


# --- the national extrapolation -------------------------------------------------------------


def test_the_extrapolation_takes_its_figures_from_benchmarks() -> None:
    # Each measured input, as BENCHMARKS.md prints it: changing one there without here (or the
    # reverse) fails this.
    text = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")
    measured = extrapolate_national.MEASURED
    printed = {
        "matcher_resident_gib": f"{measured['matcher_resident_gib']:.2f} GiB",
        "matcher_peak_gib": f"/ {measured['matcher_peak_gib']:.2f} GiB",
        "snapshot_gib": f"{measured['snapshot_gib']:.2f} GiB",
        "snapshot_load_s": f"snapshot load | {measured['snapshot_load_s']:.2f} s",
        "evaluation_s": f"| {measured['evaluation_s']:.2f} s (",
        "show_per_s_per_process": f"{measured['show_per_s_per_process']:,.0f}/s = **0.19x",
        "evaluate_stream_persons_per_s": f"{measured['evaluate_stream_persons_per_s']:,.0f}",
        "show_size_factor": "| 374 / 482 (0.78x)",
        "import_people_per_s": f"{measured['import_people_per_s']:,.0f}/s",
    }
    for key, figure in printed.items():
        assert figure in text, (key, figure)


def test_the_extrapolation_covers_its_peak_and_scales_linearly() -> None:
    m, a = extrapolate_national.MEASURED, extrapolate_national.ASSUMED
    at_18m = extrapolate_national.province("city", 18_000_000, m, a)
    assert at_18m.index_resident_gib == pytest.approx(1.34)
    double = extrapolate_national.province("two cities", 36_000_000, m, a)
    assert double.index_peak_gib == pytest.approx(2 * at_18m.index_peak_gib)
    for p in extrapolate_national.national(1_400_000_000, 34, m, a):
        busiest = max(p.peak_displays_per_s, p.midnight_displays_per_s)
        assert p.display_processes * p.show_capacity_per_process >= busiest
        assert (p.display_processes - 1) * p.show_capacity_per_process < busiest


def test_compose_keeps_every_services_tables_in_its_postgresql() -> None:
    stack = compose()["services"]
    db = stack["postgres"]["environment"]
    for name in ("declaration", "risk-index", "display"):
        env = stack[name]["environment"]
        assert env["HEALTHCODE_STORAGE"] == "postgresql", name
        dsn = dict(part.split("=", 1) for part in env["HEALTHCODE_POSTGRES_DSN"].split())
        assert dsn["host"] == "postgres" and dsn["port"] == "5432", (name, dsn)
        assert (dsn["dbname"], dsn["user"]) == (db["POSTGRES_DB"], db["POSTGRES_USER"]), name
        assert dsn["password"] == db["POSTGRES_PASSWORD"], name
        assert stack[name]["depends_on"]["postgres"] == {"condition": "service_healthy"}, name
    # colour and the gateway keep no tables
    for name in ("colour", "gateway"):
        assert "HEALTHCODE_STORAGE" not in stack[name]["environment"], name


def test_declaration_and_risk_index_read_the_same_province_keys(tmp_path: Path) -> None:
    # The declaration service hashes with them, the risk index matches imports with them: two
    # different key sets would exchange hashes no province holds.
    from services._common.exchange import DEFAULT_PROVINCES, load_provinces

    codes = {f"{code}.key" for code in load_provinces(DEFAULT_PROVINCES)}
    stack = compose()["services"]
    for name in ("declaration", "risk-index"):
        assert stack[name]["environment"]["HEALTHCODE_PROVINCE_KEYS"] == "/credentials", name
        assert "credentials:/credentials:ro" in stack[name]["volumes"], name
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    generated = {
        g["name"]: {f.split("=")[0] for f in g["files"]} for g in kustomization["secretGenerator"]
    }
    for secret in ("healthcode-declaration-credentials", "healthcode-risk-index-credentials"):
        assert codes <= generated[secret], secret
    assert codes <= set(make_credentials.make_credentials(tmp_path))
