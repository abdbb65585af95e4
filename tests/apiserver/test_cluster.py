"""The Helm chart on a cluster whose pods run: scheduler, controllers and a process kubelet.

A control plane of its own (kube-apiserver, kube-controller-manager, kube-scheduler; see
controlplane.py) and the process kubelet of tests/support/kubelet.py with three nodes: a GPU
node, a GPU node tainted `nvidia.com/gpu:NoSchedule`, and a node without GPUs. The chart is
installed with `helm install` into a namespace labelled as docs/install.md says, with
cluster-values.yaml (simulated GPUs; the operator's liveness port on loopback) and nothing
else; from then on Kubernetes does the rest: the DaemonSet controller and the scheduler place
the agents, the kubelet runs the chart's own command lines, and `helm uninstall` runs the
post-delete hook as a Job. Tests run in file order and share that cluster.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.apiserver.conftest import CHART, CRDS, get_json, helm, tools_on_path, unavailable
from tests.apiserver.controlplane import ControlPlane, Unavailable, running
from tests.support.eventually import eventually_sync
from tests.support.kubelet import ContainerRun, Kubelet, NodeSpec, PodSetupError

HERE = Path(__file__).resolve().parent
RELEASE, NS = "triserve", "triserve-system"
GPU_LABELS = {"nvidia.com/gpu.present": "true"}
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
NODES = (
    NodeSpec("gpu-plain", GPU_LABELS, gpus=2),
    NodeSpec("gpu-tainted", GPU_LABELS, (GPU_TAINT,), gpus=2),
    NodeSpec("cpu-only"),
)
GPU_NODES = {"gpu-plain", "gpu-tainted"}
#: The level docs/install.md has users label the release namespace with.
RELEASE_NAMESPACE_LEVEL = "privileged"


@dataclass
class Cluster:
    plane: ControlPlane
    kubelet: Kubelet
    tmp: Path

    def pods(self, component: str) -> list[dict[str, Any]]:
        selector = f"app.kubernetes.io/component={component}"
        return list(get_json(self.plane, "pods", "-n", NS, "-l", selector)["items"])

    def containers(self, pod_prefix: str) -> list[ContainerRun]:
        return [c for c in self.kubelet.containers() if c.pod.startswith(pod_prefix)]


def image_env() -> dict[str, str]:
    """What the image would hold: this interpreter's `triserve` on PATH, and PYTHONPATH."""
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "HOME": "/"}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    from kubernetes import config

    tools_on_path()
    tmp = tmp_path_factory.mktemp("cluster")
    try:
        with running(tmp / "plane", controllers=True) as plane:
            api = config.new_client_from_config(config_file=str(plane.admin_kubeconfig))
            try:
                kubelet = Kubelet(
                    api, tmp / "kubelet", server_port=plane.port, image_env=image_env()
                )
            except PodSetupError as exc:
                raise Unavailable(f"the process kubelet cannot run pods here: {exc}") from exc
            for node in NODES:
                kubelet.register(node)
            kubelet.start()
            plane.kubectl("apply", "--server-side", "-f", str(CRDS))
            plane.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
            level = f"pod-security.kubernetes.io/enforce={RELEASE_NAMESPACE_LEVEL}"
            plane.kubectl("create", "namespace", NS)
            plane.kubectl("label", "namespace", NS, level)
            cluster = Cluster(plane, kubelet, tmp)
            values = str(HERE / "cluster-values.yaml")
            helm(plane, "install", RELEASE, str(CHART), "-n", NS, "-f", values)
            try:
                yield cluster
            finally:
                kubelet.stop()
                for container in kubelet.containers():
                    print(f"---- {container.pod}/{container.name} (tail) ----")
                    print(container.log()[-2000:])
                api.close()
    except Unavailable as exc:
        unavailable(exc)


def wait_for_agents(cluster: Cluster) -> Any:
    """The agent DaemonSet's status once an agent is Ready on each GPU node."""

    def agents_ready() -> Any:
        status = get_json(cluster.plane, "daemonset", "-n", NS, f"{RELEASE}-agent")["status"]
        nodes = sorted(pod["spec"].get("nodeName", "-") for pod in cluster.pods("agent"))
        # Quoted on timeout: where the agents went.
        assert status.get("numberReady") == len(GPU_NODES), f"agents on {nodes}: {status}"
        return status

    return eventually_sync(agents_ready, "an agent Ready on each GPU node", 90)


def test_agents_are_scheduled_on_the_gpu_nodes_only_tainted_ones_included(
    cluster: Cluster,
) -> None:
    status = wait_for_agents(cluster)
    assert status["desiredNumberScheduled"] == len(GPU_NODES)
    assert {pod["spec"]["nodeName"] for pod in cluster.pods("agent")} == GPU_NODES


def test_the_operator_deployment_becomes_available(cluster: Cluster) -> None:
    def available() -> bool:
        deployment = get_json(cluster.plane, "deployment", "-n", NS, f"{RELEASE}-operator")
        return bool(deployment["status"].get("availableReplicas") == 1)

    eventually_sync(available, "the operator Deployment available", 60)
    (operator,) = cluster.containers(f"{RELEASE}-operator-")
    assert operator.proc is not None and operator.proc.poll() is None, operator.log()[-2000:]
    assert operator.argv[1:4] == [
        "operator",
        "--standalone",
        "--liveness=http://0.0.0.0:8080/healthz",
    ]


def test_agents_run_with_the_charts_flags_and_report_owned_by_their_node(
    cluster: Cluster,
) -> None:
    wait_for_agents(cluster)
    agents = cluster.containers(f"{RELEASE}-agent-")
    assert {agent.node for agent in agents} == GPU_NODES
    for agent in agents:
        flags = set(agent.argv[2:])
        assert {
            "--dcgm-discover=app=nvidia-dcgm-exporter",
            "--dcgm-namespace=gpu-operator",
            "--shutdown-retry=20",
            "--min-sm-clock-fraction=0.2",
            "--min-power-limit-fraction=0.5",
            "--state-file=/var/lib/triserve/state.json",
        } <= flags, agent.argv

    def report(node: str) -> Any:
        return get_json(cluster.plane, "nodeenergyreport", node)

    for node in sorted(GPU_NODES):
        found = eventually_sync(functools.partial(report, node), f"{node}'s report", 90)
        (owner,) = found["metadata"]["ownerReferences"]
        uid = get_json(cluster.plane, "node", node)["metadata"]["uid"]
        assert (owner["kind"], owner["name"], owner["uid"]) == ("Node", node, uid)
        # The state file went to the node's hostPath, through the pod's own mount of it.
        assert (cluster.kubelet.node_root(node) / "var/lib/triserve/state.json").exists()


def probe_pod(template: dict[str, Any], name: str, namespace: str) -> dict[str, Any]:
    """A Pod from a pod template, to dry-run in another namespace (its default account)."""
    spec = {**template["spec"], "serviceAccountName": "default"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def dry_run(plane: ControlPlane, pod: dict[str, Any]) -> str:
    """Create `pod` as a server-side dry run; the refusal, '' when admitted."""
    result = plane.kubectl(
        "create", "--dry-run=server", "-f", "-", stdin=json.dumps(pod), check=False
    )
    return "" if result.returncode == 0 else result.stderr


def test_pod_templates_pass_pod_security_at_the_levels_the_install_guide_states(
    cluster: Cluster,
) -> None:
    plane = cluster.plane
    for level in ("restricted", "baseline"):
        name = f"psa-{level}"
        plane.kubectl("create", "namespace", name)
        plane.kubectl("label", "namespace", name, f"pod-security.kubernetes.io/enforce={level}")
        # The probe pods run as the namespace's default account, which a controller creates.
        has_default = functools.partial(get_json, plane, "sa", "default", "-n", name)
        eventually_sync(has_default, f"{name}'s default ServiceAccount", 30)
    operator = get_json(plane, "deployment", "-n", NS, f"{RELEASE}-operator")["spec"]["template"]
    hooks = [
        d for d in yaml.safe_load_all(helm(plane, "get", "hooks", RELEASE, "-n", NS).stdout) if d
    ]
    (job,) = [d for d in hooks if d["kind"] == "Job"]
    agent = get_json(plane, "daemonset", "-n", NS, f"{RELEASE}-agent")["spec"]["template"]
    # docs/install.md: the operator (and the release hook, which runs as it does) "restricted".
    assert dry_run(plane, probe_pod(operator, "operator", "psa-restricted")) == ""
    assert dry_run(plane, probe_pod(job["spec"]["template"], "release", "psa-restricted")) == ""
    # The agent needs "privileged": "baseline" already refuses it. Its pods run in the
    # release namespace, labelled privileged (test 1 saw them Ready).
    refused = dry_run(plane, probe_pod(agent, "agent", "psa-baseline"))
    assert 'violates PodSecurity "baseline:latest"' in refused
    assert "hostPath" in refused and "SYS_ADMIN" in refused


def test_a_deleted_node_takes_its_report_with_it(cluster: Cluster) -> None:
    plane = cluster.plane
    for node in sorted(GPU_NODES):
        has_report = functools.partial(get_json, plane, "nodeenergyreport", node)
        eventually_sync(has_report, f"{node}'s report", 90)
    cluster.kubelet.leave("gpu-tainted")
    eventually_sync(
        lambda: get_json(plane, "nodeenergyreport", "gpu-tainted") is None,
        "the garbage collector to delete gpu-tainted's report",
        60,
    )
    assert get_json(plane, "nodeenergyreport", "gpu-plain") is not None


def test_helm_uninstall_runs_the_release_hook_as_a_job(cluster: Cluster) -> None:
    plane = cluster.plane
    # What a running operator leaves on a node it placed a policy on.
    plane.kubectl("label", "node", "gpu-plain", "triserve.io/policy=left-behind")
    helm(plane, "uninstall", RELEASE, "-n", NS, "--timeout=2m")
    (hook,) = cluster.containers(f"{RELEASE}-release-")
    assert hook.argv[1:] == ["release"] and hook.exit_code == 0, hook.log()[-2000:]
    labels = get_json(plane, "node", "gpu-plain")["metadata"]["labels"]
    assert "triserve.io/policy" not in labels
    # Helm deleted the succeeded Job (hook-delete-policy hook-succeeded).
    assert get_json(plane, "job", "-n", NS, f"{RELEASE}-release") is None


pytestmark = pytest.mark.timeout(600)
