"""A small async Kubernetes client for the one write kopf cannot do for us: node labels.

kopf patches the object a handler runs for; placement must also patch *other* objects
(every node a policy change moves). `NodeLabeller` sends JSON merge patches to
`/api/v1/nodes/<name>` over aiohttp, with the same credentials kopf logged in with
(`connect()` is called from the operator's login handler with kopf's `ConnectionInfo`).
Used by `reconciler.Placer`; tests reach it through the real operator.
"""

from __future__ import annotations

import base64
import contextlib
import json
import ssl
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

MERGE_PATCH = "application/merge-patch+json"


class KubeError(Exception):
    """A Kubernetes API call failed; the message names the object and the HTTP status."""


def _data_to_file(data: str | bytes, directory: Path, name: str) -> str:
    """Kopf gives certificate data base64-encoded or raw; ssl wants files."""
    raw = data.encode() if isinstance(data, str) else data
    with contextlib.suppress(ValueError):
        raw = base64.b64decode(raw, validate=True)
    path = directory / name
    path.write_bytes(raw)
    return str(path)


def ssl_context(info: Any, directory: Path) -> ssl.SSLContext | bool:
    """An SSL context from a `kopf.ConnectionInfo` (or False for plain HTTP / insecure)."""
    if str(info.server).startswith("http://"):
        return False
    if info.insecure:
        return False
    cafile = info.ca_path or (
        _data_to_file(info.ca_data, directory, "ca.crt") if info.ca_data else None
    )
    context = ssl.create_default_context(cafile=cafile)
    cert = info.certificate_path or (
        _data_to_file(info.certificate_data, directory, "tls.crt")
        if info.certificate_data
        else None
    )
    key = info.private_key_path or (
        _data_to_file(info.private_key_data, directory, "tls.key")
        if info.private_key_data
        else None
    )
    if cert:
        context.load_cert_chain(cert, key)
    return context


class NodeLabeller:
    """Patches node metadata; one aiohttp session, reconnected on every kopf login."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._server = ""
        self._tmp = tempfile.TemporaryDirectory(prefix="triserve-operator-")
        self.patches = 0  #: node patches sent, for tests and the liveness of curiosity

    async def connect(self, info: Any) -> None:
        """(Re)configure from a `kopf.ConnectionInfo`: server, token or basic auth, TLS."""
        await self.close()
        headers = {"Content-Type": MERGE_PATCH, "Accept": "application/json"}
        if info.token:
            headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
        auth = None
        if info.username and info.password:
            auth = aiohttp.BasicAuth(info.username, info.password)
        connector = aiohttp.TCPConnector(ssl=ssl_context(info, Path(self._tmp.name)))
        self._session = aiohttp.ClientSession(headers=headers, auth=auth, connector=connector)
        self._server = str(info.server).rstrip("/")

    async def close(self) -> None:
        """Close the HTTP session (at operator cleanup)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def patch_node(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch one node; returns the node as the API server stored it."""
        if self._session is None:
            raise KubeError("not logged in to the cluster yet; the kopf login handler has not run")
        url = f"{self._server}/api/v1/nodes/{name}"
        async with self._session.patch(url, data=json.dumps(patch)) as response:
            self.patches += 1
            if response.status >= 400:
                text = await response.text()
                raise KubeError(f"PATCH node {name}: HTTP {response.status}: {text[:300]}")
            body: dict[str, Any] = await response.json(content_type=None)
            return body
