"""The `triserve` command: one entry point, one subcommand per process or tool.

Each subcommand lives in its own module and exposes `main(argv) -> int`; this module only
dispatches, importing the target lazily so that `triserve crds` does not pay for kopf.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import Any

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("triserve.simnode.demo", "run the agent on a simulated 2-GPU node (no cluster)"),
    "bench": ("triserve.bench.cli", "run scenarios x strategies on the simulator"),
    "bench-cluster": (
        "triserve.bench.cluster_cli",
        "share a power budget across a simulated cluster (operator allocation vs fixed caps)",
    ),
    "agent": ("triserve.node_agent.main", "run the node agent (in a cluster or --standalone)"),
    "operator": ("triserve.operator.cli", "run the kopf operator"),
    "release": ("triserve.operator.release", "unlabel nodes, drop policy finalizers (uninstall)"),
    "crds": ("triserve.api.crds", "generate or --check the CRD manifests in crds/"),
    "profile": ("triserve.profiler", "measure a stage's ridge clocks on one GPU (or simulated)"),
    "explain-metrics": (
        "triserve.node_agent.explain",
        "show what the agent reads from a /metrics body (serving or dcgm-exporter)",
    ),
}


def _usage() -> str:
    lines = ["usage: triserve <command> [options]", "", "commands:"]
    lines += [f"  {name:<15} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines += ["", "Run `triserve <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a subcommand's `main(argv)`; an unknown command exits 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        print(_usage())
        return 0 if args else 2
    if args[0] == "--version":
        from triserve import __version__

        print(__version__)
        return 0
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"triserve: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    if name == "agent":
        return _agent(rest)
    module = importlib.import_module(SUBCOMMANDS[name][0])
    result: int = module.main(rest)
    return result


def _agent(argv: Sequence[str]) -> int:
    """`triserve agent`, with `--sim` opening a simulated node (loaded only when asked)."""
    from triserve.node_agent import main as agent_main

    def open_sim(scenario: str, seed: int) -> Any:
        from triserve.simnode import open_node

        return open_node(scenario, seed=seed)

    return agent_main.main(argv, open_sim=open_sim)


if __name__ == "__main__":
    raise SystemExit(main())
