"""`triserve operator`: parse the flags, build the settings, and run the kopf operator.

Called by `triserve.cli` with the remaining arguments. The flags become `OperatorSettings`
and the start options of `main.operate`, the same start the tests use, run here with
`asyncio.run` (what `kopf.run` does). kopf's logging is configured as its own ``kopf run``
would configure it for ``--verbose`` / ``--quiet``. There is one operator replica and no
kopf peering (standalone), always.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
        "--budget-interval",
        type=cliargs.positive_float,
        default=defaults.budget_interval_s,
        help="seconds between re-balances of each policy's power budget",
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


def settings_from_args(args: argparse.Namespace) -> OperatorSettings:
    """The operator settings that parsed `triserve operator` flags ask for."""
    return OperatorSettings(
        status_interval_s=args.status_interval,
        release_timeout_s=args.release_timeout,
        budget_interval_s=args.budget_interval,
    )


def configure_logging(log_level: str) -> None:
    """Set up kopf's log handler: DEBUG is kopf's verbose, WARNING and above its quiet."""
    import kopf

    # kopf has three levels (verbose, normal, quiet); ERROR and CRITICAL map to quiet as they
    # did when this command ran `kopf run --quiet`. ``kopf run`` prefixes object-related
    # messages with the object's name by default; kopf.configure does not, so ask for it.
    kopf.configure(
        verbose=log_level == "DEBUG",
        quiet=log_level in ("WARNING", "ERROR", "CRITICAL"),
        log_prefix=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, then run the operator until SIGTERM; exit 2 without a Kubernetes API."""
    args = parser().parse_args(argv)
    settings = settings_from_args(args)
    problem = _credentials_problem()
    if problem is not None:
        # Checked before kopf starts: its login would log a retrying traceback first.
        return _no_api(problem)
    import kopf  # imported late: `triserve --help` need not load kopf

    from triserve.operator import main as operator_main

    configure_logging(args.log_level)
    registry = operator_main.registered(settings).registry
    try:
        # As kopf.run does: a cancelled operator is a stopped one, not an error.
        with contextlib.suppress(asyncio.CancelledError):
            asyncio.run(operator_main.operate(registry, liveness_endpoint=args.liveness or None))
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
