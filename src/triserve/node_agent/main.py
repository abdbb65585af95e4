"""`triserve agent`: run the node agent, which governs the clocks of one node's GPUs.

In a cluster (the DaemonSet) the node name comes from `NODE_NAME` (downward API), read once
here and passed down; the policy is the one the node's `triserve.io/policy` label names.
Standalone, `--policy FILE` gives a whole EnergyPolicy manifest; validation errors name the
file and the field and exit with status 2. `--sim SCENARIO` runs on a simulated node::

    triserve agent --standalone --policy examples/energypolicy-full.yaml --sim reference
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from kubernetes.config import ConfigException

from triserve import cliargs
from triserve.api.errors import PolicyError, load_policy_file
from triserve.control import ProbeSettings
from triserve.gpu.backend import GpuBackend, GpuError
from triserve.kubeconfig import api_client
from triserve.node_agent.agent import PolicyRef
from triserve.node_agent.hintserver import HintSocketPathError
from triserve.node_agent.podresources import DEFAULT_SOCKET
from triserve.node_agent.runtime import AgentOptions, AgentRuntime, NodeDriverFactory
from triserve.node_agent.safety import DEFAULT_STATE_FILE, GuardRails, StateFileBusyError

log = logging.getLogger("triserve.agent")


def build_parser(prog: str = "triserve agent") -> argparse.ArgumentParser:
    """The agent's flags."""
    p = cliargs.parser(
        prog,
        "Run the triserve node agent: find the serving pods on this node, govern its GPUs'\n"
        "clocks under the node's EnergyPolicy, export metrics and write the NodeEnergyReport.\n"
        "In a cluster it runs as the chart's DaemonSet; --standalone --policy FILE runs it\n"
        "without one, and --sim SCENARIO on a simulated node.",
    )
    p.add_argument("--standalone", action="store_true", help="no cluster: policy from --policy")
    p.add_argument("--policy", type=Path, help="EnergyPolicy manifest (YAML), with --standalone")
    p.add_argument(
        "--sim",
        "--scenario",
        dest="sim",
        metavar="SCENARIO",
        help="simulated node: a bundled scenario name ('reference') or a YAML path",
    )
    p.add_argument("--seed", type=int, default=0, help="simulation seed")
    p.add_argument(
        "--speed", type=cliargs.positive_float, default=1.0, help="simulated s per wall s"
    )
    p.add_argument(
        "--duration-s",
        "--duration",
        dest="duration",
        type=cliargs.positive_float,
        help="stop after this many (simulated) seconds (default: run until stopped)",
    )
    p.add_argument("--metrics-port", type=cliargs.port, default=9402, help="exporter port")
    p.add_argument(
        "--health-port",
        type=cliargs.port,
        default=None,
        help="/healthz and /readyz also on this port, with slots of their own (point the "
        "probes here: clients of the exporter port cannot fill it); default 9403, or any "
        "free port with --metrics-port 0",
    )
    p.add_argument(
        "--metrics-host",
        default=None,
        help="exporter address (default: $POD_IP from the downward API, else 0.0.0.0)",
    )
    p.add_argument(
        "--state-file", type=Path, default=DEFAULT_STATE_FILE, help="lock state (hostPath)"
    )
    dcgm = p.add_mutually_exclusive_group()
    dcgm.add_argument(
        "--dcgm-url",
        help="fixed dcgm-exporter URL; its series must name this node in Hostname",
    )
    dcgm.add_argument(
        "--dcgm-discover",
        metavar="SELECTOR",
        help="find the dcgm-exporter pod on this node by label selector, e.g. "
        "app=nvidia-dcgm-exporter (gpu-operator)",
    )
    dcgm.add_argument(
        "--dcgm-host-port",
        type=cliargs.port,
        metavar="PORT",
        help="scrape dcgm-exporter at http://$HOST_IP:PORT/metrics (hostPort/hostNetwork)",
    )
    p.add_argument("--dcgm-port", type=cliargs.port, default=9400, help="port for --dcgm-discover")
    p.add_argument(
        "--dcgm-namespace",
        default="gpu-operator",
        metavar="NAMESPACE",
        help="the only namespace --dcgm-discover searches (default: %(default)s, the GPU "
        "Operator's); a pod with the same labels in any other namespace is never scraped",
    )
    p.add_argument(
        "--dcgm-collect-interval",
        type=cliargs.positive_float,
        default=30.0,
        metavar="SECONDS",
        help="dcgm-exporter's collection interval (its -c flag, in ms there): the period its "
        "activity averages over; over 2 s, per-phase decisions do not use that activity",
    )
    p.add_argument(
        "--dcgm-hostname",
        action="append",
        default=[],
        help="also accept dcgm-exporter series with this Hostname (repeatable)",
    )
    p.add_argument(
        "--pod-resources-socket",
        default=None,
        help=f"kubelet pod-resources socket (in a cluster: {DEFAULT_SOCKET})",
    )
    p.add_argument(
        "--hints-socket",
        type=Path,
        default=None,
        metavar="PATH",
        help="serve stage hints from serving pods on this unix socket, in a hostPath "
        "directory they mount (docs/serving-pods.md); needs hostPID to tell pods apart "
        "(default: off, scrapes only)",
    )
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster config)")
    p.add_argument("--node-name", default=None, help="node name (default: $NODE_NAME)")
    p.add_argument(
        "--scrape-interval",
        type=cliargs.positive_float,
        default=0.5,
        help="seconds between scrapes of the serving pods",
    )
    p.add_argument(
        "--report-interval",
        type=cliargs.positive_float,
        help="seconds between NodeEnergyReports (default: the policy's)",
    )
    p.add_argument(
        "--baseline-probe-interval",
        type=cliargs.non_negative_float,
        default=ProbeSettings().interval_s,
        metavar="S",
        help="at most one baseline probe (a few ticks at PMU default clocks, to measure the "
        "baseline the savings are reported against) per GPU every S seconds; 0 disables "
        f"({ProbeSettings().interval_s:g})",
    )
    p.add_argument(
        "--min-sm-clock-fraction",
        type=cliargs.fraction,
        default=float(os.environ.get("TRISERVE_MIN_SM_CLOCK_FRACTION", "0")),
        metavar="F",
        help="guard rail: never lock the SM clock below F x the GPU's default boost clock, "
        "whatever the policy says (env TRISERVE_MIN_SM_CLOCK_FRACTION; default 0: no floor)",
    )
    p.add_argument(
        "--min-power-limit-fraction",
        type=cliargs.fraction,
        default=float(os.environ.get("TRISERVE_MIN_POWER_LIMIT_FRACTION", "0")),
        metavar="F",
        help="guard rail: never set a power limit below F x the GPU's default limit "
        "(env TRISERVE_MIN_POWER_LIMIT_FRACTION; default 0: no floor)",
    )
    p.add_argument(
        "--shutdown-retry",
        type=cliargs.non_negative_float,
        default=10.0,
        metavar="S",
        help="on shutdown, keep retrying restores that do not read back at defaults for up "
        "to S seconds (10; keep it under the pod's termination grace period)",
    )
    p.add_argument(
        "--log-level",
        type=cliargs.log_level,
        default="INFO",
        help=f"one of {', '.join(cliargs.LOG_LEVELS)}",
    )
    return p


def load_policy(path: Path) -> PolicyRef:
    """The standalone policy; raises PolicyError naming the file and the field."""
    manifest = load_policy_file(path)
    return PolicyRef(
        name=manifest.metadata.name,
        spec=manifest.spec,
        generation=manifest.metadata.generation or 1,
    )


#: Opens a simulated node for `--sim SCENARIO`: (scenario, seed) -> (backend, driver, host).
#: Injected by the `triserve` command (`triserve.cli`), which sits above the simulator: the
#: agent package itself never imports it.
OpenSim = Callable[[str, int], tuple[GpuBackend, NodeDriverFactory, str]]


def options_from_args(args: argparse.Namespace, open_sim: OpenSim | None = None) -> AgentOptions:
    """Turn parsed flags into `AgentOptions` (raises PolicyError, ValueError)."""
    node_driver = None
    sim_host = None
    # The policy file first: a bad one must say so, not what NVML thinks of this machine.
    policy = load_policy(args.policy) if args.standalone else None
    node_name = args.node_name or os.environ.get("NODE_NAME")
    if not node_name and not args.standalone:
        raise ValueError("NODE_NAME is not set: give it from the downward API or --node-name")
    backend: GpuBackend
    if args.sim:
        if open_sim is None:
            raise ValueError("--sim needs the simulated node: run it as `triserve agent --sim …`")
        backend, node_driver, sim_host = open_sim(args.sim, args.seed)
    else:
        # Imported here: only a real GPU node needs pynvml.
        from triserve.gpu.nvml import NvmlBackend

        backend = NvmlBackend()
    if not node_name:
        node_name = sim_host or socket.gethostname()
    return AgentOptions(
        node_name=node_name,
        state_file=args.state_file,
        metrics_port=args.metrics_port,
        health_port=(9403 if args.metrics_port else 0)
        if args.health_port is None
        else args.health_port,
        metrics_host=args.metrics_host or os.environ.get("POD_IP") or "0.0.0.0",
        policy=policy,
        standalone=args.standalone,
        backend=backend,
        node_driver=node_driver,
        speed=args.speed,
        duration_s=args.duration,
        dcgm_url=args.dcgm_url,
        dcgm_discover=args.dcgm_discover,
        dcgm_namespace=args.dcgm_namespace,
        dcgm_port=args.dcgm_port,
        dcgm_period_s=args.dcgm_collect_interval,
        dcgm_host_ip=os.environ.get("HOST_IP") if args.dcgm_host_port else None,
        dcgm_host_port=args.dcgm_host_port,
        dcgm_hostnames=frozenset(args.dcgm_hostname),
        pod_resources_socket=args.pod_resources_socket
        or (None if args.standalone else DEFAULT_SOCKET),
        api_client=None if args.standalone else api_client(args.kubeconfig),
        scrape_interval_s=args.scrape_interval,
        report_interval_s=args.report_interval,
        probe=ProbeSettings(interval_s=args.baseline_probe_interval),
        rails=GuardRails(
            min_sm_clock_fraction=args.min_sm_clock_fraction,
            min_power_limit_fraction=args.min_power_limit_fraction,
        ),
        shutdown_retry_s=args.shutdown_retry,
        hints_socket=args.hints_socket,
    )


def main(argv: Sequence[str] | None = None, open_sim: OpenSim | None = None) -> int:
    """Entry point of `triserve agent`; exit 2 on a bad policy file or flags."""
    parser = build_parser()
    args = parser.parse_args(argv)
    cliargs.setup_logging(args.log_level)
    if args.standalone and args.policy is None:
        parser.error("--standalone needs --policy FILE (an EnergyPolicy manifest)")
    if args.policy is not None and not args.standalone:
        parser.error("--policy is for --standalone runs; in a cluster the node label decides")
    if args.dcgm_host_port and not os.environ.get("HOST_IP"):
        parser.error("--dcgm-host-port needs HOST_IP (status.hostIP from the downward API)")
    try:
        options = options_from_args(args, open_sim)
        # No writability check of --state-file here: an agent that cannot write it must still
        # restore what it lists; it then refuses new locks and reports Degraded (safety.py).
        if args.hints_socket is not None:
            cliargs.writable_dir(args.hints_socket.parent, "--hints-socket")
    except PolicyError as exc:
        print(f"triserve agent: invalid policy {exc}", file=sys.stderr)
        return 2
    except GpuError as exc:
        print(
            f"triserve agent: cannot manage this node's GPUs: {exc}\n"
            "  On a GPU node: run with the NVIDIA runtime (runtimeClassName: nvidia or "
            "NVIDIA_VISIBLE_DEVICES=all). Without a GPU: add --sim reference.",
            file=sys.stderr,
        )
        return 2
    except (ValueError, OSError, ConfigException, cliargs.UserError) as exc:
        print(f"triserve agent: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(AgentRuntime(options).run())
    except (StateFileBusyError, HintSocketPathError) as exc:
        print(f"triserve agent: {exc}", file=sys.stderr)
        return 2
