"""`triserve bench-cluster`: the power budget on a simulated cluster, and its scaling cost.

Dispatched by `triserve.cli`. Runs `triserve.bench.cluster` once per allocation method on the
same fleet, seed and arrivals, prints a Markdown table (docs/power-budget.md holds one), and
times the operator's re-balance at `--scaling-nodes` nodes of 8 GPUs (a benchmark figure,
never an assertion).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from triserve import cliargs
from triserve.api.models import EnergyPolicySpec
from triserve.api.status import ReportPhase
from triserve.bench.cluster import ClusterConfig, RowResult, run
from triserve.operator.aggregation import ReportView
from triserve.operator.budget import GpuInput, Window
from triserve.operator.budgeting import Budgeter
from triserve.operator.placement import NodeView, PolicyView

METHODS = ("budget", "uniform", "tdp", "uncapped")
LABELS = {
    "budget": "operator budget (water-filling)",
    "uniform": "uniform caps",
    "tdp": "caps proportional to TDP",
    "uncapped": "no caps (PMU default, over budget)",
}


def _parser() -> argparse.ArgumentParser:
    p = cliargs.parser(
        "triserve bench-cluster",
        "Share one power budget across a simulated cluster of heterogeneous GPU nodes with\n"
        "the operator's allocation, and compare it with uniform and TDP-proportional caps.",
    )
    p.add_argument("--nodes", type=cliargs.count_at_most(512), default=16, help="8-GPU nodes")
    p.add_argument("--duration-s", type=float, default=300.0, help="simulated seconds")
    p.add_argument(
        "--budget-fraction",
        type=float,
        default=0.55,
        help="budget as a share of the sum of the GPUs' default power limits (default 0.55)",
    )
    p.add_argument("--seed", type=int, default=0, help="simulation seed (same for every row)")
    p.add_argument(
        "--scaling-nodes",
        type=int,
        default=1000,
        help="time one re-balance at this many 8-GPU nodes (0: skip)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p


def _table(rows: Sequence[RowResult]) -> str:
    base = next(r for r in rows if r.method == "uniform")
    lines = [
        "| allocation | tokens/s | vs uniform | p90 / p99 queueing delay | refused | "
        "max 1 s power | over budget (max) | max sum of caps |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        caps = "-" if r.method == "uncapped" else f"{r.max_caps_w:,.0f} W"
        gain = 100.0 * (r.tokens_per_s / base.tokens_per_s - 1.0)
        lines.append(
            f"| {LABELS[r.method]} | {r.tokens_per_s:,.0f} | {gain:+.1f} % | "
            f"{r.p90_delay_s:.2f} / {r.p99_delay_s:.2f} s | {100 * r.dropped_share:.1f} % | "
            f"{r.max_window_w:,.0f} W | {max(r.max_over_budget_w, 0.0):,.0f} W | "
            f"{caps} |"
        )
    return "\n".join(lines)


def scaling_ms(nodes: int, passes: int = 3) -> tuple[float, float]:
    """(first pass, steady pass) milliseconds of one re-balance at `nodes` x 8 GPUs."""

    class _Kube:
        async def patch_node(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
            return {}

    spec = EnergyPolicySpec.model_validate({"powerBudget": {"watts": nodes * 8 * 450}})
    policy = PolicyView("fleet", "uid", 0, "2026-01-01T00:00:00Z", 1, spec)
    reports, views = {}, []
    for n in range(nodes):
        name = f"node-{n:04d}"
        gpus = tuple(
            GpuInput(
                name,
                f"GPU-{n}-{g}",
                200,
                700,
                (Window(300 + (n * 7 + g * 13) % 400, 1000 + (n * 31 + g) % 3000, 700, 0.3),),
            )
            for g in range(8)
        )
        reports[name] = ReportView(
            name, "fleet", 1, ReportPhase.MANAGING, 1e9, gpu_watts=4000, budget_gpus=gpus
        )
        views.append(NodeView(name, {}, gpus=8))
    budgeter = Budgeter(_Kube(), settle_s=5.0)
    labels = {v.name: "fleet" for v in views}
    log = logging.getLogger(__name__)
    times = []
    for i in range(passes):
        started = time.perf_counter()
        asyncio.run(
            budgeter.rebalance(
                policy, views, labels, reports, now_s=1e9 + i, stale_after_s=90, logger=log
            )
        )
        times.append(1000.0 * (time.perf_counter() - started))
    return times[0], min(times[1:]) if passes > 1 else times[0]


def main(argv: Sequence[str] | None = None) -> int:
    """Run every allocation method, print the table and the scaling figure."""
    args = _parser().parse_args(argv)
    if not 0.0 < args.budget_fraction <= 1.0:
        print("triserve bench-cluster: --budget-fraction must be in (0, 1]", flush=True)
        return 2
    config = ClusterConfig(
        nodes=args.nodes,
        duration_s=args.duration_s,
        budget_fraction=args.budget_fraction,
        lower_budget_at_s=args.duration_s * 2 / 3,
        silence_node_at_s=args.duration_s / 2,
        seed=args.seed,
    )
    started = time.perf_counter()
    rows = [run(method, config) for method in METHODS]
    budget = rows[0]
    usable = 1.0 - config.margin_percent / 100.0
    print(
        f"{config.nodes} nodes x 8 GPUs (H100 SXM, A100 SXM, L40S, H100 PCIe; 4 pipelines; "
        "loads 0.25-0.85 of boost capacity, every third node bursty), "
        f"{config.duration_s:.0f} s simulated, seed {config.seed}; budget "
        f"{budget.budget_w:,.0f} W ({config.budget_fraction:g} of the default limits), "
        f"margin {config.margin_percent:g} %, lowered to {budget.lowered_budget_w:,.0f} W at "
        f"t={config.lower_budget_at_s:.0f} s; node-00 stops reporting at "
        f"t={config.silence_node_at_s:.0f} s.\n"
    )
    print(_table(rows))
    settle = budget.settle_after_lower_s
    when = "never" if settle is None else f"from {settle:.1f} s after the change"
    caps_s = budget.caps_settle_s
    caps_when = "never" if caps_s is None else f"{caps_s:.1f} s after the change"
    print(
        f"\nbudget row: usable budget {budget.budget_w * usable:,.0f} W, then "
        f"{budget.lowered_budget_w * usable:,.0f} W; the caps in force fit the lowered one "
        f"{caps_when}; 1 s power under the lowered budget {when}"
        f" (re-balance every {config.rebalance_s:g} s, watch latency "
        f"{config.watch_latency_s:g} s); {budget.cap_writes} node annotation writes in "
        f"{config.duration_s / config.rebalance_s:.0f} re-balances."
    )
    scaling: tuple[float, float] | None = None
    if args.scaling_nodes > 0:
        scaling = scaling_ms(args.scaling_nodes)
        print(
            f"re-balance at {args.scaling_nodes} nodes x 8 GPUs: {scaling[0]:.0f} ms first pass "
            f"(every cap written), {scaling[1]:.0f} ms steady pass (benchmark, this machine)."
        )
    print(f"(wall time {time.perf_counter() - started:.0f} s)")
    if args.json is not None:
        payload = {
            "config": dataclasses.asdict(config),
            "rows": [dataclasses.asdict(r) for r in rows],
            "scaling_ms": scaling,
        }
        args.json.write_text(json.dumps(payload, indent=2, default=str))
    return 0
