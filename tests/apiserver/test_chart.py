"""The Helm chart on a real API server: install, upgrade, uninstall as a user runs them.

There is no kubelet here, so no pod runs: `helm uninstall` is run with `--no-hooks` and the test
then does what Helm would, in Helm's order: it creates the post-delete hook's ServiceAccount and
RBAC and runs the hook Job's command with that ServiceAccount's token. test_cluster.py runs the
hook as the Job it is, on a cluster with a scheduler, the controllers and a process kubelet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.apiserver.conftest import CHART, get_json, gpu_node, helm
from tests.apiserver.controlplane import ControlPlane
from tests.support.eventually import eventually_sync
from triserve import cli

MONITORING_KINDS = {
    "ServiceMonitor": "servicemonitors",
    "PodMonitor": "podmonitors",
    "PrometheusRule": "prometheusrules",
}


def monitoring_crd(kind: str, plural: str) -> dict[str, Any]:
    """The smallest CRD serving a Prometheus Operator kind (any content accepted)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "plural": plural,
                "listKind": f"{kind}List",
                "singular": kind.lower(),
            },
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }


def kinds_in_release(plane: ControlPlane, release: str, namespace: str) -> set[str]:
    manifest = helm(plane, "get", "manifest", release, "-n", namespace).stdout
    return {doc["kind"] for doc in yaml.safe_load_all(manifest) if doc}


def test_install_works_without_monitoring_crds_and_upgrade_adds_the_monitors(
    crds: ControlPlane,
) -> None:
    plane = crds
    helm(plane, "install", "demo", str(CHART), "-n", "demo-system", "--create-namespace")
    installed = kinds_in_release(plane, "demo", "demo-system")
    assert {"Deployment", "DaemonSet", "ClusterRole", "ValidatingAdmissionPolicy"} <= installed
    assert not installed & set(MONITORING_KINDS)

    plane.apply(*(monitoring_crd(kind, plural) for kind, plural in MONITORING_KINDS.items()))
    plane.kubectl(
        "wait",
        "--for=condition=Established",
        "crd",
        "servicemonitors.monitoring.coreos.com",
        "prometheusrules.monitoring.coreos.com",
        "--timeout=60s",
    )
    helm(plane, "upgrade", "demo", str(CHART), "-n", "demo-system")
    assert {"ServiceMonitor", "PrometheusRule"} <= kinds_in_release(plane, "demo", "demo-system")
    listed = plane.kubectl("get", "servicemonitors,prometheusrules", "-n", "demo-system").stdout
    assert "demo-triserve-agent" in listed
    assert helm(plane, "status", "demo", "-n", "demo-system").stdout.count("REVISION: 2") == 1
    helm(plane, "uninstall", "demo", "-n", "demo-system", "--no-hooks")


def run_post_delete_hooks(plane: ControlPlane, hooks: list[dict[str, Any]], tmp_path: Path) -> int:
    """Do what Helm's post-delete hooks would: create the RBAC, run the Job's command."""
    hooks = [h for h in hooks if "post-delete" in h["metadata"]["annotations"]["helm.sh/hook"]]
    jobs = [h for h in hooks if h["kind"] == "Job"]
    assert len(jobs) == 1, "the chart ships one post-delete Job"
    plane.apply(*(h for h in hooks if h["kind"] != "Job"))
    job = jobs[0]
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["triserve"]
    kubeconfig = plane.service_account_kubeconfig(
        job["metadata"]["namespace"], pod["serviceAccountName"], tmp_path / "hook.kubeconfig"
    )
    # The Job's command, in this process, with the hook ServiceAccount's token.
    return cli.main([*container["args"], "--kubeconfig", str(kubeconfig)])


def test_uninstall_leaves_no_policy_stuck_and_no_node_label(
    crds: ControlPlane, tmp_path: Path
) -> None:
    plane = crds
    helm(plane, "install", "gone", str(CHART), "-n", "gone-system", "--create-namespace")
    # What a running operator leaves behind: a labelled node and a policy with its finalizer.
    node = gpu_node("uninstall-node")
    node["metadata"]["labels"]["triserve.io/policy"] = "held"
    plane.apply(node)
    plane.apply(
        {
            "apiVersion": "triserve.io/v1alpha1",
            "kind": "EnergyPolicy",
            "metadata": {"name": "held", "finalizers": ["triserve.io/release-gpus"]},
            "spec": {},
        }
    )
    rendered = helm(plane, "get", "hooks", "gone", "-n", "gone-system").stdout
    hooks = [doc for doc in yaml.safe_load_all(rendered) if doc]
    helm(plane, "uninstall", "gone", "-n", "gone-system", "--no-hooks")

    assert run_post_delete_hooks(plane, hooks, tmp_path) == 0
    labels = get_json(plane, "node", "uninstall-node")["metadata"]["labels"]
    assert "triserve.io/policy" not in labels
    # The policy stays (Helm keeps CRDs and their objects) but deleting it no longer hangs.
    plane.kubectl("delete", "enpol", "held", "--timeout=30s")
    eventually_sync(lambda: get_json(plane, "enpol", "held") is None, "the policy to go")
    plane.kubectl("delete", "node", "uninstall-node")


pytestmark = pytest.mark.timeout(300)
