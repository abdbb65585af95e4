"""The operator's own Kubernetes writes: node labels, events, and release at uninstall.

kopf patches the object a handler runs for; placement must also patch *other* objects (every
node a policy change moves), and events on cluster-scoped EnergyPolicies must be written the
way `kubectl describe` looks for them. `KubeClient` does both with the official `kubernetes`
client (its blocking calls run in a worker thread), configured from the same
`kopf.ConnectionInfo` that kopf logged in with: `connect()` is called from the operator's login
handler, so one login (in-cluster ServiceAccount, or a kubeconfig through the client's standard
loader, exec credential plugins included) serves kopf and these calls alike, and a re-login
after a 401 refreshes both.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: Where events about cluster-scoped objects go. `kubectl describe` finds an event by the
#: involved object's kind, name, uid and *empty* namespace, in any namespace; `default` is the
#: namespace Kubernetes itself uses for events about nodes.
CLUSTER_EVENT_NAMESPACE = "default"
COMPONENT = "triserve-operator"
MAX_MESSAGE_CHARS = 1024

log = logging.getLogger(__name__)


class KubeError(Exception):
    """A Kubernetes API call failed; the message names the object and the HTTP status."""


def _data_to_file(data: str | bytes, directory: Path, name: str) -> str:
    """Kopf gives certificate data base64-encoded or raw; the client wants files."""
    raw = data.encode() if isinstance(data, str) else data
    with contextlib.suppress(ValueError):
        raw = base64.b64decode(raw, validate=True)
    path = directory / name
    path.write_bytes(raw)
    os.chmod(path, 0o600)
    return str(path)


def client_configuration(info: Any, directory: Path) -> Any:
    """A `kubernetes.client.Configuration` equivalent to a `kopf.ConnectionInfo`."""
    from kubernetes import client

    config = client.Configuration()
    config.host = str(info.server).rstrip("/")
    config.verify_ssl = not info.insecure
    if info.ca_path or info.ca_data:
        config.ssl_ca_cert = info.ca_path or _data_to_file(info.ca_data, directory, "ca.crt")
    if info.certificate_path or info.certificate_data:
        config.cert_file = info.certificate_path or _data_to_file(
            info.certificate_data, directory, "tls.crt"
        )
    if info.private_key_path or info.private_key_data:
        config.key_file = info.private_key_path or _data_to_file(
            info.private_key_data, directory, "tls.key"
        )
    if info.token:
        # "authorization" is the key older clients read and newer ones accept as an alias.
        config.api_key = {"authorization": f"{info.scheme or 'Bearer'} {info.token}"}
    if info.username and info.password:
        config.username, config.password = info.username, info.password
    return config


def _now() -> datetime.datetime:
    return datetime.datetime.now(tz=datetime.UTC)


def event_body(ref: Mapping[str, Any], reason: str, message: str, *, warning: bool) -> Any:
    """A core/v1 Event about `ref` (apiVersion, kind, metadata.name/uid[/namespace]).

    For a cluster-scoped object the involved object has no namespace and the event lives in
    `CLUSTER_EVENT_NAMESPACE`, which is where `kubectl describe` finds it.
    """
    from kubernetes import client

    meta = ref.get("metadata") or {}
    namespace = meta.get("namespace") or None
    now = _now()
    return client.CoreV1Event(
        metadata=client.V1ObjectMeta(
            generate_name=f"{meta.get('name', 'object')}.",
            namespace=namespace or CLUSTER_EVENT_NAMESPACE,
        ),
        involved_object=client.V1ObjectReference(
            api_version=ref.get("apiVersion"),
            kind=ref.get("kind"),
            name=meta.get("name"),
            uid=meta.get("uid"),
            namespace=namespace,
        ),
        reason=reason,
        message=message[:MAX_MESSAGE_CHARS],
        type="Warning" if warning else "Normal",
        source=client.V1EventSource(component=COMPONENT),
        reporting_component=COMPONENT,
        first_timestamp=now,
        last_timestamp=now,
        count=1,
    )


class KubeClient:
    """Node patches and events through one `kubernetes` ApiClient, rebuilt on every login."""

    def __init__(self) -> None:
        self._api: Any = None
        self._tmp = tempfile.TemporaryDirectory(prefix="triserve-operator-")
        self.patches = 0  #: node patches sent (the benchmark reports them)

    async def connect(self, info: Any) -> None:
        """(Re)configure from a `kopf.ConnectionInfo`: server, token or basic auth, TLS."""
        from kubernetes import client

        await self.close()
        self._api = client.ApiClient(client_configuration(info, Path(self._tmp.name)))

    async def close(self) -> None:
        """Release the connection pool (at operator cleanup)."""
        api, self._api = self._api, None
        if api is not None:
            await asyncio.to_thread(api.close)

    def _core(self) -> Any:
        from kubernetes import client

        if self._api is None:
            raise KubeError("not logged in to the cluster yet; the kopf login handler has not run")
        return client.CoreV1Api(self._api)

    async def patch_node(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch one node's metadata; returns the node as the API server stored it."""
        from kubernetes.client.exceptions import ApiException

        core = self._core()
        self.patches += 1
        try:
            node = await asyncio.to_thread(core.patch_node, name, patch)
        except ApiException as exc:
            raise KubeError(f"PATCH node {name}: HTTP {exc.status}: {str(exc.body)[:300]}") from exc
        result: dict[str, Any] = self._api.sanitize_for_serialization(node)
        return result

    async def post_event(
        self, ref: Mapping[str, Any], reason: str, message: str, *, warning: bool = False
    ) -> None:
        """Record an event on `ref`; a failure is not worth failing a handler for."""
        from kubernetes.client.exceptions import ApiException

        body = event_body(ref, reason, message, warning=warning)
        try:
            await asyncio.to_thread(
                self._core().create_namespaced_event, body.metadata.namespace, body
            )
        except (ApiException, KubeError) as exc:
            log.warning(f"Could not record event {reason} on {body.involved_object.name}: {exc}")
