"""`triserve profile`: measure a stage's ridge clocks on one GPU and print a policy snippet.

On a real GPU (``--nvml``), run it on the node while the stage serves representative
traffic; it needs the engine's metrics URL and permission to lock clocks (root or
CAP_SYS_ADMIN)::

    triserve profile --nvml --gpu 0 --stage thinker --metrics-url http://10.0.0.5:8000/metrics

On the simulator (``--sim SCENARIO``) it profiles a stage of a bundled or YAML scenario on
simulated time. Either way it prints the `spec.triServe.arithmeticIntensity.profile` entries
to paste into an EnergyPolicy (or writes them with ``--output``), with every measured
point. The sweep itself is `triserve.control.profiling.sweep`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from triserve import cliargs
from triserve.control.profiling import RidgeProfile, sweep
from triserve.gpu.backend import GpuError
from triserve.telemetry import ServingSnapshot


def _at_least_two(text: str) -> int:
    value = cliargs.positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be 2 or more, got {text}")
    return value


def _loss_pct(text: str) -> float:
    value = cliargs.non_negative_float(text)
    if value >= 100:
        raise argparse.ArgumentTypeError(f"must be under 100, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command's flags."""
    p = cliargs.parser(
        "triserve profile",
        "Measure a serving stage's ridge clocks (the lowest clocks that keep its decode and\n"
        "prefill speed) on one GPU, and print the arithmeticIntensity.profile entries for an\n"
        "EnergyPolicy. Run it on the node while the stage serves representative traffic\n"
        "(--nvml), or on a simulated node (--sim SCENARIO).",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--sim", "--scenario", dest="sim", metavar="SCENARIO", help="profile on a simulated node"
    )
    where.add_argument("--nvml", action="store_true", help="profile a real GPU through NVML")
    p.add_argument("--stage", required=True, help="stage name, e.g. thinker")
    p.add_argument(
        "--gpu",
        type=int,
        default=None,
        help="GPU index (default with --sim: the stage's GPU; with --nvml: 0)",
    )
    p.add_argument("--metrics-url", help="the stage's serving /metrics URL (required with --nvml)")
    p.add_argument("--seed", type=int, default=0, help="simulation seed (with --sim)")
    p.add_argument(
        "--window-s", type=cliargs.positive_float, default=10.0, help="seconds per window"
    )
    p.add_argument("--points", type=_at_least_two, default=12, help="clocks to test")
    p.add_argument(
        "--max-loss-pct",
        type=_loss_pct,
        default=0.5,
        help="allowed slowdown in percent, 0 to under 100",
    )
    p.add_argument("--output", type=Path, default=None, help="also write the YAML to this file")
    return p


def _sim_profile(args: argparse.Namespace) -> RidgeProfile:
    # Imported here, not at the top: `triserve profile --nvml` never loads the simulator.
    from triserve.sim import Simulation, load_scenario

    sim = Simulation(load_scenario(args.sim), seed=args.seed)
    placement = sim.placement(args.stage)
    gpu = placement.gpu_index if args.gpu is None else args.gpu

    def wait(seconds: float) -> None:
        sim.run_until(sim.now_s + seconds)

    # Let traffic reach a steady state before the first window.
    wait(min(sim.scenario.warmup_s, 60.0))
    return sweep(
        sim.backend,
        gpu,
        args.stage,
        lambda: sim.serving_snapshot(args.stage),
        wait,
        window_s=args.window_s,
        points=args.points,
        max_loss_pct=args.max_loss_pct,
    )


def _nvml_profile(args: argparse.Namespace) -> RidgeProfile:
    import httpx

    # Imported here: only a real GPU needs pynvml and the serving-metrics parser.
    from triserve.gpu.nvml import NvmlBackend
    from triserve.node_agent.serving import parse_serving

    backend = NvmlBackend()

    def read() -> ServingSnapshot:
        body = httpx.get(args.metrics_url, timeout=5.0).text
        return parse_serving(body, time.monotonic())

    return sweep(
        backend,
        args.gpu or 0,
        args.stage,
        read,
        time.sleep,
        window_s=args.window_s,
        points=args.points,
        max_loss_pct=args.max_loss_pct,
    )


def render(profile: RidgeProfile) -> str:
    """The YAML the command prints: the policy entries, then the measurements."""
    doc = {
        "profile": profile.entries(),
        "measurements": [
            {
                "clockMHz": p.clock_mhz,
                "decodeLossPct": _pct(p.loss("decode")),
                "prefillLossPct": _pct(p.loss("prefill")),
                "powerW": round(p.power_w, 1),
                "boostPowerW": round(p.power_boost_w, 1),
            }
            for p in profile.points
        ],
    }
    head = (
        f"# triserve profile: stage {profile.stage}, boost {profile.boost_mhz} MHz.\n"
        "# Paste `profile` under spec.triServe.arithmeticIntensity of an EnergyPolicy.\n"
    )
    return head + yaml.safe_dump(doc, sort_keys=False)


def _pct(loss: float | None) -> float | None:
    return None if loss is None else round(100.0 * loss, 2)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; exit 2 on bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.nvml and not args.metrics_url:
        parser.error("--nvml needs --metrics-url (the stage's serving /metrics)")
    try:
        if args.output is not None:
            cliargs.writable_file(args.output, "--output")
    except cliargs.UserError as exc:
        return cliargs.fail("triserve profile", str(exc))
    try:
        profile = _sim_profile(args) if args.sim else _nvml_profile(args)
    except KeyError as exc:  # an unknown stage: its message is the key error's argument
        return cliargs.fail("triserve profile", f"--stage: {exc.args[0] if exc.args else exc}")
    except ValueError as exc:
        return cliargs.fail("triserve profile", " ".join(str(exc).split()))
    except GpuError as exc:
        print(f"triserve profile: GPU: {exc}", file=sys.stderr)
        return 2
    text = render(profile)
    if args.output is not None:
        args.output.write_text(text)
    print(text, end="")
    return 0
