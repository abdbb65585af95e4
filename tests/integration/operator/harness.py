"""Test harness: the real kopf operator, in-process, against kmock's Kubernetes emulator.

`Cluster` wraps a `ClusterEmulator` (kmock's emulator plus the API-server behaviour the
operator relies on: uid, creationTimestamp, generation bumps on spec changes, generateName
for events) served on 127.0.0.1, with the CRDs from `crds/` registered. `running_operator()`
starts the operator as `triserve operator` does — `triserve.operator.main.registered()` then
`main.operate()` — logged in to the emulator, and stops it on exit. Helpers create nodes,
policies and agent reports over real HTTP, so every change reaches kopf through the watch
streams as in a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import itertools
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kmock
import kopf
import yaml

from tests.support.eventually import eventually as eventually  # the tests import it from here
from triserve.api.annotations import GPU_RESOURCE, POLICY_LABEL
from triserve.operator import main as operator_main
from triserve.operator.reconciler import Placer
from triserve.operator.settings import OperatorSettings

CRDS = Path(__file__).resolve().parents[3] / "crds"
GROUP_VERSION = "triserve.io/v1alpha1"
_BASE_TIME = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)


def _object_key(request: kmock.Request) -> tuple[kmock.resource, str | None, str] | None:
    """The emulator's key for the object a request names; None for list/create requests."""
    if request.resource is None or request.name is None:
        return None
    return (request.resource, request.namespace, request.name)


class ClusterEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with the metadata an API server fills in on create and update."""

    _counter = itertools.count(1)

    async def _handle(self, request: kmock.Request) -> Any:
        data = request.data
        writes = (kmock.action.CREATE, kmock.action.UPDATE)
        if request.resource is not None and request.action in writes:
            version = str(next(self._counter))
            if isinstance(data, list):  # a JSON patch: kopf tests resourceVersion in it
                self._test_versions(request, data)
                data.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})
            elif isinstance(data, dict):
                self._fill(request, data.setdefault("metadata", {}), "spec" in data)
                data["metadata"]["resourceVersion"] = version
        return await super()._handle(request)

    def _test_versions(self, request: kmock.Request, ops: list[dict[str, Any]]) -> None:
        """A failed `test` op is 422 Unprocessable in Kubernetes (kopf relies on that)."""
        key = _object_key(request)
        if key is None or key not in self.objects or self.objects[key].deleted:
            return
        current = self.objects[key].get("metadata", {}).get("resourceVersion")
        for op in ops:
            path = op.get("path")
            if (
                op.get("op") == "test"
                and path == "/metadata/resourceVersion"
                and op.get("value") != current
            ):
                raise kmock.KubernetesError(
                    status=422, reason="Invalid", message="resourceVersion test failed"
                )

    def _fill(self, request: kmock.Request, meta: dict[str, Any], has_spec: bool) -> None:
        if request.action == kmock.action.CREATE:
            n = next(self._counter)
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = f"{meta['generateName']}{n:06d}"
            meta.setdefault("uid", str(uuid.uuid4()))
            created = _BASE_TIME + datetime.timedelta(seconds=n)
            meta.setdefault("creationTimestamp", created.strftime("%Y-%m-%dT%H:%M:%SZ"))
            meta.setdefault("generation", 1)
        elif request.subresource is None and has_spec:
            key = _object_key(request)
            if key is not None and key in self.objects and not self.objects[key].deleted:
                current = self.objects[key].get("metadata", {}).get("generation") or 1
                meta["generation"] = current + 1


@dataclasses.dataclass
class Cluster:
    """A running emulator with helpers to act as users, nodes and agents."""

    k8s: ClusterEmulator
    server: kmock.Server

    @property
    def url(self) -> str:
        """The emulator's base URL (loopback)."""
        return str(self.server.url).rstrip("/")

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        """One raw API call; raises on HTTP errors."""
        headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
        async with self.server.client.request(
            method, self.url + path, json=body, headers=headers
        ) as response:
            text = await response.text()
            assert response.status < 400, f"{method} {path}: {response.status} {text}"
            return await response.json(content_type=None) if text else None

    # --- nodes -----------------------------------------------------------------------------

    async def add_node(
        self, name: str, labels: dict[str, str] | None = None, gpus: int = 8
    ) -> None:
        """Create a Node; `gpus=0` makes it a CPU node."""
        resources = {GPU_RESOURCE: str(gpus)} if gpus else {}
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": dict(labels or {})},
            "status": {"capacity": resources, "allocatable": resources},
        }
        await self.request("POST", "/api/v1/nodes", node)

    async def patch_node(self, name: str, labels: dict[str, str | None]) -> None:
        """Change a node's labels as a user would (None removes)."""
        await self.request("PATCH", f"/api/v1/nodes/{name}", {"metadata": {"labels": labels}})

    async def delete_node(self, name: str) -> None:
        """Delete a Node."""
        await self.request("DELETE", f"/api/v1/nodes/{name}")

    def node(self, name: str) -> dict[str, Any] | None:
        """The stored Node, or None once deleted."""
        key = (kmock.resource("", "v1", "nodes"), None, name)
        if key not in self.k8s.objects or self.k8s.objects[key].deleted:
            return None
        return dict(self.k8s.objects[key].raw)

    def node_policy(self, name: str) -> str | None:
        """The node's `triserve.io/policy` label."""
        node = self.node(name) or {}
        return (node.get("metadata", {}).get("labels") or {}).get(POLICY_LABEL)

    # --- policies --------------------------------------------------------------------------

    async def apply_policy(self, name: str, spec: dict[str, Any]) -> None:
        """Create an EnergyPolicy."""
        body = {"apiVersion": GROUP_VERSION, "kind": "EnergyPolicy", "metadata": {"name": name}}
        await self.request(
            "POST", "/apis/triserve.io/v1alpha1/energypolicies", {**body, "spec": spec}
        )

    async def patch_policy(self, name: str, spec: dict[str, Any]) -> None:
        """Merge-patch a policy's spec."""
        path = f"/apis/triserve.io/v1alpha1/energypolicies/{name}"
        await self.request("PATCH", path, {"spec": spec})

    async def delete_policy(self, name: str) -> None:
        """Delete a policy (the emulator keeps it while finalizers remain)."""
        await self.request("DELETE", f"/apis/triserve.io/v1alpha1/energypolicies/{name}")

    def policy(self, name: str) -> dict[str, Any] | None:
        """The stored policy, or None once gone."""
        key = (kmock.resource("triserve.io", "v1alpha1", "energypolicies"), None, name)
        if key not in self.k8s.objects or self.k8s.objects[key].deleted:
            return None
        return dict(self.k8s.objects[key].raw)

    def condition(self, policy: str, type_: str) -> dict[str, Any]:
        """One condition of a policy's status ({} if absent)."""
        for cond in ((self.policy(policy) or {}).get("status") or {}).get("conditions") or []:
            if cond.get("type") == type_:
                return dict(cond)
        return {}

    # --- agent reports ---------------------------------------------------------------------

    async def report(self, node: str, policy: str, phase: str = "Managing", **status: Any) -> None:
        """Write a NodeEnergyReport as the node's agent would (create, then status)."""
        path = "/apis/triserve.io/v1alpha1/nodeenergyreports"
        key = (kmock.resource("triserve.io", "v1alpha1", "nodeenergyreports"), None, node)
        if key not in self.k8s.objects or self.k8s.objects[key].deleted:
            body: dict[str, Any] = {"apiVersion": GROUP_VERSION, "kind": "NodeEnergyReport"}
            body |= {"metadata": {"name": node}, "spec": {"nodeName": node}}
            await self.request("POST", path, body)
        now = datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        full = {"policy": policy, "phase": phase, "lastReportTime": now, **status}
        await self.request("PATCH", f"{path}/{node}/status", {"status": full})

    async def delete_report(self, node: str) -> None:
        """Delete a node's report (as when the node goes away)."""
        await self.request("DELETE", f"/apis/triserve.io/v1alpha1/nodeenergyreports/{node}")

    # --- observation -----------------------------------------------------------------------

    def events(self, reason: str | None = None) -> list[dict[str, Any]]:
        """Kubernetes events posted so far (optionally of one reason)."""
        found = []
        for (resource, _, _), obj in self.k8s.objects.items():
            if resource.plural == "events" and not obj.deleted:
                raw = dict(obj.raw)
                if reason is None or raw.get("reason") == reason:
                    found.append(raw)
        return found

    def patches(self, path_part: str = "") -> list[kmock.Request]:
        """PATCH requests received whose path contains `path_part`."""
        return [
            r
            for r in list(self.k8s)
            if r.method == kmock.method.PATCH and path_part in str(r.url.path)
        ]


def _register_crds(k8s: kmock.KubernetesEmulator) -> None:
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        names = crd["spec"]["names"]
        for version in crd["spec"]["versions"]:
            key = f"{crd['spec']['group']}/{version['name']}/{names['plural']}"
            k8s.resources[key] = kmock.ResourceInfo(
                kind=names["kind"],
                singular=names["singular"],
                namespaced=crd["spec"]["scope"] == "Namespaced",
                shortnames=set(names.get("shortNames", [])),
                categories=set(names.get("categories", [])),
                subresources=set(version.get("subresources", {})),
                verbs={"create", "delete", "get", "list", "patch", "update", "watch"},
            )


@contextlib.asynccontextmanager
async def emulated_cluster() -> AsyncIterator[Cluster]:
    """An emulated API server on 127.0.0.1 with built-in resources and triserve's CRDs."""
    async with ClusterEmulator() as k8s, kmock.Server(k8s, host="127.0.0.1") as server:
        k8s.resources.load_bundled()
        _register_crds(k8s)
        yield Cluster(k8s=k8s, server=server)


@contextlib.asynccontextmanager
async def running_operator(cluster: Cluster, settings: OperatorSettings) -> AsyncIterator[Placer]:
    """Run the real operator (fresh kopf registry) until the block exits."""
    url = cluster.url

    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=url)

    operator = operator_main.registered(dataclasses.replace(settings, login=login))
    stop = asyncio.Event()
    task = asyncio.create_task(operator_main.operate(operator.registry, stop_flag=stop))
    try:
        yield operator.placer
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=15)
