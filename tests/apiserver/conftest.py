"""Fixtures for the tests against a real kube-apiserver (see controlplane.py).

Every test here is marked `apiserver`. Without Go (to build the control plane) they are
skipped with a one-line reason, unless TRISERVE_APISERVER_REQUIRED=1 (set by .ci/run), which
turns that into a failure. The control plane is shared by the whole session; each module
installs what it needs under its own release and namespace names.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, NoReturn

import pytest
import yaml

from tests.apiserver.controlplane import REQUIRED_ENV, ControlPlane, Unavailable, running
from tests.deploy.support import tool
from tests.support import processes
from tests.support.httpserver import http_server

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CRDS = REPO / "crds"
CHART = REPO / "charts" / "triserve"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test in this directory `apiserver`."""
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.apiserver)


def tools_on_path() -> None:
    """kubectl and helm (tests/deploy's pinned ones) first on PATH."""
    for name in ("kubectl", "helm"):
        os.environ["PATH"] = f"{Path(tool(name)).parent}{os.pathsep}{os.environ['PATH']}"


def unavailable(exc: Unavailable) -> NoReturn:
    """Skip for `exc`, or fail where the suite must run (TRISERVE_APISERVER_REQUIRED=1)."""
    if os.environ.get(REQUIRED_ENV) == "1":
        pytest.fail(f"the real API server suite must run here: {exc}")
    pytest.skip(f"no real API server: {exc}")


@pytest.fixture(scope="session")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver for the session, with kubectl and helm on PATH."""
    tools_on_path()
    try:
        with running(tmp_path_factory.mktemp("controlplane")) as control_plane:
            yield control_plane
    except Unavailable as exc:
        unavailable(exc)


def get_json(plane: ControlPlane, *args: str) -> Any:
    """`kubectl get ... -o json` as the admin; None when not found."""
    result = plane.kubectl("get", *args, "-o", "json", check=False)
    if result.returncode != 0:
        if "NotFound" in result.stderr or "not found" in result.stderr:
            return None
        raise AssertionError(result.stderr)
    return json.loads(result.stdout)


@pytest.fixture(scope="session")
def crds(plane: ControlPlane) -> ControlPlane:
    """triserve's CRDs applied and Established."""
    plane.kubectl("apply", "--server-side", "-f", str(CRDS))
    plane.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    return plane


def helm(plane: ControlPlane, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run helm as the admin against the control plane."""
    result = subprocess.run(
        ["helm", f"--kubeconfig={plane.admin_kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)}: {result.stderr.strip()}")
    return result


def namespace(plane: ControlPlane, name: str) -> None:
    """A namespace with its `default` ServiceAccount (no controller-manager creates it here)."""
    plane.apply(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "default", "namespace": name},
        },
    )


def gpu_node(name: str, gpus: int = 2) -> dict[str, Any]:
    """A Node object as a kubelet on a GPU node would register it (no kubelet here)."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/hostname": name, "nvidia.com/gpu.present": "true"},
        },
    }


def set_gpu_capacity(plane: ControlPlane, node: str, gpus: int) -> None:
    """Patch the node's status as its kubelet would, with nvidia.com/gpu capacity."""
    patch = {
        "status": {
            "capacity": {"nvidia.com/gpu": str(gpus)},
            "allocatable": {"nvidia.com/gpu": str(gpus)},
        }
    }
    plane.kubectl(
        "patch", "node", node, "--subresource=status", "--type=merge", "-p", json.dumps(patch)
    )


class Process:
    """A `triserve` child process with its output in a log file."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "triserve.cli", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    def log(self) -> str:
        """Everything it printed so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, then wait (SIGKILL after `timeout_s`); returns the exit status."""
        code = processes.stop(self.proc, grace_s=timeout_s)
        self._log.close()
        return code


@contextlib.contextmanager
def serving_metrics(speed: float) -> Iterator[tuple[int, list[Any]]]:
    """The reference scenario's serving metrics on 127.0.0.1, advancing in (scaled) real time.

    Yields (port, stage placements); `/<stage>` serves that stage's vLLM-style exposition.
    """
    from triserve.simnode import open_simulation

    sim = open_simulation("reference")
    lock = threading.Lock()
    stop = threading.Event()
    start = time.monotonic()

    def advance() -> None:
        while not stop.wait(0.2):
            with lock:
                sim.run_until((time.monotonic() - start) * speed)

    def exposition(path: str) -> str | None:
        with lock:
            try:
                return sim.serving_exposition(path.strip("/"))
            except KeyError:
                return None

    thread = threading.Thread(target=advance, daemon=True)
    thread.start()
    try:
        with http_server(exposition) as port:
            yield port, list(sim.placements)
    finally:
        stop.set()


def load_yaml(path: Path) -> dict[str, Any]:
    """One YAML document."""
    return dict(yaml.safe_load(path.read_text()))
