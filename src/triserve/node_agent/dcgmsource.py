"""Where this node's dcgm-exporter is: a fixed URL, the host IP, or a pod found on the node.

`DcgmSource` answers "which URL, and may its series lack a host label?" for the scraper
(`triserve.node_agent.scraping`). Three ways, chosen by the agent's flags:

- `--dcgm-url`: a fixed URL. Its series must name this node in `Hostname`, because such a
  URL may be a cluster Service that load-balances over every node's exporter;
- `--dcgm-host-port` with `HOST_IP` from the downward API: the exporter's hostPort on this
  node, node-local by construction;
- `--dcgm-discover SELECTOR` (the chart's default): the running pod matching the label
  selector whose `spec.nodeName` is this node, listed with a field selector every
  `refresh_s`; also node-local by construction. Only pods of `namespace` (default
  `gpu-operator`, where NVIDIA's GPU Operator runs dcgm-exporter) are considered, so a
  tenant's pod that copies the exporter's labels in its own namespace is never scraped. The
  discovered pod's name is accepted as a host label: without `NODE_NAME` (the GPU Operator's
  default) dcgm-exporter labels its series with its own pod name.

Whatever the source, `triserve.node_agent.dcgm.parse_dcgm` still drops series that name
another host, so cross-node data cannot reach a controller.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DcgmTarget:
    """A dcgm-exporter URL and whether its series may come without a host label."""

    url: str
    node_local: bool
    #: The exporter pod's name (discovery only): a valid `Hostname` label for its series.
    pod_name: str = ""


def _host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


class DcgmSource:
    """Resolves this node's dcgm-exporter target (see the module docstring)."""

    def __init__(
        self,
        *,
        url: str | None = None,
        host_ip: str | None = None,
        host_port: int | None = None,
        discover_selector: str | None = None,
        port: int = 9400,
        api_client: Any = None,
        node_name: str = "",
        refresh_s: float = 30.0,
        namespace: str = "gpu-operator",
    ) -> None:
        """Exactly one of `url`, `host_ip` + `host_port`, `discover_selector` is used."""
        self.url = url
        self.host_ip = host_ip
        self.host_port = host_port
        self.discover_selector = discover_selector
        self.port = port
        self.api_client = api_client
        self.node_name = node_name
        self.refresh_s = refresh_s
        self.namespace = namespace
        self._found: DcgmTarget | None = None
        self._next_lookup_s = 0.0

    @property
    def enabled(self) -> bool:
        """True when any way to find dcgm-exporter is configured."""
        return bool(self.url or (self.host_ip and self.host_port) or self.discover_selector)

    async def target(self) -> DcgmTarget | None:
        """The target to scrape now (None: none found yet); lookups are rate-limited."""
        if self.url:
            return DcgmTarget(self.url, node_local=False)
        if self.host_ip and self.host_port:
            return DcgmTarget(f"http://{_host(self.host_ip)}:{self.host_port}/metrics", True)
        if not self.discover_selector or self.api_client is None:
            return None
        if time.monotonic() >= self._next_lookup_s:
            self._next_lookup_s = time.monotonic() + self.refresh_s
            self._found = await asyncio.to_thread(self._lookup)
        return self._found

    def _lookup(self) -> DcgmTarget | None:
        from kubernetes import client as k8s

        core = k8s.CoreV1Api(self.api_client)
        pods = core.list_namespaced_pod(
            self.namespace,
            field_selector=f"spec.nodeName={self.node_name}",
            label_selector=self.discover_selector,
        ).items
        for pod in pods:
            spec, status = pod.spec, pod.status
            # The field selector is checked again here, in case a server ignores it.
            if spec is None or spec.node_name != self.node_name or status is None:
                continue
            meta = pod.metadata
            if meta is not None and meta.namespace not in (None, self.namespace):
                continue  # a server that ignored the namespace: never a tenant's pod
            if status.phase == "Running" and status.pod_ip:
                url = f"http://{_host(status.pod_ip)}:{self.port}/metrics"
                log.debug("dcgm-exporter on node %s: %s", self.node_name, url)
                name = meta.name if meta is not None and meta.name else ""
                return DcgmTarget(url, node_local=True, pod_name=name)
        log.warning(
            "no running dcgm-exporter pod (%s) in namespace %s on node %s; DCGM data "
            "unavailable",
            self.discover_selector, self.namespace, self.node_name,
        )  # fmt: skip
        return None
