"""Where the in-cluster agent learns its policy and pods: watches on the Kubernetes API.

`ClusterSource` runs three list-then-watch threads with the official `kubernetes` client:
this node (its `triserve.io/policy` label names the policy), EnergyPolicies (the one named
is followed live; a label change switches, a removed label releases), and the pods with
`spec.nodeName=<node>`. Selectors are also checked client-side, so a server that ignores
them (or an emulator) gives the same answer. Every change is handed to the asyncio loop with
`call_soon_threadsafe`, so the `NodeAgent` is only ever touched from the loop's thread.
A watch that breaks is re-listed after a back-off; nothing here can stop the control tick.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from triserve.api.annotations import GROUP, POLICY_LABEL, VERSION
from triserve.api.errors import PolicyError, parse_policy_spec
from triserve.node_agent.agent import NodeAgent, PolicyRef
from triserve.node_agent.stages import pod_from_manifest, pod_on_node

log = logging.getLogger(__name__)

POLICY_PLURAL = "energypolicies"
Obj = dict[str, Any]


def _name(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


class ClusterSource:
    """Keeps a `NodeAgent`'s policy and pods in step with the cluster."""

    def __init__(
        self,
        api_client: Any,
        agent: NodeAgent,
        loop: asyncio.AbstractEventLoop,
        *,
        watch_timeout_s: float = 5.0,
        backoff_s: float = 1.0,
    ) -> None:
        """`api_client` is a `kubernetes.client.ApiClient`; `loop` runs the agent."""
        from kubernetes import client

        self.agent = agent
        self.node_name = agent.node_name
        self.loop = loop
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.watch_timeout_s = watch_timeout_s
        self.backoff_s = backoff_s
        self.node_labels: dict[str, str] | None = None
        self.policies: dict[str, Obj] = {}
        self.pods: dict[tuple[str, str], Obj] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.synced = threading.Event()
        self._synced_kinds: set[str] = set()

    # ---- threads ------------------------------------------------------------------------
    def start(self) -> None:
        """Start the three watch threads (daemons)."""
        node_sel = f"metadata.name={self.node_name}"
        pod_sel = f"spec.nodeName={self.node_name}"
        watches: list[tuple[str, Callable[..., Any], dict[str, Any]]] = [
            ("node", self.core.list_node, {"field_selector": node_sel}),
            (
                "policy",
                self.custom.list_cluster_custom_object,
                {"group": GROUP, "version": VERSION, "plural": POLICY_PLURAL},
            ),
            ("pod", self.core.list_pod_for_all_namespaces, {"field_selector": pod_sel}),
        ]
        for kind, fn, kwargs in watches:
            thread = threading.Thread(
                target=self._run,
                args=(kind, fn, kwargs),
                name=f"triserve-watch-{kind}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Ask the threads to stop (they notice within one watch timeout)."""
        self._stop.set()

    def _run(self, kind: str, fn: Callable[..., Any], kwargs: dict[str, Any]) -> None:
        from kubernetes import watch as _watch

        watch: Any = _watch
        while not self._stop.is_set():
            try:
                raw = fn(**kwargs, _preload_content=False)
                items = json.loads(raw.data).get("items") or []
                self._post(self._replace, kind, items)
                stream = watch.Watch().stream(
                    fn, **kwargs, _request_timeout=(3.0, self.watch_timeout_s)
                )
                for event in stream:
                    if self._stop.is_set():
                        return
                    obj = event.get("raw_object")
                    if isinstance(obj, dict):
                        self._post(self._event, kind, str(event.get("type")), obj)
            except Exception as exc:  # a broken watch must never end the thread
                if not _is_timeout(exc):
                    self._post(self.agent.error, "watch", f"{kind} watch: {exc}")
                self._stop.wait(self.backoff_s if not _is_timeout(exc) else 0.0)

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: the agent is shutting down
            self._stop.set()

    # ---- state (on the loop thread) -----------------------------------------------------
    def _replace(self, kind: str, items: list[Obj]) -> None:
        if kind == "node":
            mine = [o for o in items if _name(o)[1] == self.node_name]
            self.node_labels = (
                dict((mine[0].get("metadata") or {}).get("labels") or {}) if mine else None
            )
        elif kind == "policy":
            self.policies = {_name(o)[1]: o for o in items}
        else:
            self.pods = {_name(o): o for o in items if pod_on_node(o, self.node_name)}
        self._synced_kinds.add(kind)
        self._apply(kind)

    def _event(self, kind: str, event_type: str, obj: Obj) -> None:
        deleted = event_type == "DELETED"
        if kind == "node":
            if _name(obj)[1] != self.node_name:
                return
            self.node_labels = (
                None if deleted else dict((obj.get("metadata") or {}).get("labels") or {})
            )
        elif kind == "policy":
            name = _name(obj)[1]
            if deleted:
                self.policies.pop(name, None)
            else:
                self.policies[name] = obj
        else:
            key = _name(obj)
            if deleted or not pod_on_node(obj, self.node_name):
                self.pods.pop(key, None)
            else:
                self.pods[key] = obj
        self._apply(kind)

    def _apply(self, kind: str) -> None:
        if kind == "pod":
            resolved = (pod_from_manifest(p, self.agent.error) for p in self.pods.values())
            self.agent.set_pods([p for p in resolved if p is not None])
        else:
            self.agent.set_policy(self.current_policy())
        if {"node", "policy", "pod"} <= self._synced_kinds:
            self.synced.set()

    def current_policy(self) -> PolicyRef | None:
        """The policy this node's label names, validated; None when unlabelled or unusable."""
        name = (self.node_labels or {}).get(POLICY_LABEL)
        if not name:
            return None
        obj = self.policies.get(name)
        if obj is None:
            # Released until it exists: following a policy we cannot read is not safe.
            return None
        try:
            spec = parse_policy_spec(obj.get("spec"))
        except PolicyError as exc:
            self.agent.error("policy", f"EnergyPolicy {name}: {exc}; GPUs left at defaults")
            return None
        generation = int((obj.get("metadata") or {}).get("generation") or 0)
        return PolicyRef(name=name, spec=spec, generation=generation)


def _is_timeout(exc: Exception) -> bool:
    """A read timeout just ends one watch round; anything else is worth a log line."""
    return "timed out" in str(exc).lower() or type(exc).__name__ in {
        "ReadTimeoutError",
        "ProtocolError",
    }
