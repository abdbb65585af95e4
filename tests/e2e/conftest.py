"""End-to-end fixtures: a real (test) cluster from the current kube context.

Opt-in: without `--with-e2e` every test here is skipped with the reason. With it, the
current context must look like a disposable test cluster (its name contains kind, minikube,
k3d, k3s, test, …); anything else is refused, so production is never touched.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.eventually import eventually_sync

TEST_CLUSTER_MARKERS = ("kind", "minikube", "k3d", "k3s", "test", "e2e", "docker-desktop")
CRDS = Path(__file__).resolve().parents[2] / "crds"
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the e2e tests unless `--with-e2e` was given."""
    if config.getoption("--with-e2e"):
        return
    skip = pytest.mark.skip(reason="needs a real test cluster: run with --with-e2e")
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)


def checked_test_context() -> str:
    """The current kube context, refused unless it names a test cluster."""
    from kubernetes import config

    try:
        _, active = config.list_kube_config_contexts()
    except config.ConfigException as exc:
        pytest.exit(f"--with-e2e needs a kubeconfig with a test-cluster context: {exc}", 2)
    name = str(active["name"])
    if not any(marker in name.lower() for marker in TEST_CLUSTER_MARKERS):
        pytest.exit(
            f"refusing to run e2e tests against kube context {name!r}: its name contains none "
            f"of {', '.join(TEST_CLUSTER_MARKERS)}. Switch to a test cluster "
            "(kubectl config use-context kind-…) and run again.",
            returncode=2,
        )
    return name


def _established(extensions: Any, name: str) -> bool:
    crd = extensions.read_custom_resource_definition(name)
    conditions = (crd.status.conditions if crd.status else None) or []
    return any(c.type == "Established" and c.status == "True" for c in conditions)


@pytest.fixture(scope="session")
def kube() -> Any:
    """A kubernetes ApiClient for a verified test context, with triserve's CRDs installed."""
    from kubernetes import client, config

    context = checked_test_context()
    config.load_kube_config(context=context)
    api = client.ApiClient()
    extensions = client.ApiextensionsV1Api(api)
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        name = crd["metadata"]["name"]
        try:
            extensions.create_custom_resource_definition(crd)
        except client.ApiException as exc:
            if exc.status != 409:
                raise
            current = extensions.read_custom_resource_definition(name).metadata
            assert current is not None, f"CRD {name} read back without metadata"
            crd["metadata"]["resourceVersion"] = current.resource_version
            extensions.replace_custom_resource_definition(name, crd)
    for path in sorted(CRDS.glob("*.yaml")):
        name = yaml.safe_load(path.read_text())["metadata"]["name"]
        established = functools.partial(_established, extensions, name)
        eventually_sync(established, f"CRD {name} Established", 60, poll_s=0.5)
    return api
