"""triserve: GPU energy policy for multimodal inference serving on Kubernetes.

The package is layered (docs/architecture.md): `api`, `sim`, `gpu` and `control` are pure
libraries; `node_agent` and `operator` are the two processes, which share only `api`.
"""

from __future__ import annotations

__version__ = "0.1.0"
