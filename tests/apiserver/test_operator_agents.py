"""The chart's operator and agents as processes against a real API server, with the chart's RBAC.

The chart is installed (its Deployment and DaemonSet never run: there is no kubelet). The
operator runs as a process with a token of the chart's operator ServiceAccount; each agent runs
with `--sim reference` and a token of the agent ServiceAccount bound to an agent Pod object on
its Node, as the DaemonSet's pod would have. Serving pods are Pod objects bound to those nodes
with stage annotations and `status.podIP` patched to 127.0.0.1, where this test serves the
reference scenario's serving metrics. Tests run in file order and share that fleet.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.apiserver.conftest import (
    CHART,
    Process,
    get_json,
    gpu_node,
    helm,
    namespace,
    serving_metrics,
    set_gpu_capacity,
)
from tests.apiserver.controlplane import ControlPlane
from tests.support.eventually import eventually_sync
from triserve.api.annotations import POLICY_LABEL
from triserve.api.powercaps import POWER_CAPS_ANNOTATION, parse_power_caps

RELEASE, NS = "triserve", "triserve-system"
AGENT_SA, OPERATOR_SA = "triserve-agent", "triserve-operator"
NODES = ("gpu-a", "gpu-b")
POLICY = {
    "apiVersion": "triserve.io/v1alpha1",
    "kind": "EnergyPolicy",
    "metadata": {"name": "omni"},
    "spec": {
        "podSelector": {"matchLabels": {"app": "omni"}},
        "reportIntervalSeconds": 10,
        # The agents run --sim without a kubelet: the pods name their GPUs by annotation.
        "gpuAnnotations": {"trustedNamespaces": ["omni"]},
    },
}


@dataclass
class Fleet:
    plane: ControlPlane
    tmp: Path
    operator: Process
    agents: dict[str, Process] = field(default_factory=dict)
    kubeconfigs: dict[str, Path] = field(default_factory=dict)

    def report(self, node: str) -> Any:
        return get_json(self.plane, "nodeenergyreport", node)

    def node_policy(self, node: str) -> str | None:
        labels = get_json(self.plane, "node", node)["metadata"].get("labels") or {}
        return labels.get("triserve.io/policy")


def agent_pod(node: str) -> dict[str, Any]:
    """The Pod object the DaemonSet would create on `node` (never started: no kubelet)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"agent-{node}", "namespace": NS},
        "spec": {
            "nodeName": node,
            "serviceAccountName": AGENT_SA,
            "containers": [{"name": "agent", "image": "triserve:test"}],
        },
    }


def serving_pod(node: str, placement: Any, port: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{placement.pod}-{node}",
            "namespace": "omni",
            "labels": {"app": "omni"},
            "annotations": {
                "triserve.io/stage": placement.stage,
                "triserve.io/pipeline": placement.pipeline,
                "triserve.io/metrics": f"{port}/{placement.stage}",
                "triserve.io/gpus": str(placement.gpu_index),
            },
        },
        "spec": {
            "nodeName": node,
            "containers": [{"name": placement.container, "image": "vllm:test"}],
        },
    }


def start_agent(fleet: Fleet, node: str) -> Process:
    tmp = fleet.tmp
    return Process(
        [
            "agent",
            "--sim",
            "reference",
            "--kubeconfig",
            str(fleet.kubeconfigs[node]),
            "--node-name",
            node,
            "--metrics-port",
            "0",
            "--metrics-host",
            "127.0.0.1",
            "--state-file",
            str(tmp / f"state-{node}.json"),
            "--pod-resources-socket",
            str(tmp / "no-kubelet.sock"),
            "--speed",
            "10",
            "--report-interval",
            "2",
            "--baseline-probe-interval",
            "20",
        ],
        tmp / f"agent-{node}.log",
    )


@pytest.fixture(scope="module")
def fleet(crds: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    plane, tmp = crds, tmp_path_factory.mktemp("fleet")
    helm(plane, "install", RELEASE, str(CHART), "-n", NS, "--create-namespace")
    namespace(plane, "omni")
    with serving_metrics(speed=10.0) as (port, placements):
        for node in NODES:
            plane.apply(gpu_node(node))
            set_gpu_capacity(plane, node, 2)
            plane.apply(agent_pod(node))
            for placement in placements:
                pod = serving_pod(node, placement, port)
                plane.apply(pod)
                status = {
                    "status": {
                        "phase": "Running",
                        "podIP": "127.0.0.1",
                        "podIPs": [{"ip": "127.0.0.1"}],
                    }
                }
                plane.kubectl(
                    "patch",
                    "pod",
                    pod["metadata"]["name"],
                    "-n",
                    "omni",
                    "--subresource=status",
                    "--type=merge",
                    "-p",
                    json.dumps(status),
                )
        operator_config = plane.service_account_kubeconfig(
            NS, OPERATOR_SA, tmp / "operator.kubeconfig"
        )
        operator = Process(
            [
                "operator",
                "--liveness",
                "",
                "--status-interval",
                "2",
                "--budget-interval",
                "2",
                "--release-timeout",
                "90",
            ],
            tmp / "operator.log",
            env={"KUBECONFIG": str(operator_config)},
        )
        fleet = Fleet(plane, tmp, operator)
        for node in NODES:
            fleet.kubeconfigs[node] = plane.service_account_kubeconfig(
                NS, AGENT_SA, tmp / f"agent-{node}.kubeconfig", bound_pod=f"agent-{node}"
            )
            fleet.agents[node] = start_agent(fleet, node)
        try:
            yield fleet
        finally:
            for agent in fleet.agents.values():
                agent.stop()
            operator.stop()
            for name, process in {"operator": operator, **fleet.agents}.items():
                print(f"---- {name} log (tail) ----\n{process.log()[-3000:]}")
            helm(plane, "uninstall", RELEASE, "-n", NS, "--no-hooks", check=False)


def policy_events(plane: ControlPlane, reason: str, *args: str) -> str:
    """`kubectl get events` about the omni policy with `reason` (events of a cluster-scoped
    object land in the default namespace)."""
    selector = f"involvedObject.name=omni,reason={reason}"
    return plane.kubectl(
        "get", "events", "-n", "default", "--field-selector", selector, *args
    ).stdout


def enpol_row(plane: ControlPlane, name: str) -> dict[str, str]:
    """`kubectl get enpol NAME` as column → value."""
    header, row = plane.kubectl("get", "enpol", name).stdout.rstrip().splitlines()
    # Columns by their header's position: kubectl leaves a column blank when its field is unset.
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    ends = [*starts[1:], None]
    names = header.split()
    return {n: row[a:b].strip() for n, a, b in zip(names, starts, ends, strict=True)}


def test_an_applied_policy_labels_the_nodes_and_the_agents_report(fleet: Fleet) -> None:
    plane = fleet.plane
    plane.kubectl("apply", "-f", "-", stdin=json.dumps(POLICY))

    def labelled(node: str) -> bool:
        return fleet.node_policy(node) == "omni"

    def managing_two_gpus(node: str) -> Any:
        report = fleet.report(node)
        status = (report or {}).get("status", {})
        managing = (status.get("phase"), status.get("managedGpus")) == ("Managing", 2)
        return report if managing else None

    for node in NODES:
        eventually_sync(functools.partial(labelled, node), f"{node} labelled", 60)
    for node in NODES:
        report = eventually_sync(
            functools.partial(managing_two_gpus, node), f"{node}'s report managing 2 GPUs", 90
        )
        owner = report["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"]) == ("Node", node)
        assert report["status"]["policy"] == "omni"


def test_kubectl_get_shows_nodes_gpus_saving_and_ready(fleet: Fleet) -> None:
    def ready_with_saving() -> dict[str, str]:
        row = enpol_row(fleet.plane, "omni")
        wanted = (row["NODES"], row["GPUS"], row["READY"]) == ("2", "4", "True")
        assert wanted and row["SAVING"] != "<none>", f"row {row}"  # quoted on timeout
        return row

    row = eventually_sync(ready_with_saving, "2 nodes, 4 GPUs, Ready and a saving figure", 180)
    float(row["SAVING"])


def test_kubectl_describe_shows_the_operators_events(fleet: Fleet) -> None:
    described = fleet.plane.kubectl("describe", "enpol", "omni").stdout
    events = described.split("Events:", 1)[1]
    placed = [line for line in events.splitlines() if "NodesPlaced" in line]
    assert placed and all("triserve-operator" in line for line in placed)
    assert "gpu-a" in events and "gpu-b" in events


def patch_report_status(kubeconfig: Path, node: str, status: dict[str, Any]) -> str:
    """Patch a report's status as the agent does (no read first); the error text, '' if none."""
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        client.CustomObjectsApi(api).patch_cluster_custom_object_status(
            "triserve.io", "v1alpha1", "nodeenergyreports", node, {"status": status}
        )
    except client.ApiException as exc:
        return f"{exc.status} {exc.body}"
    finally:
        api.close()
    return ""


def test_an_agent_cannot_write_another_nodes_report(fleet: Fleet) -> None:
    released = {"phase": "Released"}
    refused = patch_report_status(fleet.kubeconfigs["gpu-a"], "gpu-b", released)
    assert "an agent on node gpu-a may not write the NodeEnergyReport of node gpu-b" in refused
    # A token of the agent's ServiceAccount that is not bound to a pod on a node is refused too.
    unbound = fleet.plane.service_account_kubeconfig(NS, AGENT_SA, fleet.tmp / "unbound.kubeconfig")
    assert "not bound to a pod on a node" in patch_report_status(unbound, "gpu-b", released)
    assert fleet.report("gpu-b")["status"]["phase"] != "Released"
    # Its own report, it may write (what the agent does every report interval).
    own = fleet.report("gpu-a")["status"]
    assert patch_report_status(fleet.kubeconfigs["gpu-a"], "gpu-a", {"phase": own["phase"]}) == ""


def patch_node_as(kubeconfig: Path, node: str, patch: dict[str, Any]) -> str:
    """Patch a Node with these credentials as a server-side dry run; the error text, '' if none."""
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        client.CoreV1Api(api).patch_node(node, patch, dry_run="All")
    except client.ApiException as exc:
        return f"{exc.status} {exc.body}"
    finally:
        api.close()
    return ""


def test_the_operator_may_change_only_the_policy_label_and_the_caps_of_a_node(
    fleet: Fleet,
) -> None:
    operator = fleet.tmp / "operator.kubeconfig"
    only = (
        "the triserve operator may change only the triserve.io/policy label and the "
        "triserve.io/power-caps annotation of a Node"
    )
    other_label = {"metadata": {"labels": {"team": "x"}}}
    # The API server loads admission policies asynchronously: poll until this one refuses.
    eventually_sync(
        lambda: only in patch_node_as(operator, "gpu-a", other_label),
        "the operator's node admission policy to refuse another label",
        30,
    )
    assert only in patch_node_as(operator, "gpu-a", {"spec": {"unschedulable": True}})
    assert only in patch_node_as(operator, "gpu-a", {"metadata": {"annotations": {"a": "b"}}})
    # The label it owns, it may change (what placement does), and the power caps (what the
    # budget does); the admin may do anything.
    assert patch_node_as(operator, "gpu-a", {"metadata": {"labels": {POLICY_LABEL: "x"}}}) == ""
    caps = {"metadata": {"annotations": {POWER_CAPS_ANNOTATION: '{"policy":"x","watts":{}}'}}}
    assert patch_node_as(operator, "gpu-a", caps) == ""
    assert patch_node_as(fleet.plane.admin_kubeconfig, "gpu-a", other_label) == ""


def test_idle_agents_watch_instead_of_listing_again(fleet: Fleet) -> None:
    # Only the agents list pods. The old agent re-listed every 5 s; a watching one does not.
    before = fleet.plane.request_counts()
    # An observation window: that nothing is listed in it cannot be polled for.
    time.sleep(15)
    after = fleet.plane.request_counts()
    assert after.get(("LIST", "pods"), 0) == before.get(("LIST", "pods"), 0)
    assert after.get(("LIST", "energypolicies"), 0) == before.get(("LIST", "energypolicies"), 0)


REFUSE_LABEL: list[dict[str, Any]] = [
    {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": "refuse-triserve-label"},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "resources": ["nodes"],
                        "operations": ["UPDATE"],
                    }
                ]
            },
            "validations": [
                {
                    "expression": "object.metadata.name != 'gpu-refuses' || "
                    "!has(object.metadata.labels) || "
                    "!('triserve.io/policy' in object.metadata.labels)",
                    "message": "gpu-refuses takes no triserve label",
                }
            ],
        },
    },
    {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": "refuse-triserve-label"},
        "spec": {"policyName": "refuse-triserve-label", "validationActions": ["Deny"]},
    },
]


def test_a_node_that_refuses_its_label_is_retried_with_backoff_and_one_warning(
    fleet: Fleet,
) -> None:
    plane = fleet.plane
    plane.apply(*REFUSE_LABEL)
    # The API server loads admission policies asynchronously: poll until this one refuses,
    # with server-side dry runs on a node of that name without GPUs (which the operator does
    # not place), deleted again before the GPU node the test is about arrives.
    plane.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "gpu-refuses"}})

    def refused() -> bool:
        dry_run = plane.kubectl(
            "label",
            "node",
            "gpu-refuses",
            "triserve.io/policy=probe",
            "--dry-run=server",
            check=False,
        )
        return "gpu-refuses takes no triserve label" in dry_run.stderr

    eventually_sync(refused, "the admission policy to refuse the triserve label", 30)
    plane.kubectl("delete", "node", "gpu-refuses")
    before = plane.request_counts().get(("PATCH", "nodes"), 0)
    plane.apply(gpu_node("gpu-refuses"))
    eventually_sync(
        lambda: "LabelFailed" in plane.kubectl("describe", "enpol", "omni").stdout,
        "a LabelFailed warning",
        30,
    )
    # An observation window, not a wait for a condition: count the label attempts over about
    # ten status passes at --status-interval 2.
    time.sleep(20)
    attempts = plane.request_counts().get(("PATCH", "nodes"), 0) - before
    assert len(json.loads(policy_events(plane, "LabelFailed", "-o", "json"))["items"]) == 1
    # Back-off of 5 s, 10 s, 20 s: three tries in those ~22 s, not one per pass.
    assert 1 <= attempts <= 4, f"{attempts} label attempts"
    plane.kubectl("delete", "node", "gpu-refuses")
    for obj in REFUSE_LABEL:
        plane.kubectl("delete", obj["kind"].lower(), obj["metadata"]["name"])


def test_agents_and_operator_were_never_refused_by_rbac(fleet: Fleet) -> None:
    for name, process in {"operator": fleet.operator, **fleet.agents}.items():
        # How the API server words an RBAC denial, and kopf's name for it.
        denied = re.findall(r".*(?:cannot \w+ resource|APIForbiddenError).*", process.log())
        assert not denied, f"{name}: {denied[:3]}"


BUDGET_W, USABLE_W = 2000, 1900  # marginPercent 5


def node_caps(fleet: Fleet, node: str) -> dict[str, int]:
    """The caps the operator wrote on `node` for policy omni (empty: none)."""
    annotations = get_json(fleet.plane, "node", node)["metadata"].get("annotations") or {}
    text = annotations.get(POWER_CAPS_ANNOTATION)
    caps = parse_power_caps(text) if text else None
    return dict(caps.watts) if caps is not None and caps.policy == "omni" else {}


def budget_status(fleet: Fleet) -> dict[str, Any]:
    status = get_json(fleet.plane, "enpol", "omni").get("status") or {}
    return dict(status.get("powerBudget") or {})


def test_a_power_budget_gives_each_gpu_a_cap_its_agent_enforces(fleet: Fleet) -> None:
    budget = {"spec": {"powerBudget": {"watts": BUDGET_W, "marginPercent": 5}}}
    fleet.plane.kubectl("patch", "enpol", "omni", "--type=merge", "-p", json.dumps(budget))

    def enforced(node: str) -> dict[str, int] | None:
        caps = node_caps(fleet, node)
        gpus = fleet.report(node)["status"].get("gpus") or []
        applied = {g["uuid"]: g.get("powerCapWatts", 0) for g in gpus}
        return caps if caps and all(applied.get(u) == w for u, w in caps.items()) else None

    caps = {
        node: eventually_sync(functools.partial(enforced, node), f"{node}'s caps enforced", 90)
        for node in NODES
    }
    assert all(len(c) == 2 for c in caps.values())
    # Both nodes from one list: caps move between re-balances, so reads at two moments may
    # mix an old cap of one node with a new cap of the other.
    listed = json.loads(fleet.plane.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    texts = [(n["metadata"].get("annotations") or {}).get(POWER_CAPS_ANNOTATION) for n in listed]
    assert sum(sum(parse_power_caps(t).watts.values()) for t in texts if t) <= USABLE_W

    def columns() -> dict[str, str]:
        row = enpol_row(fleet.plane, "omni")
        values = (row["BUDGET"], row["ALLOCATED"], row["MEASURED"])
        assert all(v and v != "<none>" for v in values), row
        return row

    row = eventually_sync(columns, "Budget, Allocated and Measured columns", 60)
    assert row["BUDGET"] == str(BUDGET_W) and float(row["ALLOCATED"]) <= USABLE_W


def test_a_node_whose_agent_stops_keeps_its_caps_counted(fleet: Fleet) -> None:
    held = node_caps(fleet, "gpu-b")
    assert held
    fleet.agents["gpu-b"].stop()

    def counted() -> dict[str, Any] | None:
        status = budget_status(fleet)
        return status if status.get("heldWatts") == sum(held.values()) else None

    status = eventually_sync(counted, "gpu-b's caps held against the budget", 90)
    assert status["allocatedWatts"] <= USABLE_W
    assert node_caps(fleet, "gpu-b") == held
    fleet.agents["gpu-b"] = start_agent(fleet, "gpu-b")
    eventually_sync(
        lambda: budget_status(fleet).get("heldWatts", 0) == 0, "gpu-b reporting again", 90
    )


def test_deleting_the_policy_releases_the_gpus_and_drops_the_finalizer(fleet: Fleet) -> None:
    plane = fleet.plane
    plane.kubectl("delete", "enpol", "omni", "--wait=false")

    def unlabelled(node: str) -> bool:
        return fleet.node_policy(node) is None

    def released(node: str) -> bool:
        return bool(fleet.report(node)["status"]["phase"] == "Released")

    for node in NODES:
        eventually_sync(functools.partial(unlabelled, node), f"{node} unlabelled", 60)
        eventually_sync(functools.partial(released, node), f"{node} released", 60)
    eventually_sync(lambda: get_json(plane, "enpol", "omni") is None, "the policy to go", 60)
    assert "Every agent restored default clocks" in policy_events(plane, "GpusReleased")
    assert all(node_caps(fleet, node) == {} for node in NODES)


pytestmark = pytest.mark.timeout(600)
