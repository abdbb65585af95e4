"""A process kubelet: fake Nodes whose pods run as local processes, for tests on a real API server.

`Kubelet` registers Nodes (labels, taints, `nvidia.com/gpu` capacity, Ready) and, on one
thread, runs every pod the scheduler binds to them the way a kubelet would as far as the
pod's own spec goes: each container's `command`/`args` with `$(VAR)` expanded, its `env`
(values and downward-API `fieldRef`s), and its volumes (`hostPath` under a per-node root
directory, `emptyDir`, and `projected`/`configMap` volumes, which include the ServiceAccount
token volume the API server's admission adds: a TokenRequest token bound to the pod, the
cluster CA and the namespace). The image is ignored: the command runs from the kubelet's
`image_env` (its PATH and PYTHONPATH stand for what the image would hold). Each container
runs in a mount namespace of its own (`unshare --mount`) where those volumes are bind-mounted
at their `mountPath`, so `/var/run/secrets/kubernetes.io/serviceaccount` and hostPath paths
are the pod's, not this machine's. In-cluster clients find the API server through
`KUBERNETES_SERVICE_HOST`/`PORT`, as in any pod.

What a container runtime would add is absent: there is no network namespace (each pod gets a
loopback address of its own, 127.0.x.y, as its pod IP, and binds there or on any address of
this machine), no user switch (`runAsUser` is not applied), no read-only root filesystem, no
liveness probes or image pulls. Readiness `httpGet` probes are checked on every sync against
the pod IP. The kubelet posts pod status (Running and Ready, then Succeeded or Failed) so
that Deployments, DaemonSets and Jobs see their pods progress, restarts containers as the
pod's restartPolicy says, and on deletion sends SIGTERM, waits for the grace period and then
removes the pod. Used by tests/apiserver/test_cluster.py.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

__all__ = ["ContainerRun", "Kubelet", "NodeSpec", "isolation_command"]

POD_RESOURCES_DIR = "/var/lib/kubelet/pod-resources"
#: Node allocatable besides GPUs: room for the chart's pods and a few more.
NODE_RESOURCES = {"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"}
_VAR_RE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")

#: The repository checkout: the pods run its virtualenv's interpreter.
CHECKOUT = Path(__file__).resolve().parents[2]


class PodSetupError(Exception):
    """The pod cannot start (yet): the message goes to its status, and the kubelet retries."""


@dataclass(frozen=True)
class NodeSpec:
    """A Node the kubelet registers: `gpus` sets `nvidia.com/gpu` capacity."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Mapping[str, str], ...] = ()
    gpus: int = 0


def isolation_command() -> list[str]:
    """The `unshare` prefix that gives a process its own mount namespace here.

    Raises `PodSetupError` with the reason when neither root's nor a user namespace's works.
    """
    candidates = [["unshare", "--mount", "--propagation", "private"]]
    candidates.append(["unshare", "--map-root-user", "--mount", "--propagation", "private"])
    if shutil.which("unshare") is None:
        raise PodSetupError("unshare (util-linux) is not installed")
    for prefix in candidates if os.geteuid() == 0 else candidates[1:]:
        probe = subprocess.run([*prefix, "true"], capture_output=True, check=False)
        if probe.returncode == 0:
            return prefix
    raise PodSetupError(f"no mount namespace for pods: {probe.stderr.decode().strip()}")


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: defined names replaced, `$$` kept as one `$`."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "$"
        return env.get(name, match.group(0))

    return _VAR_RE.sub(one, text)


@dataclass
class ContainerRun:
    """One container's process, as this kubelet started it."""

    namespace: str
    pod: str
    node: str
    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: str = ""
    restarts: int = 0
    exit_code: int | None = None
    finished_at: str = ""
    ready: bool = False

    def log(self) -> str:
        """What the container printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class _PodRun:
    uid: str
    namespace: str
    name: str
    node: str
    ip: str
    directory: Path
    restart_policy: str
    containers: dict[str, ContainerRun] = field(default_factory=dict)
    specs: dict[str, dict[str, Any]] = field(default_factory=dict)
    env: dict[str, dict[str, str]] = field(default_factory=dict)
    scripts: dict[str, str] = field(default_factory=dict)
    start_time: str = ""
    waiting: str = ""  # why it has not started, while it has not
    stop_deadline: float | None = None
    posted: dict[str, Any] | None = None
    logs: list[IO[bytes]] = field(default_factory=list)


class Kubelet:
    """Fake Nodes on one API server; their pods run here as processes (see the module doc)."""

    def __init__(
        self,
        api_client: Any,
        work_dir: Path,
        *,
        server_port: int,
        image_env: Mapping[str, str],
        sync_interval_s: float = 0.5,
    ) -> None:
        from kubernetes import client

        # Any: bodies go as plain manifests (dicts), not the client's models.
        self.core: Any = client.CoreV1Api(api_client)
        self._api_exception = client.ApiException
        self.work = work_dir
        self.server_port = server_port
        self.image_env = dict(image_env)
        self.sync_interval_s = sync_interval_s
        self.isolation = isolation_command()
        self.nodes: dict[str, NodeSpec] = {}
        self.pods: dict[str, _PodRun] = {}  # by uid
        self.history: list[ContainerRun] = []  # every container started, deleted pods' too
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ips = 0

    # ---- nodes -------------------------------------------------------------------------
    def register(self, spec: NodeSpec) -> None:
        """Create the Node and post its status (capacity, Ready), as a kubelet registering."""
        labels = {"kubernetes.io/hostname": spec.name, "kubernetes.io/os": "linux", **spec.labels}
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": spec.name, "labels": labels},
            "spec": {"taints": [dict(t) for t in spec.taints]},
        }
        self.core.create_node(body)
        resources = dict(NODE_RESOURCES)
        if spec.gpus:
            resources["nvidia.com/gpu"] = str(spec.gpus)
        now = _now()
        status = {
            "capacity": resources,
            "allocatable": resources,
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": spec.name},
            ],
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "process kubelet is posting ready status",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
            ],
        }
        self.core.patch_node_status(spec.name, {"status": status})
        # The API server's admission taints a new Node not-ready; the node lifecycle controller
        # would lift that once Ready, but it is not run here (no heartbeats): lift it as it would.
        node = self.core.read_node(spec.name)
        node.spec.taints = [dict(t) for t in spec.taints] or None
        self.core.replace_node(spec.name, node)
        # What a kubelet creates on its host: the pod-resources socket's directory.
        (self.node_root(spec.name) / POD_RESOURCES_DIR.lstrip("/")).mkdir(parents=True)
        with self._lock:
            self.nodes[spec.name] = spec

    def node_root(self, node: str) -> Path:
        """The directory that stands for `/` of `node` (hostPath volumes live under it)."""
        return self.work / "nodes" / node

    def leave(self, node: str, grace_s: float = 30.0) -> None:
        """The node goes away: its pods' processes stop, then its Node object is deleted."""
        with self._lock:
            self.nodes.pop(node, None)
            runs = [run for run in self.pods.values() if run.node == node]
            for run in runs:
                del self.pods[run.uid]
        for run in runs:
            self._kill(run, grace_s)
        self.core.delete_node(node)

    # ---- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Start syncing pods on a thread of its own."""
        self._thread = threading.Thread(target=self._loop, name="kubelet", daemon=True)
        self._thread.start()

    def stop(self, grace_s: float = 30.0) -> None:
        """Stop syncing, then stop every container (SIGTERM, then SIGKILL after `grace_s`)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        with self._lock:
            runs = list(self.pods.values())
            self.pods.clear()
        for run in runs:
            self._signal(run, signal.SIGTERM)
        for run in runs:
            self._kill(run, grace_s)

    def containers(self) -> list[ContainerRun]:
        """Every container this kubelet started, in start order (deleted pods' too)."""
        with self._lock:
            return list(self.history)

    def _loop(self) -> None:
        while not self._stop.wait(self.sync_interval_s):
            try:
                self.sync()
            except Exception as exc:  # a sync that failed is retried on the next one
                self._log(f"sync failed: {exc!r}")

    def _log(self, message: str) -> None:
        with (self.work / "kubelet.log").open("a") as log:
            log.write(f"{_now()} {message}\n")

    # ---- sync --------------------------------------------------------------------------
    def sync(self) -> None:
        """One pass: start new pods, reap and restart containers, post status, stop deleted."""
        reply = self.core.list_pod_for_all_namespaces(_preload_content=False)
        pods = json.loads(reply.data)["items"]
        with self._lock:
            mine = [p for p in pods if p["spec"].get("nodeName") in self.nodes]
            seen = {p["metadata"]["uid"] for p in mine}
            for uid in [uid for uid in self.pods if uid not in seen]:
                # Deleted without us (forced): stop what still runs.
                self._kill(self.pods.pop(uid), 0.0)
            for pod in mine:
                try:
                    self._sync_pod(pod)
                except Exception as exc:  # one pod's failure must not hold up the others
                    self._log(f"pod {pod['metadata']['name']}: {exc!r}")

    def _sync_pod(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        run = self.pods.get(meta["uid"])
        if meta.get("deletionTimestamp"):
            self._terminate(pod, run)
            return
        if run is None:
            if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                return
            run = self._admit(pod)
        if run.waiting or not run.containers:
            self._try_start(pod, run)
        else:
            self._reap(run)
        self._post_status(run)

    def _admit(self, pod: dict[str, Any]) -> _PodRun:
        meta = pod["metadata"]
        self._ips += 1
        ip = f"127.0.{1 + self._ips // 250}.{1 + self._ips % 250}"
        directory = self.work / "pods" / f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}"
        run = _PodRun(
            uid=meta["uid"],
            namespace=meta["namespace"],
            name=meta["name"],
            node=pod["spec"]["nodeName"],
            ip=ip,
            directory=directory,
            restart_policy=pod["spec"].get("restartPolicy", "Always"),
            start_time=_now(),
            waiting="ContainerCreating",
        )
        self.pods[run.uid] = run
        return run

    def _try_start(self, pod: dict[str, Any], run: _PodRun) -> None:
        try:
            self._prepare(pod, run)
        except (PodSetupError, self._api_exception, OSError) as exc:
            run.waiting = f"ContainerCreating: {exc}"
            return
        run.waiting = ""
        for name in run.specs:
            self._launch(run, name)

    # ---- pod set-up ----------------------------------------------------------------------
    def _prepare(self, pod: dict[str, Any], run: _PodRun) -> None:
        spec = pod["spec"]
        if spec.get("initContainers"):
            raise PodSetupError("init containers are not supported by the process kubelet")
        run.directory.mkdir(parents=True, exist_ok=True)
        run.specs.clear()
        run.containers.clear()
        volumes = {v["name"]: self._volume(pod, run, v) for v in spec.get("volumes", [])}
        fields = self._fields(pod, run)
        base = {
            **self.image_env,
            "HOSTNAME": run.name,
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(self.server_port),
        }
        for container in spec["containers"]:
            name = container["name"]
            if not container.get("command"):
                raise PodSetupError(f"container {name}: no command (the image is not run)")
            env = dict(base)
            for var in container.get("env", []):
                env[var["name"]] = self._env_value(var, fields, env, name)
            if container.get("envFrom"):
                raise PodSetupError(f"container {name}: envFrom is not supported")
            argv = [expand(a, env) for a in container["command"] + container.get("args", [])]
            resolved = shutil.which(argv[0], path=env.get("PATH"))
            if resolved is None:
                raise PodSetupError(f"container {name}: {argv[0]} is not on the image PATH")
            mounts = []
            for mount in container.get("volumeMounts", []):
                if mount["name"] not in volumes:
                    raise PodSetupError(f"container {name}: no volume {mount['name']}")
                source = volumes[mount["name"]]
                if mount.get("subPath"):
                    source = source / mount["subPath"]
                mounts.append((source, mount["mountPath"], bool(mount.get("readOnly"))))
            run.specs[name] = container
            run.env[name] = env
            run.containers[name] = ContainerRun(
                namespace=run.namespace,
                pod=run.name,
                node=run.node,
                name=name,
                argv=[resolved, *argv[1:]],
                log_path=run.directory / f"{name}.log",
            )
            run.scripts[name] = self._mount_script(mounts)

    def _fields(self, pod: dict[str, Any], run: _PodRun) -> dict[str, str]:
        meta, spec = pod["metadata"], pod["spec"]
        return {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
            "spec.nodeName": spec["nodeName"],
            "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
            "status.hostIP": "127.0.0.1",
            "status.hostIPs": "127.0.0.1",
            "status.podIP": run.ip,
            "status.podIPs": run.ip,
            **{f"metadata.labels['{k}']": v for k, v in meta.get("labels", {}).items()},
            **{f"metadata.annotations['{k}']": v for k, v in meta.get("annotations", {}).items()},
        }

    def _env_value(
        self, var: dict[str, Any], fields: Mapping[str, str], env: Mapping[str, str], name: str
    ) -> str:
        if "valueFrom" not in var:
            return expand(str(var.get("value", "")), env)
        source = var["valueFrom"]
        if "fieldRef" in source and source["fieldRef"]["fieldPath"] in fields:
            return fields[source["fieldRef"]["fieldPath"]]
        raise PodSetupError(f"container {name}: env {var['name']}: unsupported {source}")

    def _volume(self, pod: dict[str, Any], run: _PodRun, volume: dict[str, Any]) -> Path:
        name = volume["name"]
        if "hostPath" in volume:
            host: Path = self.node_root(run.node) / str(volume["hostPath"]["path"]).lstrip("/")
            kind = volume["hostPath"].get("type", "")
            if kind == "DirectoryOrCreate":
                host.mkdir(parents=True, exist_ok=True)
            elif kind == "Directory" and not host.is_dir():
                raise PodSetupError(f"hostPath {volume['hostPath']['path']} is not a directory")
            elif not host.exists():
                raise PodSetupError(f"hostPath {volume['hostPath']['path']}: type {kind!r}")
            return host
        target: Path = run.directory / "volumes" / str(name)
        target.mkdir(parents=True, exist_ok=True)
        if "emptyDir" in volume:
            return target
        if "configMap" in volume:
            self._write_config_map(run.namespace, volume["configMap"], target)
            return target
        if "projected" in volume:
            for source in volume["projected"].get("sources", []):
                self._write_projection(pod, run, source, target)
            return target
        raise PodSetupError(f"volume {name}: only hostPath, emptyDir, configMap, projected")

    def _write_projection(
        self, pod: dict[str, Any], run: _PodRun, source: dict[str, Any], target: Path
    ) -> None:
        if "serviceAccountToken" in source:
            token = source["serviceAccountToken"]
            request: dict[str, Any] = {
                "spec": {
                    "expirationSeconds": token.get("expirationSeconds", 3607),
                    "boundObjectRef": {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "name": run.name,
                        "uid": run.uid,
                    },
                }
            }
            if token.get("audience"):
                request["spec"]["audiences"] = [token["audience"]]
            account = pod["spec"].get("serviceAccountName", "default")
            reply = self.core.create_namespaced_service_account_token(
                account, run.namespace, request
            )
            (target / token["path"]).write_text(reply.status.token)
        elif "configMap" in source:
            self._write_config_map(run.namespace, source["configMap"], target)
        elif "downwardAPI" in source:
            fields = self._fields(pod, run)
            for item in source["downwardAPI"].get("items", []):
                path = item.get("fieldRef", {}).get("fieldPath")
                if path not in fields:
                    raise PodSetupError(f"downwardAPI item {item}: unsupported")
                (target / item["path"]).write_text(fields[path])
        elif "secret" in source:
            secret = self.core.read_namespaced_secret(source["secret"]["name"], run.namespace)
            for key, value in (secret.data or {}).items():
                (target / key).write_bytes(base64.b64decode(value))
        else:
            raise PodSetupError(f"projected source {sorted(source)}: unsupported")

    def _write_config_map(self, namespace: str, ref: dict[str, Any], target: Path) -> None:
        data = self.core.read_namespaced_config_map(ref["name"], namespace).data or {}
        items = ref.get("items") or [{"key": k, "path": k} for k in data]
        for item in items:
            (target / item["path"]).write_text(data[item["key"]])

    def _mount_script(self, mounts: list[tuple[Path, str, bool]]) -> str:
        """The shell prelude that bind-mounts the volumes, then execs the container command.

        A mount point above a mount source (a `/tmp` emptyDir over a test's temporary
        directory) is mounted last, or it would hide the sources mounted after it. A mount
        point above the checkout (a clone under `/tmp`) would hide the interpreter the pod
        runs: the checkout is bound into that volume's directory first, and the volume is
        mounted recursively, so it stays where it was.
        """

        def hides_a_source(mount: tuple[Path, str, bool]) -> bool:
            return any(src.is_relative_to(mount[1]) for src, _, _ in mounts)

        lines = ["set -e"]
        for source, target, read_only in sorted(mounts, key=hides_a_source):
            quoted = shlex.quote(target)
            lines.append(f"mkdir -p {quoted}")
            bind = "--bind"
            if CHECKOUT.is_relative_to(target) and Path(target) != CHECKOUT:
                inner = shlex.quote(str(source / CHECKOUT.relative_to(target)))
                lines += [f"mkdir -p {inner}", f"mount --bind {shlex.quote(str(CHECKOUT))} {inner}"]
                bind = "--rbind"
            lines.append(f"mount {bind} {shlex.quote(str(source))} {quoted}")
            if read_only:
                lines.append(f"mount -o remount,bind,ro {quoted}")
        lines.append('exec "$@"')
        return "\n".join(lines)

    # ---- processes -----------------------------------------------------------------------
    def _launch(self, run: _PodRun, name: str) -> None:
        container = run.containers[name]
        log = container.log_path.open("ab")
        run.logs.append(log)
        container.proc = subprocess.Popen(
            [*self.isolation, "--", "sh", "-c", run.scripts[name], "sh", *container.argv],
            env=run.env[name],
            cwd="/",
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if not container.started_at:
            self.history.append(container)
        container.started_at = _now()
        container.exit_code = None
        container.ready = False

    def _reap(self, run: _PodRun) -> None:
        for name, container in run.containers.items():
            if container.proc is None:
                continue
            code = container.proc.poll()
            if code is None:
                container.ready = self._ready(run, name)
                continue
            if container.exit_code is None:
                container.exit_code, container.finished_at = code, _now()
                container.ready = False
            again = run.restart_policy == "Always" or (
                run.restart_policy == "OnFailure" and code != 0
            )
            if again and run.stop_deadline is None:
                container.restarts += 1
                self._launch(run, name)

    def _ready(self, run: _PodRun, name: str) -> bool:
        probe = run.specs[name].get("readinessProbe")
        if not probe:
            return True
        get = probe.get("httpGet")
        if get is None:
            return True  # only httpGet probes are run; any other passes
        port = get["port"]
        if isinstance(port, str):
            ports = {p.get("name"): p["containerPort"] for p in run.specs[name].get("ports", [])}
            port = ports.get(port, port)
        url = f"http://{run.ip}:{port}{get.get('path', '/')}"
        try:
            with urllib.request.urlopen(url, timeout=1) as reply:
                return bool(200 <= reply.status < 400)
        except OSError:
            return False

    def _signal(self, run: _PodRun, signum: int) -> None:
        for container in run.containers.values():
            if container.proc is not None and container.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(container.proc.pid, signum)

    def _kill(self, run: _PodRun, grace_s: float) -> None:
        self._signal(run, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for container in run.containers.values():
            if container.proc is None:
                continue
            try:
                container.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(container.proc.pid, signal.SIGKILL)
                container.proc.wait()
        for log in run.logs:
            log.close()

    def _terminate(self, pod: dict[str, Any], run: _PodRun | None) -> None:
        """A pod being deleted: SIGTERM, wait out its grace period, then remove it."""
        if run is not None:
            if run.stop_deadline is None:
                grace_s = pod["metadata"].get("deletionGracePeriodSeconds") or 0
                run.stop_deadline = time.monotonic() + grace_s
                self._signal(run, signal.SIGTERM)
            alive = any(
                c.proc is not None and c.proc.poll() is None for c in run.containers.values()
            )
            if alive and time.monotonic() < run.stop_deadline:
                return
            self._kill(run, 0.0)
            self.pods.pop(run.uid, None)
        meta = pod["metadata"]
        with contextlib.suppress(self._api_exception):
            self.core.delete_namespaced_pod(
                meta["name"],
                meta["namespace"],
                body={"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}},
            )

    # ---- status --------------------------------------------------------------------------
    def _post_status(self, run: _PodRun) -> None:
        status = self._status(run)
        if status == run.posted:
            return
        body = {"status": {**status, "conditions": self._conditions(status)}}
        self.core.patch_namespaced_pod_status(run.name, run.namespace, body)
        run.posted = status

    def _status(self, run: _PodRun) -> dict[str, Any]:
        statuses = [self._container_status(run, c) for c in run.containers.values()]
        phase = "Running"
        if run.waiting:
            phase = "Pending"
        else:
            done = [c for c in run.containers.values() if c.proc and c.proc.poll() is not None]
            if len(done) == len(run.containers) and run.restart_policy != "Always":
                failed = any(c.exit_code for c in done)
                if not failed or run.restart_policy == "Never":
                    phase = "Failed" if failed else "Succeeded"
        return {
            "phase": phase,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": run.ip,
            "podIPs": [{"ip": run.ip}],
            "startTime": run.start_time,
            "message": run.waiting or None,
            "containerStatuses": statuses,
        }

    def _container_status(self, run: _PodRun, container: ContainerRun) -> dict[str, Any]:
        state: dict[str, Any]
        running = container.proc is not None and container.proc.poll() is None
        if run.waiting or container.proc is None:
            state = {"waiting": {"reason": "ContainerCreating", "message": run.waiting}}
        elif running:
            state = {"running": {"startedAt": container.started_at}}
        else:
            state = {
                "terminated": {
                    "exitCode": container.exit_code,
                    "reason": "Completed" if container.exit_code == 0 else "Error",
                    "startedAt": container.started_at,
                    "finishedAt": container.finished_at,
                }
            }
        return {
            "name": container.name,
            "image": run.specs.get(container.name, {}).get("image", ""),
            "imageID": "",
            "containerID": f"process://{container.proc.pid}" if container.proc else None,
            "ready": running and container.ready,
            "started": running,
            "restartCount": container.restarts,
            "state": state,
        }

    def _conditions(self, status: dict[str, Any]) -> list[dict[str, str]]:
        ready = status["phase"] == "Running" and all(
            c["ready"] for c in status["containerStatuses"]
        )
        flags = {
            "PodScheduled": True,
            "Initialized": True,
            "ContainersReady": ready,
            "Ready": ready,
        }
        now = _now()
        return [
            {"type": kind, "status": str(value), "lastTransitionTime": now}
            for kind, value in flags.items()
        ]
