"""`triserve demo` (`make demo`): the standalone agent on a simulated 2-GPU Qwen-Omni node.

Runs the real agent — discovery, scrapes of the simulator's vLLM-format metrics, one Tri-serve
`ControlLoop` per GPU, the exporter on `/metrics` — over the reference scenario at 10x speed,
with a live terminal view (when stdout is not a terminal, e.g. in CI, the table is printed at
most every `PLAIN_TABLE_EVERY_S` of wall time). Then it replays the same scenario and seed
under the PMU default (no control, as fast as the simulator goes) and prints both side by
side: energy, tokens per joule, p99 latencies, and the agent's own baseline estimate (from
its reports, which is what users see) next to the measured one.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from triserve.api.models import EnergyPolicySpec
from triserve.api.status import NodeEnergyReportStatus
from triserve.node_agent.agent import NodeAgent, PolicyRef
from triserve.node_agent.runtime import AgentOptions, AgentRuntime
from triserve.sim import SimReport, Simulation
from triserve.simnode.node import driver_for, open_simulation

#: Wall seconds between two printed tables when stdout is not a terminal (CI logs).
PLAIN_TABLE_EVERY_S = 10.0


def build_parser() -> argparse.ArgumentParser:
    """The demo's flags."""
    p = argparse.ArgumentParser(prog="triserve demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", default="reference", help="scenario name or YAML (reference)")
    p.add_argument("--policy", type=Path, help="EnergyPolicy manifest (default: TriServe)")
    p.add_argument("--speed", type=float, default=10.0, help="simulated s per wall s (10)")
    p.add_argument("--duration", type=float, help="simulated seconds (default: the scenario's)")
    p.add_argument("--seed", type=int, default=0, help="simulation seed (0)")
    p.add_argument("--metrics-port", type=int, default=9402, help="/metrics port (0 = any)")
    return p


def gpu_table(agent: NodeAgent, now_s: float, duration_s: float) -> Table:
    """The live view: one row per GPU."""
    policy = agent.policy.name if agent.policy else "-"
    table = Table(title=f"triserve demo — node {agent.node_name}, policy {policy}, "
                  f"t={now_s:5.0f}/{duration_s:.0f} s (simulated)")  # fmt: skip
    for col in ("GPU", "stages", "state", "target MHz", "SM MHz", "W", "°C", "reason", "J"):
        table.add_column(col, justify="right" if col[0].isupper() or col == "°C" else "left")
    with agent.lock:
        for gpu in agent.gpus.values():
            sample, decision = gpu.last_sample, gpu.last_decision
            table.add_row(
                str(gpu.index),
                ",".join(sorted({p.pod.stage for p in gpu.placements})) or "-",
                gpu.state.value,
                str(decision.target_sm_clock_mhz or "PMU") if decision else "-",
                str(sample.sm_clock_mhz) if sample else "-",
                f"{sample.power_mw / 1000:.0f}" if sample else "-",
                f"{sample.temperature_c:.1f}" if sample else "-",
                decision.reason.value if decision else "-",
                f"{gpu.energy_j:,.0f}",
            )
    return table


def _pct(new: float | None, old: float | None) -> str:
    if new is None or old is None or old == 0:
        return "n/a"
    return f"{100.0 * (new / old - 1.0):+.1f}%"


def summary_table(controlled: SimReport, baseline: SimReport, estimate: str) -> Table:
    """Side-by-side comparison of the two runs (simulator measurements)."""
    table = Table(title="Same traffic, same seed: triserve vs PMU default (measured after warm-up)")
    table.add_column("metric")
    table.add_column("PMU default", justify="right")
    table.add_column("triserve", justify="right")
    table.add_column("change", justify="right")

    def row(name: str, base: float | None, ctrl: float | None, fmt: str) -> None:
        table.add_row(
            name,
            "n/a" if base is None else format(base, fmt),
            "n/a" if ctrl is None else format(ctrl, fmt),
            _pct(ctrl, base),
        )

    row("energy (J)", baseline.energy_j, controlled.energy_j, ",.0f")
    row("tokens generated", baseline.generated_tokens, controlled.generated_tokens, ",.0f")
    row("tokens per joule", baseline.tokens_per_joule, controlled.tokens_per_joule, ".4f")
    row("completed requests", baseline.completed_requests, controlled.completed_requests, "d")
    row("TTFT p99 (s)", baseline.ttft_p99_s, controlled.ttft_p99_s, ".3f")
    row("end-to-end p99 (s)", baseline.e2e_p99_s, controlled.e2e_p99_s, ".3f")
    row(
        "stalled at >=1.5 GHz (s)",
        baseline.stall_high_clock_s,
        controlled.stall_high_clock_s,
        ".1f",
    )
    row("thermal throttling (s)", baseline.throttle_s, controlled.throttle_s, ".1f")
    measured = _pct(controlled.tokens_per_joule, baseline.tokens_per_joule)
    table.caption = (
        f"tokens per joule, agent's own estimate without the replay: {estimate}; "
        f"measured by the replay: {measured}"
    )
    return table


def estimated_improvement(reports: Sequence[NodeEnergyReportStatus]) -> tuple[float, float] | None:
    """(tokens/J, estimated tokens/J at default) over `reports`' windows; None without data."""
    tokens = joules = base_j = 0.0
    for status in reports:
        eff = status.efficiency
        tokens += eff.tokens
        joules += status.energy.joules
        if eff.baseline_tokens_per_joule > 0:
            base_j += eff.tokens / eff.baseline_tokens_per_joule
    if joules <= 0 or base_j <= 0:
        return None
    return tokens / joules, tokens / base_j


def _estimate(reports: Sequence[NodeEnergyReportStatus]) -> str:
    found = estimated_improvement(reports)
    if found is None:
        return "not enough data"
    tpj, base_tpj = found
    return f"{tpj:.4f} vs {base_tpj:.4f} at default ({_pct(tpj, base_tpj)})"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns 0."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    console = Console()
    if args.policy is not None:
        from triserve.node_agent.main import load_policy

        policy = load_policy(args.policy)
    else:
        policy = PolicyRef("demo-triserve", EnergyPolicySpec.model_validate({}), 1)
    sim = open_simulation(args.scenario, seed=args.seed)
    duration_s = args.duration if args.duration is not None else sim.scenario.duration_s
    console.print(
        f"[bold]triserve demo[/]: scenario {sim.scenario.name!r} "
        f"({len(sim.placements)} stages on {len(sim.gpus)} GPUs), {duration_s:.0f} simulated s "
        f"at {args.speed:g}x; policy {policy.name} ({policy.spec.mode.value}, "
        f"{policy.spec.strategy.value})"
    )
    reports: list[NodeEnergyReportStatus] = []
    live = Live(console=console, auto_refresh=False) if console.is_terminal else None
    last_print_wall_s = [time.monotonic()]

    def on_step(agent: NodeAgent, now_s: float) -> None:
        if live is not None:
            live.update(gpu_table(agent, now_s, duration_s), refresh=True)
        elif time.monotonic() - last_print_wall_s[0] >= PLAIN_TABLE_EVERY_S:
            last_print_wall_s[0] = time.monotonic()
            console.print(gpu_table(agent, now_s, duration_s))

    with tempfile.TemporaryDirectory(prefix="triserve-demo-") as tmp:
        options = AgentOptions(
            node_name=sim.scenario.hostname,
            state_file=Path(tmp) / "state.json",
            metrics_port=args.metrics_port,
            metrics_host="127.0.0.1",
            policy=policy,
            standalone=True,
            backend=sim.backend,
            node_driver=driver_for(sim),
            speed=args.speed,
            duration_s=duration_s,
            on_step=on_step,
            on_report=reports,
        )
        options.metrics_port_fallback = True
        started = time.monotonic()
        runtime = AgentRuntime(options)
        if live is not None:
            with live:
                asyncio.run(_run(runtime, console))
        else:
            asyncio.run(_run(runtime, console))
        wall_s = time.monotonic() - started
    controlled = sim.report()
    console.print(f"agent run: {wall_s:.1f} s wall; replaying under the PMU default …")
    baseline_sim = Simulation(sim.scenario, seed=args.seed)
    baseline_sim.run_until(sim.now_s)
    console.print(summary_table(controlled, baseline_sim.report(), _estimate(reports)))
    sys.stdout.flush()
    return 0


async def _run(runtime: AgentRuntime, console: Console) -> None:
    server_port = runtime.options.metrics_port
    task = asyncio.create_task(runtime.run())
    await asyncio.sleep(0.2)
    if runtime.server is not None:
        server_port = runtime.server.port
    console.print(f"/metrics on http://127.0.0.1:{server_port}/metrics while the demo runs")
    await task
