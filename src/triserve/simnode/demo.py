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

from triserve import cliargs
from triserve.api.errors import PolicyError
from triserve.api.models import EnergyPolicySpec, Strategy
from triserve.api.status import NodeEnergyReportStatus
from triserve.control.decisions import Decision, Reason
from triserve.node_agent.agent import NodeAgent, PolicyRef
from triserve.node_agent.runtime import AgentOptions, AgentRuntime
from triserve.sim import ScenarioError, SimReport, Simulation
from triserve.simnode.node import driver_for, open_simulation

#: Wall seconds between two printed tables when stdout is not a terminal (CI logs).
PLAIN_TABLE_EVERY_S = 10.0


def build_parser() -> argparse.ArgumentParser:
    """The demo's flags."""
    p = cliargs.parser(
        "triserve demo",
        "Run the triserve node agent on a simulated 2-GPU Qwen-Omni node (no cluster, no GPU):\n"
        "a live per-GPU view while it runs, then the same traffic replayed under the GPUs'\n"
        "default power management and both compared.",
    )
    p.add_argument(
        "--scenario", "--sim", default="reference", help="bundled scenario name or a YAML path"
    )
    p.add_argument(
        "--policy", type=Path, help="EnergyPolicy manifest (default: TriServe, all defaults)"
    )
    p.add_argument(
        "--speed", type=cliargs.positive_float, default=10.0, help="simulated s per wall s"
    )
    p.add_argument(
        "--duration-s",
        "--duration",
        dest="duration_s",
        type=cliargs.positive_float,
        help="simulated seconds, past the scenario's warm-up (default: the scenario's)",
    )
    p.add_argument("--seed", type=int, default=0, help="simulation seed")
    p.add_argument("--metrics-port", type=cliargs.port, default=9402, help="/metrics port (0: any)")
    p.add_argument("--log-level", type=cliargs.log_level, default="WARNING", help="log level")
    return p


#: The legend printed under the live table: what each decision reason means.
REASON_LEGEND = (
    "reason: stall = the GPU waits on its upstream stage (target PMU = parked: clock lowered, "
    "then the lock released so the GPU boosts the moment work returns); ridge (source) = a "
    "memory-bound phase at its ridge clock, from the policy's profile, the online search or "
    "activity counters; compute = a compute-bound phase at boost; thermal = a sustainable "
    "clock ahead of thermal slowdown; slo-guard = the latency guard handed the clock back; "
    "pipeline = capped because the GPU feeds a queued stage elsewhere on the node; "
    "default = the GPU's own power management (PMU) decides."
)


def strategy_label(policy: PolicyRef) -> str:
    """The strategy in use as the demo names it, e.g. ``TriServe`` or ``StaticClock 1500 MHz``."""
    spec = policy.spec
    label = spec.strategy.value
    if spec.strategy is Strategy.STATIC_CLOCK and spec.static_clock is not None:
        label += f" {spec.static_clock.sm_clock_mhz} MHz"
    elif spec.strategy is Strategy.POWER_CAP and spec.power_cap is not None:
        label += f" {spec.power_cap.watts} W"
    return f"{label} (Observe)" if spec.mode.value == "Observe" else label


def _reason(policy: PolicyRef | None, decision: Decision) -> str:
    if policy is not None and policy.spec.strategy in (Strategy.STATIC_CLOCK, Strategy.POWER_CAP):
        # These strategies' decisions carry no Tri-serve reason; name the setting instead.
        return strategy_label(policy).removesuffix(" (Observe)")
    if decision.reason is Reason.STALL and decision.target_sm_clock_mhz is None:
        return "stall, parked"
    source = f" ({decision.source})" if decision.source else ""
    return f"{decision.reason.value}{source}"


#: The longest demo run: one simulated day (the demo then replays it under the default too).
MAX_DURATION_S = 86_400.0


def gpu_table(agent: NodeAgent, now_s: float, duration_s: float) -> Table:
    """The live view: one row per GPU, and the legend of the reasons."""
    policy = agent.policy
    table = Table(
        title=f"triserve demo: node {agent.node_name}, policy {policy.name if policy else '-'}, "
        f"t={now_s:5.0f}/{duration_s:.0f} s (simulated)",
        caption=REASON_LEGEND
        if policy is None or policy.spec.strategy is Strategy.TRI_SERVE
        else f"reason: the {strategy_label(policy)} policy sets every clock; PMU = default.",
        caption_justify="left",
    )
    with agent.lock:
        gpus = list(agent.gpus.values())
        stages = [",".join(sorted({p.pod.stage for p in g.placements})) or "-" for g in gpus]
        table.add_column("GPU", justify="right")
        # Stage names never wrap or get cut: they are what a reader looks for first.
        table.add_column("stages", no_wrap=True, min_width=max(len(s) for s in [*stages, "-"]))
        table.add_column("state")
        for col in ("target MHz", "SM MHz", "W", "°C"):
            table.add_column(col, justify="right")
        table.add_column("reason", no_wrap=True)
        table.add_column("J", justify="right")
        for gpu, names in zip(gpus, stages, strict=True):
            sample, decision = gpu.last_sample, gpu.last_decision
            table.add_row(
                str(gpu.index),
                names,
                gpu.state.value,
                str(decision.target_sm_clock_mhz or "PMU") if decision else "-",
                str(sample.sm_clock_mhz) if sample else "-",
                f"{sample.power_mw / 1000:.0f}" if sample else "-",
                f"{sample.temperature_c:.1f}" if sample else "-",
                _reason(policy, decision) if decision else "-",
                f"{gpu.totals.energy_j:,.0f}",
            )
    return table


def _pct(new: float | None, old: float | None) -> str:
    if new is None or old is None or old == 0:
        return "n/a"
    change = round(100.0 * (new / old - 1.0), 1)
    return f"{change + 0.0:+.1f}%"  # + 0.0 turns -0.0 into 0.0


def summary_table(controlled: SimReport, baseline: SimReport, estimate: str, label: str) -> Table:
    """Side-by-side comparison of the two runs (simulator measurements)."""
    table = Table(
        title=f"Same traffic, same seed: {label} vs the PMU default "
        f"(measured after the {controlled.warmup_s:.0f} s warm-up)"
    )
    table.add_column("metric")
    table.add_column("PMU default", justify="right")
    table.add_column(label, justify="right")
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
    table.caption = f"The agent's own estimate of tokens per joule, without the replay: {estimate}"
    return table


def _change(new: float | None, old: float | None, more: str, less: str) -> str:
    if new is None or old is None or old == 0:
        return "not measurable"
    pct = 100.0 * (new / old - 1.0)
    return f"{abs(pct):.1f}% {more if pct >= 0 else less}"


def _energy_only(controlled: SimReport, baseline: SimReport) -> str:
    """What the energy change alone does to tokens per joule, in words."""
    if controlled.energy_j <= 0 or baseline.energy_j <= 0:
        return "no energy was measured"
    cut = 1.0 - controlled.energy_j / baseline.energy_j
    gain = 1.0 / (1.0 - cut) - 1.0
    return f"a {100 * cut:.1f}% energy cut alone would show as a {100 * gain:+.1f}% efficiency gain"


def plain_summary(controlled: SimReport, baseline: SimReport, label: str) -> list[str]:
    """The result in words: the energy cut and the efficiency gain are different numbers."""
    tokens = _pct(controlled.generated_tokens, baseline.generated_tokens)
    return [
        f"Energy: {label} used {_change(controlled.energy_j, baseline.energy_j, 'more', 'less')}"
        f" energy than the PMU default ({controlled.energy_j:,.0f} J vs "
        f"{baseline.energy_j:,.0f} J) for the same arriving requests.",
        f"Efficiency: "
        f"{_change(controlled.tokens_per_joule, baseline.tokens_per_joule, 'more', 'fewer')}"
        f" tokens per joule ({controlled.tokens_per_joule:.4f} vs "
        f"{baseline.tokens_per_joule:.4f}). Not the same number as the energy cut: tokens per "
        f"joule divides the tokens generated in the window ({tokens}) by the energy, so "
        f"{_energy_only(controlled, baseline)}.",
        f"Latency: end-to-end p99 {_pct(controlled.e2e_p99_s, baseline.e2e_p99_s)}, "
        f"time to first token p99 {_pct(controlled.ttft_p99_s, baseline.ttft_p99_s)}.",
    ]


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


def _prepare(args: argparse.Namespace) -> tuple[PolicyRef, Simulation, float]:
    """The policy, simulation and duration; raises `cliargs.UserError` naming the flag."""
    policy = PolicyRef("demo-triserve", EnergyPolicySpec.model_validate({}), 1)
    if args.policy is not None:
        from triserve.node_agent.main import load_policy

        try:
            policy = load_policy(args.policy)
        except PolicyError as exc:
            raise cliargs.UserError(f"--policy: {' '.join(str(exc).split())}") from None
    try:
        sim = open_simulation(args.scenario, seed=args.seed)
    except ScenarioError as exc:
        first = str(exc).strip().splitlines()
        more = f" ({'; '.join(s.strip() for s in first[1:])})" if len(first) > 1 else ""
        raise cliargs.UserError(f"--scenario: {first[0]}{more}") from None
    duration_s: float = sim.scenario.duration_s if args.duration_s is None else args.duration_s
    if duration_s <= sim.scenario.warmup_s:
        raise cliargs.UserError(
            f"--duration-s: {duration_s:g} s ends inside the scenario's "
            f"{sim.scenario.warmup_s:g} s warm-up, where nothing is measured; give more than "
            f"{sim.scenario.warmup_s:g}"
        )
    if duration_s > MAX_DURATION_S:
        raise cliargs.UserError(
            f"--duration-s: {duration_s:g} s is more than the demo replays "
            f"({MAX_DURATION_S:g} s, one simulated day); give a shorter run"
        )
    return policy, sim, duration_s


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns 0, or 2 on a user error (one line on stderr)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    try:
        policy, sim, duration_s = _prepare(args)
    except cliargs.UserError as exc:
        return cliargs.fail("triserve demo", str(exc))
    # A log is read later and often in 80 columns: give the tables room so nothing is cut.
    console = Console() if sys.stdout.isatty() else Console(width=120)
    label = strategy_label(policy)
    console.print(
        f"[bold]triserve demo[/]: scenario {sim.scenario.name!r} "
        f"({len(sim.placements)} stages on {len(sim.gpus)} GPUs), {duration_s:.0f} simulated s "
        f"at {args.speed:g}x; policy {policy.name} ({label})"
    )
    reports: list[NodeEnergyReportStatus] = []
    live = Live(console=console, auto_refresh=False) if console.is_terminal else None
    last_print_wall_s = [time.monotonic()]
    # The last view while the policy still governed (after the run the GPUs are released).
    last_view: list[tuple[float, Table]] = []

    def on_step(agent: NodeAgent, now_s: float) -> None:
        due = not last_view or now_s - last_view[0][0] >= 1.0
        if live is None and agent.policy is not None and due:
            last_view[:] = [(now_s, gpu_table(agent, now_s, duration_s))]
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
            on_report=reports.append,
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
    if last_view:
        console.print(last_view[0][1])  # the final governed state, in a log too
    controlled = sim.report()
    console.print(f"agent run: {wall_s:.1f} s wall; replaying under the PMU default …")
    baseline_sim = Simulation(sim.scenario, seed=args.seed)
    baseline_sim.run_until(sim.now_s)
    baseline = baseline_sim.report()
    console.print(summary_table(controlled, baseline, _estimate(reports), label))
    for line in plain_summary(controlled, baseline, label):
        console.print(line, highlight=False)
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
