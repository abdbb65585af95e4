"""`triserve release`: undo what the operator left in the cluster, for `helm uninstall`.

The chart runs this as a post-delete hook Job, after Helm has deleted the operator and the
agents (whose shutdown already restored default clocks): it removes the `triserve.io/policy`
label from every node and the operator's `triserve.io/release-gpus` finalizer from every
EnergyPolicy. Without it, a policy deleted after the operator is gone would wait forever on a
finalizer nobody removes, and nodes would keep a label nothing acts on. The policies themselves
and the CRDs stay (Helm never deletes CRDs). Run it by hand the same way after uninstalling
with `--no-hooks`:

    triserve release --kubeconfig ~/.kube/config
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from triserve.api.annotations import GROUP, POLICY_FINALIZER, POLICY_LABEL, VERSION
from triserve.kubeconfig import api_client

POLICY_PLURAL = "energypolicies"
CONFLICT_RETRIES = 5


def unlabel_nodes(api: Any) -> list[str]:
    """Remove the policy label from every node carrying it; returns their names."""
    from kubernetes import client

    core: Any = client.CoreV1Api(api)
    names = [str(n.metadata.name) for n in core.list_node(label_selector=POLICY_LABEL).items]
    for name in names:
        core.patch_node(name, {"metadata": {"labels": {POLICY_LABEL: None}}})
    return names


def drop_finalizers(api: Any) -> list[str]:
    """Remove the operator's finalizer from every EnergyPolicy holding it; returns their names.

    The patch carries the resourceVersion it was computed from, so a finalizer someone else
    added meanwhile is never dropped: a conflict (409) re-reads and tries again.
    """
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    custom: Any = client.CustomObjectsApi(api)
    released = []
    for _ in range(CONFLICT_RETRIES):
        conflicts = 0
        listing = custom.list_cluster_custom_object(GROUP, VERSION, POLICY_PLURAL)
        for policy in listing.get("items") or []:
            meta = policy.get("metadata") or {}
            finalizers = list(meta.get("finalizers") or [])
            if POLICY_FINALIZER not in finalizers:
                continue
            patch = {
                "metadata": {
                    "resourceVersion": meta.get("resourceVersion"),
                    "finalizers": [f for f in finalizers if f != POLICY_FINALIZER],
                }
            }
            try:
                custom.patch_cluster_custom_object(
                    GROUP, VERSION, POLICY_PLURAL, meta["name"], patch
                )
            except ApiException as exc:
                if exc.status == 409:
                    conflicts += 1
                    continue
                if exc.status == 404:  # deleted meanwhile: nothing left to release
                    continue
                raise
            released.append(str(meta["name"]))
        if not conflicts:
            break
    return released


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `triserve release`; 1 when the API refuses, 2 on bad flags."""
    parser = argparse.ArgumentParser(
        prog="triserve release", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument(
        "--kubeconfig", help="kubeconfig file (default: in-cluster, then KUBECONFIG)"
    )
    args = parser.parse_args(argv)
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config import ConfigException

    try:
        api = api_client(args.kubeconfig)
        nodes = unlabel_nodes(api)
        policies = drop_finalizers(api)
    except ConfigException as exc:
        print(f"triserve release: no cluster credentials: {exc}", file=sys.stderr)
        return 2
    except ApiException as exc:
        print(
            f"triserve release: the API server refused: HTTP {exc.status} {exc.reason}: "
            f"{str(exc.body)[:300]}",
            file=sys.stderr,
        )
        return 1
    print(
        f"triserve release: removed the {POLICY_LABEL} label from {len(nodes)} nodes and the "
        f"{POLICY_FINALIZER} finalizer from {len(policies)} EnergyPolicies"
    )
    return 0
