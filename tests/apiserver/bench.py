"""Scale figures against a real API server (printed, never asserted): `make apiserver-bench`.

* API requests per idle agent: N agents (simulated GPUs, no serving pods) on nodes already
  labelled for a policy; the API server's own `apiserver_request_total` is read before and after
  a window (default 120 s, after the agents have synced) and the difference is given per agent
  per minute, split into report writes and everything else (lists, watches, reads). The window
  is shorter than 10 minutes to keep the run short: a per-minute rate extrapolated from it
  includes one watch re-open per ~5 minutes only in proportion.
* Operator placement and status at scale: M Node objects with GPUs, one policy applied; the
  time until every node carries the label, and until the policy's status counts them all.

    python -m tests.apiserver.bench --agents 1 20 --window 120 --nodes 1000
    python -m tests.apiserver.bench --agents 1 --agent-src /tmp/old/src   # another tree's agent
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.apiserver.conftest import CHART, CRDS, Process, gpu_node, helm
from tests.apiserver.controlplane import ControlPlane, binaries

NS = "triserve-system"
AGENT_VERBS = {"GET", "LIST", "WATCH", "CREATE", "PATCH", "UPDATE"}


def setup(plane: ControlPlane) -> None:
    plane.kubectl("apply", "--server-side", "-f", str(CRDS))
    plane.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    helm(plane, "install", "triserve", str(CHART), "-n", NS, "--create-namespace")


def create_nodes(plane: ControlPlane, names: list[str], labels: dict[str, str]) -> None:
    items = []
    for name in names:
        node = gpu_node(name)
        node["metadata"]["labels"].update(labels)
        items.append(node)
    for start in range(0, len(items), 250):  # kubectl apply of a List, 250 at a time
        batch = {"apiVersion": "v1", "kind": "List", "items": items[start : start + 250]}
        plane.kubectl("apply", "-f", "-", stdin=json.dumps(batch), timeout_s=300)


def delta(before: dict[Any, float], after: dict[Any, float]) -> dict[Any, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0}


def agent_rate(
    plane: ControlPlane, tmp: Path, count: int, window_s: float, src: str | None
) -> None:
    """Requests per idle agent per minute over `window_s`."""
    names = [f"idle-{count}-{i:02d}" for i in range(count)]
    policy = f"idle-{count}"
    plane.apply(
        {
            "apiVersion": "triserve.io/v1alpha1",
            "kind": "EnergyPolicy",
            "metadata": {"name": policy},
            "spec": {"reportIntervalSeconds": 30},
        }
    )
    create_nodes(plane, names, {"triserve.io/policy": policy})
    env = {"PYTHONPATH": src} if src else {}
    agents = []
    for name in names:
        plane.apply(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"agent-{name}", "namespace": NS},
                "spec": {
                    "nodeName": name,
                    "serviceAccountName": "triserve-agent",
                    "containers": [{"name": "agent", "image": "triserve:bench"}],
                },
            }
        )
        config = plane.service_account_kubeconfig(
            NS, "triserve-agent", tmp / f"{name}.kubeconfig", bound_pod=f"agent-{name}"
        )
        agents.append(
            Process(
                [
                    "agent",
                    "--sim",
                    "reference",
                    "--kubeconfig",
                    str(config),
                    "--node-name",
                    name,
                    "--metrics-port",
                    "0",
                    "--metrics-host",
                    "127.0.0.1",
                    "--state-file",
                    str(tmp / f"{name}.state"),
                    "--pod-resources-socket",
                    str(tmp / "none.sock"),
                    "--log-level",
                    "WARNING",
                ],
                tmp / f"{name}.log",
                env=env,
            )
        )
    try:
        time.sleep(30)  # start-up: first lists, first report
        before = plane.request_counts()
        time.sleep(window_s)
        after = plane.request_counts()
    finally:
        for agent in agents:
            agent.stop()
    moved = delta(before, after)
    per_min = 60.0 / window_s / count
    writes = sum(
        v
        for (verb, res), v in moved.items()
        if res == "nodeenergyreports" and verb in {"PATCH", "CREATE", "UPDATE"}
    )
    agent_resources = {"nodes", "pods", "energypolicies", "nodeenergyreports"}
    total = sum(
        v for (verb, res), v in moved.items() if res in agent_resources and verb in AGENT_VERBS
    )
    detail = sorted(
        (f"{verb}/{res}", round(n * per_min, 2))
        for (verb, res), n in moved.items()
        if res in agent_resources
    )
    print(
        f"agents={count:3d} window={window_s:.0f}s  per agent per minute: "
        f"{(total - writes) * per_min:6.2f} reads/lists/watches + "
        f"{writes * per_min:5.2f} report writes  (by verb/resource: {detail})"
    )


def placement(plane: ControlPlane, tmp: Path, nodes: int) -> None:
    """Seconds from applying a policy to every node labelled, and to status counting them."""
    # The idle runs' policies claim every GPU node: start from a cluster without them.
    plane.kubectl("delete", "enpol", "--all", "--wait", timeout_s=120)
    plane.kubectl("delete", "nodes", "--all", timeout_s=300)
    names = [f"scale-{i:04d}" for i in range(nodes)]
    t0 = time.monotonic()
    create_nodes(plane, names, {"scale": "yes"})
    print(f"created {nodes} nodes in {time.monotonic() - t0:.1f}s")
    config = plane.service_account_kubeconfig(NS, "triserve-operator", tmp / "operator.kubeconfig")
    operator = Process(
        ["operator", "--liveness", "", "--status-interval", "5"],
        tmp / "operator.log",
        env={"KUBECONFIG": str(config)},
    )
    try:
        time.sleep(5)  # kopf's start-up and initial listing of nodes
        t0 = time.monotonic()
        plane.apply(
            {
                "apiVersion": "triserve.io/v1alpha1",
                "kind": "EnergyPolicy",
                "metadata": {"name": "scale"},
                "spec": {"nodeSelector": {"matchLabels": {"scale": "yes"}}},
            }
        )
        labelled_s = status_s = None
        while time.monotonic() - t0 < 600 and (labelled_s is None or status_s is None):
            if labelled_s is None:
                out = plane.kubectl(
                    "get", "nodes", "-l", "triserve.io/policy=scale", "-o", "name"
                ).stdout
                if len(out.split()) == nodes:
                    labelled_s = time.monotonic() - t0
            if status_s is None:
                status = (
                    json.loads(plane.kubectl("get", "enpol", "scale", "-o", "json").stdout).get(
                        "status"
                    )
                    or {}
                )
                if (status.get("nodes") or {}).get("targeted") == nodes:
                    status_s = time.monotonic() - t0
            time.sleep(0.5)
        print(
            f"nodes={nodes}: every node labelled after {labelled_s}s; "
            f"status.nodes.targeted={nodes} after {status_s}s (operator --status-interval 5)"
        )
    finally:
        operator.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, nargs="*", default=[1, 20])
    parser.add_argument("--window", type=float, default=120.0, help="seconds measured")
    parser.add_argument("--nodes", type=int, default=1000, help="0 skips the placement run")
    parser.add_argument("--agent-src", help="run the agents from this source tree (PYTHONPATH)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="triserve-bench-") as work:
        tmp = Path(work)
        plane = ControlPlane(binaries(), tmp)
        venv_bin = Path(__file__).resolve().parents[2] / ".venv" / "bin"
        os.environ["PATH"] = f"{venv_bin}{os.pathsep}{os.environ['PATH']}"
        try:
            plane.start()
            setup(plane)
            for count in args.agents:
                agent_rate(plane, tmp, count, args.window, args.agent_src)
            if args.nodes:
                placement(plane, tmp, args.nodes)
        finally:
            plane.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
