"""`triserve operator`: run the kopf operator (`kopf run -m triserve.operator.main`).

Called by `triserve.cli` with the remaining arguments. Operator settings travel to
`main.py` as `TRISERVE_OPERATOR_*` environment variables (kopf imports `main` in this
process); kopf's own flags (cluster-wide watching, liveness probe, peering) are passed on
to `kopf run`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from triserve.operator.settings import OperatorSettings

DEFAULT_LIVENESS = "http://0.0.0.0:8080/healthz"


def parser() -> argparse.ArgumentParser:
    """The `triserve operator` argument parser."""
    defaults = OperatorSettings()
    p = argparse.ArgumentParser(
        prog="triserve operator",
        description="Run the triserve operator: place EnergyPolicies on GPU nodes and "
        "aggregate their NodeEnergyReports into policy status.",
    )
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--standalone",
        action="store_true",
        help="run without peering (a single replica; the default)",
    )
    group.add_argument(
        "--peering",
        metavar="NAME",
        help="coordinate with other replicas through a ClusterKopfPeering named NAME",
    )
    p.add_argument(
        "--liveness",
        default=DEFAULT_LIVENESS,
        help=f"liveness endpoint URL, '' to disable (default {DEFAULT_LIVENESS})",
    )
    p.add_argument(
        "--status-interval",
        type=float,
        default=defaults.status_interval_s,
        help="seconds between status updates per policy (default %(default)s)",
    )
    p.add_argument(
        "--release-timeout",
        type=float,
        default=defaults.release_timeout_s,
        help="seconds deletion waits for agents to report Released (default %(default)s)",
    )
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p


def kopf_args(args: argparse.Namespace) -> list[str]:
    """The `kopf run` argument list for parsed `triserve operator` arguments."""
    out = ["run", "-m", "triserve.operator.main", "--all-namespaces"]
    out += ["--peering", args.peering] if args.peering else ["--standalone"]
    if args.liveness:
        out += ["--liveness", args.liveness]
    if args.verbose:
        out.append("--verbose")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, export the settings, and hand over to `kopf run`."""
    args = parser().parse_args(argv)
    settings = OperatorSettings(
        status_interval_s=args.status_interval, release_timeout_s=args.release_timeout
    )
    os.environ.update(settings.to_env())
    import kopf  # imported late: `triserve --help` need not load kopf
    from kopf import cli as kopf_cli

    try:
        kopf_cli.main.main(
            args=kopf_args(args), prog_name="triserve operator", standalone_mode=False
        )
    except kopf.LoginError as exc:
        print(
            f"triserve operator: cannot reach the Kubernetes API: {exc}\n"
            "  In a pod: give it a ServiceAccount (the Helm chart does). Outside: set "
            "KUBECONFIG or ~/.kube/config to a cluster you may manage.",
            file=sys.stderr,
        )
        return 2
    return 0
