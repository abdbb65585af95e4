"""`triserve operator`: run the kopf operator (`kopf run -m triserve.operator.main`).

Called by `triserve.cli` with the remaining arguments. Operator settings travel to
`main.py` as `TRISERVE_OPERATOR_*` environment variables (kopf imports `main` in this
process); kopf's own flags (cluster-wide watching, liveness probe) are passed on to
`kopf run`. There is one operator replica and no kopf peering (`--standalone`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from triserve import cliargs
from triserve.operator.settings import OperatorSettings

DEFAULT_LIVENESS = "http://0.0.0.0:8080/healthz"


def parser() -> argparse.ArgumentParser:
    """The `triserve operator` argument parser."""
    defaults = OperatorSettings()
    p = cliargs.parser(
        "triserve operator",
        "Run the triserve operator (kopf): place EnergyPolicies on GPU nodes, label the nodes\n"
        "for their agents, and aggregate NodeEnergyReports into each policy's status.",
    )
    p.add_argument(
        "--standalone",
        action="store_true",
        help="run without kopf peering (always the case; accepted for compatibility)",
    )
    p.add_argument(
        "--liveness",
        default=DEFAULT_LIVENESS,
        help="liveness endpoint URL, '' to disable",
    )
    p.add_argument(
        "--status-interval",
        type=cliargs.positive_float,
        default=defaults.status_interval_s,
        help="seconds between status updates per policy",
    )
    p.add_argument(
        "--release-timeout",
        type=cliargs.positive_float,
        default=defaults.release_timeout_s,
        help="seconds deletion waits for agents to report Released",
    )
    p.add_argument(
        "--log-level",
        type=cliargs.log_level,
        default="INFO",
        help=f"one of {', '.join(cliargs.LOG_LEVELS)}; DEBUG passes --verbose to kopf",
    )
    p.add_argument(
        "--verbose",
        dest="log_level",
        action="store_const",
        const="DEBUG",
        help="the same as --log-level DEBUG",
    )
    return p


def kopf_args(args: argparse.Namespace) -> list[str]:
    """The `kopf run` argument list for parsed `triserve operator` arguments."""
    out = ["run", "-m", "triserve.operator.main", "--all-namespaces", "--standalone"]
    if args.liveness:
        out += ["--liveness", args.liveness]
    if args.log_level == "DEBUG":
        out.append("--verbose")
    elif args.log_level in ("WARNING", "ERROR", "CRITICAL"):
        out.append("--quiet")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, export the settings, and hand over to `kopf run`."""
    args = parser().parse_args(argv)
    settings = OperatorSettings(
        status_interval_s=args.status_interval, release_timeout_s=args.release_timeout
    )
    os.environ.update(settings.to_env())
    problem = _credentials_problem()
    if problem is not None:
        # Checked before kopf starts: its login would log a retrying traceback first.
        return _no_api(problem)
    import kopf  # imported late: `triserve --help` need not load kopf
    from kopf import cli as kopf_cli

    try:
        kopf_cli.main.main(
            args=kopf_args(args), prog_name="triserve operator", standalone_mode=False
        )
    except kopf.LoginError as exc:
        return _no_api(str(exc))
    return 0


def _credentials_problem() -> str | None:
    """Why no Kubernetes credentials can be loaded (in-cluster, then kubeconfig), or None."""
    from kubernetes import config as _config
    from kubernetes.config import ConfigException

    config: Any = _config  # the client's loaders are untyped

    try:
        config.load_incluster_config()
        return None
    except ConfigException:
        pass
    try:
        config.load_kube_config()
    except (ConfigException, OSError) as exc:
        return " ".join(str(exc).split()) or type(exc).__name__
    return None


def _no_api(why: str) -> int:
    print(
        f"triserve operator: cannot reach the Kubernetes API: {why}\n"
        "  In a pod: give it a ServiceAccount (the Helm chart does). Outside: set "
        "KUBECONFIG or ~/.kube/config to a cluster you may manage.",
        file=sys.stderr,
    )
    return 2
