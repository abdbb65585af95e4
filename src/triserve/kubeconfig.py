"""The one way triserve's processes log in to Kubernetes: the client's standard loaders.

In a cluster the pod's ServiceAccount; elsewhere the kubeconfig (`--kubeconfig`, else the
default one), with exec credential plugins (EKS, GKE, AKS) as the client supports them.
Used by the agent (`triserve agent`) and the operator's release command; both may import it,
though they never import each other.
"""

from __future__ import annotations

from typing import Any


def api_client(kubeconfig: str | None) -> Any:
    """An `ApiClient` from `kubeconfig`, else in-cluster config, else the default kubeconfig.

    Raises `kubernetes.config.ConfigException` when none can be loaded.
    """
    from kubernetes import client
    from kubernetes import config as _config

    config: Any = _config  # the client's loaders are untyped
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig)
    else:
        try:
            config.load_incluster_config()
        except _config.ConfigException:
            config.load_kube_config()
    return client.ApiClient()
