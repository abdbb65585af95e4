"""Where the in-cluster agent learns its policy and pods: watches on the Kubernetes API.

`ClusterSource` runs three list-then-watch threads with the official `kubernetes` client:
this node (its `triserve.io/policy` label names the policy, its `triserve.io/power-caps`
annotation carries the power-budget caps of its GPUs), EnergyPolicies (the one named
is followed live; a label change switches, a removed label releases), and the pods with
`spec.nodeName=<node>`. Selectors are also checked client-side, so a server that ignores
them (or an emulator) gives the same answer. Every change is handed to the asyncio loop with
`call_soon_threadsafe`: these threads never call the `NodeAgent` themselves (the tick runs on
the loop's thread; the agent's lock covers the exporter and watchdog threads).

Each thread lists once, then watches from the list's `resourceVersion` with a server-side
`timeoutSeconds` (about five minutes, jittered so a thousand agents do not reconnect in step)
and bookmarks, so an idle agent re-opens three watches every few minutes and lists again only
when the server answers 410 Gone (its history no longer reaches our version). This follows the
"Efficient detection of changes" section of the Kubernetes API Concepts page
(kubernetes.io, docs, "API Concepts").
A watch that breaks is retried after a jittered exponential back-off (`triserve.backoff`);
nothing here can stop the control tick.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from triserve.api.annotations import GROUP, POLICY_LABEL, VERSION
from triserve.api.errors import PolicyError, parse_policy_spec
from triserve.api.powercaps import POWER_CAPS_ANNOTATION, PowerCapsError, parse_power_caps
from triserve.backoff import Backoff, jittered
from triserve.node_agent.agent import NodeAgent, PolicyRef
from triserve.node_agent.stages import pod_from_manifest, pod_on_node

log = logging.getLogger(__name__)

POLICY_PLURAL = "energypolicies"
Obj = dict[str, Any]

#: Server-side watch length; each watch draws uniformly from ±10 % of it.
WATCH_TIMEOUT_S = 300.0
#: Back-off after a failed list or watch: doubles from the first value up to the cap.
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
#: A watch shorter than this is followed by a back-off pause instead of an immediate re-watch.
MIN_WATCH_S = 1.0
#: The client gives up on a silent connection this long after the server should have closed it.
READ_GRACE_S = 30.0


class Gone(Exception):
    """The server no longer has our resourceVersion (HTTP 410): list again."""


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
        watch_timeout_s: float = WATCH_TIMEOUT_S,
        backoff_s: float = BACKOFF_FIRST_S,
        backoff_max_s: float = BACKOFF_MAX_S,
    ) -> None:
        """`api_client` is a `kubernetes.client.ApiClient`; `loop` runs the agent.

        `watch_timeout_s` is the server-side length of one watch; `backoff_s` the first
        wait after a failure, doubling up to `backoff_max_s`.
        """
        from kubernetes import client

        self.agent = agent
        self.node_name = agent.node_name
        self.loop = loop
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.watch_timeout_s = watch_timeout_s
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.lists = 0  #: LIST requests sent (one per kind, plus one per 410 Gone)
        self.watches = 0  #: WATCH requests sent
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
        """Ask the threads to stop.

        A watch in progress notices at its next event or timeout; the threads are daemons, so
        they never hold up the agent's exit.
        """
        self._stop.set()

    def _run(self, kind: str, fn: Callable[..., Any], kwargs: dict[str, Any]) -> None:
        version: str | None = None  # None: list before watching
        backoff = Backoff(self.backoff_s, self.backoff_max_s)
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._list(kind, fn, kwargs)
                started_s = time.monotonic()
                version = self._watch(kind, fn, kwargs, version)
                backoff.succeeded()
                if time.monotonic() - started_s < MIN_WATCH_S:
                    # A server that ends every watch at once must not turn this into a busy loop.
                    self._stop.wait(jittered(self.backoff_s, 0.5))
            except Gone:
                log.info(
                    "%s watch: resourceVersion %s expired (410 Gone); listing again", kind, version
                )
                version = None
            except Exception as exc:  # a broken watch must never end the thread
                if self._stop.is_set():
                    return
                self._post(self.agent.error, "watch", f"{kind} watch: {exc}")
                self._stop.wait(jittered(backoff.failed(0.0, str(exc)), 0.5))

    def _list(self, kind: str, fn: Callable[..., Any], kwargs: dict[str, Any]) -> str:
        """List every object and replace the state; returns the list's resourceVersion."""
        self.lists += 1
        raw = fn(**kwargs, _preload_content=False)
        body = json.loads(raw.data)
        self._post(self._replace, kind, body.get("items") or [])
        return str((body.get("metadata") or {}).get("resourceVersion") or "")

    def _watch(
        self, kind: str, fn: Callable[..., Any], kwargs: dict[str, Any], version: str
    ) -> str:
        """One watch from `version` until the server ends it; returns the last version seen."""
        from kubernetes.client.exceptions import ApiException

        timeout_s = jittered(self.watch_timeout_s)
        self.watches += 1
        try:
            response = fn(
                **kwargs,
                watch=True,
                resource_version=version,
                allow_watch_bookmarks=True,
                timeout_seconds=max(1, round(timeout_s)),
                _preload_content=False,
                _request_timeout=(10.0, timeout_s + min(READ_GRACE_S, timeout_s)),
            )
        except ApiException as exc:
            if exc.status == 410:
                raise Gone() from exc
            raise
        ended = False  # the server ended the watch: the connection can be reused
        try:
            if self._stop.is_set():  # stop() ran while this watch was being opened
                return version
            for event in _events(response):
                if self._stop.is_set():
                    break
                obj = event.get("object")
                if not isinstance(obj, dict):
                    continue
                event_type = str(event.get("type"))
                if event_type == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone()
                    raise RuntimeError(f"watch error: {obj.get('message') or obj}")
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if event_type != "BOOKMARK":  # a bookmark only moves the version on
                    self._post(self._event, kind, event_type, obj)
            else:
                ended = True
        finally:
            if ended:
                response.release_conn()
            else:  # stopped or broken: close the socket so the server ends its side too
                response.close()
        return version

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
            self._power_caps(mine[0] if mine else None)
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
            self._power_caps(None if deleted else obj)
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

    def _power_caps(self, node: Obj | None) -> None:
        """Hand the operator's power caps on this Node to the agent (None: none usable)."""
        annotations = ((node or {}).get("metadata") or {}).get("annotations") or {}
        text = annotations.get(POWER_CAPS_ANNOTATION)
        caps = None
        if text is not None:
            try:
                caps = parse_power_caps(str(text))
            except PowerCapsError as exc:
                self.agent.error("policy", f"{exc}; GPUs held at their minimum power limit")
        self.agent.set_power_caps(caps)

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


def _events(response: Any) -> Iterator[Obj]:
    """The JSON watch events of a streamed HTTP response (one JSON object per line)."""
    pending = b""
    for chunk in response.stream(amt=None, decode_content=True):
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            if line.strip():
                yield json.loads(line)
    if pending.strip():
        yield json.loads(pending)
