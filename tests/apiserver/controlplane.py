"""A real Kubernetes control plane on loopback: etcd and kube-apiserver as child processes.

The binaries are built from the Go modules pinned in tools/k8s (`tools/k8s/build.sh`, cached
under .cache/k8s/). `ControlPlane` generates what a cluster's PKI would hold (a CA, a serving
certificate for 127.0.0.1, the ServiceAccount token signing key pair and a static admin token),
starts etcd and kube-apiserver with RBAC authorization, and writes kubeconfigs: one for the
admin (group system:masters) and one per ServiceAccount token obtained from the TokenRequest
API, optionally bound to a pod so that the token carries the pod's node name.
By default there is no kubelet, scheduler or controller-manager: pods are API objects only.
With `controllers=True` kube-controller-manager (the workload controllers and the garbage
collector) and kube-scheduler run too, each with its own static token as the user the bootstrap
RBAC roles name, no HTTPS port of its own and no leader election; add a process kubelet
(tests/support/kubelet.py) and pods run.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.support import processes

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "tools" / "k8s" / "build.sh"
#: Set by CI: a missing Go toolchain or failed build is then an error, not a skip.
REQUIRED_ENV = "TRISERVE_APISERVER_REQUIRED"
#: A directory holding the control-plane binaries (build.sh output), instead of building them.
BIN_ENV = "TRISERVE_K8S_BIN"


#: Control-plane components beside kube-apiserver, started with `controllers=True`.
COMPONENTS = ("kube-controller-manager", "kube-scheduler")


class Unavailable(Exception):
    """The control plane cannot run here; the message says why in one line."""


def binaries() -> Path:
    """The directory holding the control-plane binaries, building them if needed."""
    if os.environ.get(BIN_ENV):
        return Path(os.environ[BIN_ENV])
    if shutil.which("go") is None:
        raise Unavailable("Go is not installed (needed to build the control plane)")
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, check=False, timeout=3000
    )
    if result.returncode != 0:
        raise Unavailable(f"tools/k8s/build.sh failed: {result.stderr.strip()[-2000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(directory: Path) -> None:
    """CA, serving cert for 127.0.0.1/localhost, and the ServiceAccount signing key pair."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=triserve-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        cwd=directory,
    )
    (directory / "san.cnf").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\n"
        "extendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=kube-apiserver",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        cwd=directory,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.cnf",
        "-out",
        "server.crt",
        cwd=directory,
    )
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=directory)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=directory)


#: The controllers a test cluster needs: workloads and their garbage collection, a namespace's
#: default ServiceAccount and kube-root-ca.crt (which every pod's token volume projects), and
#: the clean-up of finished Jobs and of pods whose node is gone. No node lifecycle: the process
#: kubelet posts no heartbeats, so nothing may evict or taint its nodes for that.
CONTROLLERS = (
    "garbage-collector-controller",
    "daemonset-controller",
    "deployment-controller",
    "replicaset-controller",
    "job-controller",
    "ttl-after-finished-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "root-ca-certificate-publisher-controller",
    "pod-garbage-collector-controller",
)


class ControlPlane:
    """etcd + kube-apiserver on 127.0.0.1, with RBAC and ServiceAccount tokens."""

    def __init__(self, bin_dir: Path, work_dir: Path, *, controllers: bool = False) -> None:
        self.bin_dir = bin_dir
        self.work = work_dir
        self.pki = work_dir / "pki"
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.admin_token = secrets.token_hex(16)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}  # by binary name, in start order
        self.admin_kubeconfig = work_dir / "admin.kubeconfig"
        self.controllers = controllers

    # ---- lifecycle ---------------------------------------------------------------------
    def start(self, timeout_s: float = 120.0) -> None:
        """Start etcd, then kube-apiserver; return once /readyz answers ok."""
        make_pki(self.pki)
        # The controller-manager and scheduler log in as the users the bootstrap roles name.
        component_tokens = {name: secrets.token_hex(16) for name in COMPONENTS}
        (self.pki / "tokens.csv").write_text(
            f'{self.admin_token},admin,admin,"system:masters"\n'
            + "".join(
                f"{token},system:{name},system:{name}\n" for name, token in component_tokens.items()
            )
        )
        etcd_port, peer_port = free_port(), free_port()
        etcd_url, peer_url = f"http://127.0.0.1:{etcd_port}", f"http://127.0.0.1:{peer_port}"
        self._spawn(
            "etcd",
            [
                "--name=test",
                f"--data-dir={self.work / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=test={peer_url}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        pki = self.pki
        self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--cert-dir={self.work / 'certs'}",
                f"--tls-cert-file={pki / 'server.crt'}",
                f"--tls-private-key-file={pki / 'server.key'}",
                f"--token-auth-file={pki / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-cluster-ip-range=10.96.0.0/24",
                "--endpoint-reconciler-type=none",
                "--profiling=false",
                "--v=1",
            ],
        )
        self.write_kubeconfig(self.admin_kubeconfig, self.admin_token, "admin")
        self._wait_ready(timeout_s)
        if self.controllers:
            self._start_controllers(component_tokens)

    def _start_controllers(self, tokens: dict[str, str]) -> None:
        configs = {
            name: self.write_kubeconfig(self.work / f"{name}.kubeconfig", token, f"system:{name}")
            for name, token in tokens.items()
        }
        self._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={configs['kube-controller-manager']}",
                "--secure-port=0",
                "--leader-elect=false",
                # Each controller with its own ServiceAccount's token, as kubeadm runs it.
                "--use-service-account-credentials=true",
                f"--controllers={','.join(CONTROLLERS)}",
                f"--root-ca-file={self.pki / 'ca.crt'}",
                "--v=1",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                f"--kubeconfig={configs['kube-scheduler']}",
                "--secure-port=0",
                "--leader-elect=false",
                "--v=1",
            ],
        )

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited: see {self.work}/{name}.log")
            with contextlib.suppress(OSError):
                if self.get("/readyz") == "ok":
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"kube-apiserver not ready in {timeout_s:.0f}s: {self.work}")
            time.sleep(0.5)

    def _spawn(self, name: str, args: list[str]) -> None:
        log = (self.work / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [str(self.bin_dir / name), *args], stdout=log, stderr=subprocess.STDOUT
        )
        self.procs[name] = proc

    def stop(self) -> None:
        """Stop the components in the reverse order of their start (etcd last)."""
        for proc in reversed(self.procs.values()):
            processes.stop(proc, grace_s=20)

    # ---- access ------------------------------------------------------------------------
    def ssl_context(self) -> ssl.SSLContext:
        """Trusts the test CA only."""
        return ssl.create_default_context(cafile=str(self.pki / "ca.crt"))

    def get(self, path: str, token: str | None = None) -> str:
        """GET a path as the admin (or with `token`); the body as text."""
        request = urllib.request.Request(
            self.url + path, headers={"Authorization": f"Bearer {token or self.admin_token}"}
        )
        with urllib.request.urlopen(request, context=self.ssl_context(), timeout=10) as reply:
            return str(reply.read().decode())

    def write_kubeconfig(self, path: Path, token: str, user: str) -> Path:
        """A kubeconfig for this server with a bearer token."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "test",
                    "cluster": {
                        "server": self.url,
                        "certificate-authority": str(self.pki / "ca.crt"),
                    },
                }
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": user}}],
            "current-context": "test",
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def kubectl(
        self,
        *args: str,
        kubeconfig: Path | None = None,
        check: bool = True,
        stdin: str | None = None,
        timeout_s: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this server (as the admin unless `kubeconfig`)."""
        config = kubeconfig or self.admin_kubeconfig
        result = subprocess.run(
            ["kubectl", f"--kubeconfig={config}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result

    def apply(self, *objects: dict[str, Any]) -> None:
        """`kubectl apply` these objects as the admin."""
        docs = "\n---\n".join(json.dumps(obj) for obj in objects)
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=docs)

    def service_account_kubeconfig(
        self, namespace: str, name: str, path: Path, *, bound_pod: str | None = None
    ) -> Path:
        """A kubeconfig with a TokenRequest token for ServiceAccount namespace/name.

        `bound_pod` binds the token to that pod (in `namespace`); when the pod is bound to a
        node, the token carries the node's name, as a real agent pod's token does.
        """
        args = ["create", "token", name, "-n", namespace, "--duration=2h"]
        if bound_pod:
            args += ["--bound-object-kind=Pod", f"--bound-object-name={bound_pod}"]
        token = self.kubectl(*args).stdout.strip()
        return self.write_kubeconfig(path, token, f"{namespace}-{name}")

    def request_counts(self) -> dict[tuple[str, str], float]:
        """`apiserver_request_total` summed by (verb, resource), from the server's /metrics."""
        counts: dict[tuple[str, str], float] = {}
        for line in self.get("/metrics").splitlines():
            if not line.startswith("apiserver_request_total{"):
                continue
            labels_text, value = line[len("apiserver_request_total{") :].rsplit("} ", 1)
            labels = dict(part.split("=", 1) for part in labels_text.split('",') if "=" in part)
            verb = labels.get("verb", "").strip('"')
            resource = labels.get("resource", "").strip('"')
            counts[(verb, resource)] = counts.get((verb, resource), 0.0) + float(value)
        return counts


@contextlib.contextmanager
def running(work_dir: Path, *, controllers: bool = False) -> Iterator[ControlPlane]:
    """A started control plane (with the scheduler and controllers if asked), stopped on exit."""
    plane = ControlPlane(binaries(), work_dir, controllers=controllers)
    try:
        plane.start()
        yield plane
    finally:
        plane.stop()
