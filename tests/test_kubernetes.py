"""The shipped Kubernetes manifests (`ftprefix assets kubernetes`): every manifest is a valid resource
of a current Kubernetes (strict schema), each kustomization lists exactly its files, and the
manifests agree with the deployment ftprefix writes and what it serves."""

from __future__ import annotations

import json
import os
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from deployment_support import LONGEST_CPU_STOP_S, TRITON_EXIT_TIMEOUT_S

from ftprefix import assets
from ftprefix.cli import build_parser, main
from ftprefix.serving import deployment
from ftprefix.serving.interface import parse_pbtxt
from tools.regenerate_triton_models import example_conversion

KUBE = Path(str(assets.asset("kubernetes")))
START_TRITON = Path(str(assets.asset("image/start-triton.sh")))
MANIFESTS = sorted(p for p in KUBE.rglob("*.yaml") if p.name != "kustomization.yaml")
TRITON_PROBES = {
    "readinessProbe": "/v2/health/ready",
    "livenessProbe": "/v2/health/live",
    "startupProbe": "/v2/health/ready",
}


def _resources(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def _by_kind(directory: Path) -> dict[tuple[str, str], dict]:
    manifests = (p for p in directory.glob("*.yaml") if p.name != "kustomization.yaml")
    return {(r["kind"], r["metadata"]["name"]): r for p in manifests for r in _resources(p)}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(KUBE)))
def test_every_manifest_is_a_valid_resource(path: Path) -> None:
    for resource in _resources(path):
        kubernetes_validate.validate(resource, kubernetes_validate.latest_version(), strict=True)


@pytest.mark.parametrize("flavour", ["gpu", "cpu"])
def test_each_kustomization_lists_exactly_its_files(flavour: str) -> None:
    kustomization = yaml.safe_load((KUBE / flavour / "kustomization.yaml").read_text())
    beside = sorted(p.name for p in (KUBE / flavour).glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == beside


def _container(resources: dict, name: str) -> dict:
    (container,) = resources[("Deployment", name)]["spec"]["template"]["spec"]["containers"]
    return container


def _mounts(container: dict) -> dict[str, dict]:
    return {m["mountPath"]: m for m in container["volumeMounts"]}


@pytest.mark.parametrize("flavour", ["gpu", "cpu"])
def test_triton_probes_ports_metrics_and_shm(flavour: str) -> None:
    resources = _by_kind(KUBE / flavour)
    triton = _container(resources, "ftprefix-triton")
    ports = {p["name"]: p["containerPort"] for p in triton["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    for probe, path in TRITON_PROBES.items():
        assert triton[probe]["httpGet"] == {"path": path, "port": "http"}
    startup = triton["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1800  # a large model's load
    pod = resources[("Deployment", "ftprefix-triton")]["spec"]["template"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "8002"
    shm = next(v for v in pod["spec"]["volumes"] if v["name"] == _mounts(triton)["/dev/shm"]["name"])
    assert shm["emptyDir"]["medium"] == "Memory"
    service = resources[("Service", "ftprefix-triton")]["spec"]
    assert {p["port"] for p in service["ports"]} == {8000, 8001, 8002}
    assert (
        service["selector"] == resources[("Deployment", "ftprefix-triton")]["spec"]["selector"]["matchLabels"]
    )
    assert all(m.get("readOnly") for m in triton["volumeMounts"] if m["name"] == "models")


def test_gpu_paths_match_the_repository_triton_repo_writes(tmp_path: Path) -> None:
    example_conversion(tmp_path / "converted", tp=1)
    assert main(["triton-repo", str(tmp_path / "converted"), "--out", str(tmp_path / "triton_repo")]) == 0
    repository = tmp_path / "triton_repo" / deployment.REPOSITORY_DIR
    ft = parse_pbtxt((repository / "fastertransformer" / "config.pbtxt").read_text())
    checkpoint = ft.parameters["model_checkpoint_path"].string_value
    instances = ft.instance_group[0].count * int(ft.parameters["tensor_para_size"].string_value)

    resources = _by_kind(KUBE / "gpu")
    triton = _container(resources, "ftprefix-triton")
    mounts = _mounts(triton)
    # start-triton links the conversion mounted at /ftprefix/mount to /ftprefix/model/<tp>-gpu,
    # model_checkpoint_path, and serves the repository mounted at /ftprefix/triton_models
    script = START_TRITON.read_text()
    assert triton["command"] == ["start-triton"]
    assert checkpoint == f"{deployment.CONTAINER_MODEL_ROOT}/1-gpu" and '"$root/ftprefix/model/${tp' in script
    assert mounts["/ftprefix/mount"]["subPath"] == "converted" and "/ftprefix/mount/config.ini" in script
    # the fill Job writes the deployment to triton_repo; Triton serves its model repository
    assert mounts["/ftprefix/triton_models"]["subPath"] == f"triton_repo/{deployment.REPOSITORY_DIR}"
    fill = _resources(KUBE / "jobs" / "fill-models.yaml")[0]["spec"]["template"]["spec"]["containers"][0]
    assert "ftprefix triton-repo /data/converted --out /data/triton_repo" in " ".join(fill["command"])
    assert "--model-repository=/ftprefix/triton_models" in script
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == instances


@pytest.mark.parametrize("flavour", ["gpu", "cpu"])
def test_the_gateway_spreads_over_the_triton_pods_and_autoscales(flavour: str) -> None:
    resources = _by_kind(KUBE / flavour)
    gateway = _container(resources, "ftprefix-openai")
    command = gateway["command"]
    assert command[:2] == ["ftprefix", "openai"]
    # gRPC round robin over every Triton pod: the headless Service resolves to each ready pod's
    # address (through the ClusterIP Service, one connection would take all to one pod)
    assert command[command.index("--url") + 1] == "dns:///ftprefix-triton-pods:8001"
    pods = resources[("Service", "ftprefix-triton-pods")]["spec"]
    triton = resources[("Deployment", "ftprefix-triton")]["spec"]
    assert pods["clusterIP"] == "None" and pods["selector"] == triton["selector"]["matchLabels"]
    assert pods["ports"] == [{"name": "grpc", "port": 8001, "targetPort": "grpc"}]
    assert not pods.get("publishNotReadyAddresses", False)  # only ready pods get requests
    if flavour == "cpu":  # beside the CPU server, whole answers over Triton's HTTP port
        assert command[command.index("--http-url") + 1] == "ftprefix-triton:8000"
    assert command[command.index("--tokenizer") + 1] in _mounts(gateway)
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/health"
    hpa = resources[("HorizontalPodAutoscaler", "ftprefix-openai")]["spec"]
    assert (
        hpa["scaleTargetRef"]["name"] == "ftprefix-openai" and hpa["metrics"][0]["resource"]["name"] == "cpu"
    )
    assert gateway["resources"]["requests"]["cpu"]  # utilisation needs a request
    port = int(command[command.index("--port") + 1])
    assert resources[("Service", "ftprefix-openai")]["spec"]["ports"][0]["port"] == port


def test_the_cpu_server_serves_the_mounted_conversion_with_metrics() -> None:
    triton = _container(_by_kind(KUBE / "cpu"), "ftprefix-triton")
    command = triton["command"]
    assert command[:3] == ["ftprefix", "serve", "/ftprefix/model"]
    assert _mounts(triton)["/ftprefix/model"]["subPath"] == "converted"
    flags = dict(zip(command[3::2], command[4::2], strict=True))
    assert flags == {
        "--host": "0.0.0.0",
        "--http-port": "8000",
        "--grpc-port": "8001",
        "--metrics-port": "8002",
    }


def test_the_cpu_servers_limit_sizes_its_engine_to_the_cores_it_requests(tmp_path, monkeypatch) -> None:
    from ftprefix.serving import cpus

    resources = _container(_by_kind(KUBE / "cpu"), "ftprefix-triton")["resources"]
    millicores = int(float(resources["limits"]["cpu"]) * 1000)
    # what the kubelet writes for that limit (100 ms periods), seen from inside the container
    (tmp_path / "cpu.max").write_text(f"{millicores * 100} 100000\n")
    (tmp_path / "proc-cgroup").write_text("0::/\n")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))  # a big node
    cores = cpus.usable_cores(tmp_path, tmp_path / "proc-cgroup")
    assert cores.count == float(resources["requests"]["cpu"])  # no more instances than it asked for
    assert cpus.choose_layout(cores).instances == cores.count


@pytest.mark.parametrize("flavour", ["gpu", "cpu"])
def test_only_the_gateway_reaches_triton_and_keys_come_from_a_secret(flavour: str) -> None:
    resources = _by_kind(KUBE / flavour)
    triton_pod = resources[("Deployment", "ftprefix-triton")]["spec"]["template"]["metadata"]["labels"]
    gateway_deployment = resources[("Deployment", "ftprefix-openai")]
    gateway_pod = gateway_deployment["spec"]["template"]
    policy = resources[("NetworkPolicy", "ftprefix-triton")]["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    assert policy["podSelector"]["matchLabels"].items() <= triton_pod.items()
    inference_ports = {8000, 8001}
    for rule in policy["ingress"]:
        ports = {p["port"] for p in rule["ports"]}
        if ports & inference_ports:  # only from the gateway's pods
            (source,) = rule["from"]
            assert source["podSelector"]["matchLabels"].items() <= gateway_pod["metadata"]["labels"].items()
            assert "namespaceSelector" not in source and "ipBlock" not in source
        else:
            assert ports == {8002}  # metrics only, for scrapers
    assert resources[("Service", "ftprefix-triton")]["spec"].get("type", "ClusterIP") == "ClusterIP"
    # keys: the Secret's table mounted where --api-keys reads it, an extra key from the same Secret
    gateway = _container(resources, "ftprefix-openai")
    keys_file = Path(gateway["command"][gateway["command"].index("--api-keys") + 1])
    mount = _mounts(gateway)[str(keys_file.parent)]
    volume = next(v for v in gateway_pod["spec"]["volumes"] if v["name"] == mount["name"])
    secret = resources[("Secret", volume["secret"]["secretName"])]
    assert {i["path"] for i in volume["secret"]["items"]} == {keys_file.name}
    assert json.loads(secret["stringData"][keys_file.name]) == {}  # refuses everyone until filled
    env = {e["name"]: e for e in gateway["env"]}
    assert env["FTPREFIX_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == secret["metadata"]["name"]
    # Prometheus scrapes the gateway's per-task metrics beside Triton's
    annotations = gateway_pod["metadata"]["annotations"]
    port = gateway["command"][gateway["command"].index("--port") + 1]
    assert (annotations["prometheus.io/port"], annotations["prometheus.io/path"]) == (port, "/metrics")


@pytest.mark.parametrize("flavour", ["gpu", "cpu"])
def test_each_pod_gets_the_time_its_own_stop_takes(flavour: str) -> None:
    """The kubelet kills a pod its grace period after SIGTERM: each gets at least what its own stop
    may take, so requests in flight end the way the server ends them."""
    resources = _by_kind(KUBE / flavour)

    def grace(name: str) -> int:
        return resources[("Deployment", name)]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]

    gateway_stop = build_parser().parse_args(["openai", "--tokenizer", "hf"]).stop_timeout
    assert grace("ftprefix-openai") > gateway_stop
    assert grace("ftprefix-triton") > (TRITON_EXIT_TIMEOUT_S if flavour == "gpu" else LONGEST_CPU_STOP_S)


@pytest.mark.parametrize("flavour", ["gpu", "cpu"])
def test_a_node_drain_takes_one_pod_of_each_at_a_time(flavour: str) -> None:
    """Each Deployment has a disruption budget of one pod whose selector picks exactly its pods
    (a budget selecting no pod, or another Deployment's too, would protect nothing or hold both)."""
    resources = _by_kind(KUBE / flavour)
    deployments = {name: r for (kind, name), r in resources.items() if kind == "Deployment"}
    budgets = {name: r for (kind, name), r in resources.items() if kind == "PodDisruptionBudget"}
    assert budgets.keys() == deployments.keys() == {"ftprefix-openai", "ftprefix-triton"}
    for name, budget in budgets.items():
        wanted = budget["spec"]["selector"]["matchLabels"]
        assert budget["spec"]["maxUnavailable"] == 1 and "minAvailable" not in budget["spec"]
        for other, pods in deployments.items():
            labels = pods["spec"]["template"]["metadata"]["labels"]
            assert (wanted.items() <= labels.items()) == (other == name), (name, other)
