"""Cluster power-budget simulation: many heterogeneous nodes under one budget.

Called by `triserve bench-cluster` (`triserve.bench.cluster_cli`). Each GPU is a light
agent: a fluid queue of tokens served at the rate its stage's work runs at under its power
cap. That rate and the power drawn come from the simulator's own device physics
(`triserve.sim.physics.GpuModel.power_at`, `Phase.at`) for the GPU's profile: at a cap the
PMU runs the highest clock whose power fits under it, as `GpuModel` does. The GPUs of a node
run one pipeline's stages (prefill, decode, one-shot) at the node's load, and each GPU's
queue is independent (no inter-stage stalls: this bench is about where the watts go, the
per-node bench covers the controller).

The operator side is the production code: every report interval each node's agent writes
a `NodeEnergyReportStatus` (its GPUs' limits, caps and operating points), read back through
`aggregation.report_view`; every re-balance the operator's `budgeting.Budgeter` allocates
and writes `triserve.io/power-caps` annotations, which each agent applies after a watch
latency (`parse_power_caps`; no cap yet: the minimum limit, like the real agent).
Compared rows share seeds and arrivals: uniform caps (the usable budget split evenly) and
caps proportional to each GPU's default power limit (TDP) are fixed caps, both scaled to add
up to the usable budget within the GPUs' limit ranges, and re-split only when it changes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import math
import random
from collections import deque
from collections.abc import Sequence
from functools import cache
from typing import Any

from triserve.api.models import EnergyPolicySpec
from triserve.api.powercaps import POWER_CAPS_ANNOTATION, PowerCapsError, parse_power_caps
from triserve.api.status import (
    GpuReport,
    GpuState,
    NodeEnergyReportStatus,
    OperatingPoint,
    ReportPhase,
)
from triserve.operator.aggregation import ReportView, report_view
from triserve.operator.budgeting import Budgeter
from triserve.operator.placement import NodeView, PolicyView
from triserve.sim import GpuModel, Kernel, Phase, get_profile

log = logging.getLogger(__name__)

POLICY = "fleet-budget"
TEMPERATURE_C = 60.0
#: Stage kinds: (kernel, tokens one round of it produces). Figures from the reference
#: scenario's thinker (prefill, decode) and code2wav (one-shot) stages.
_PREFILL_TOKENS = 2048
_DECODE_BATCH = 64
_ONESHOT_TOKENS = 512
#: Pipelines: the stage kind of each of a node's 8 GPUs.
PIPELINES: dict[str, tuple[str, ...]] = {
    "omni": ("prefill", "prefill", "decode", "decode", "decode", "oneshot", "oneshot", "oneshot"),
    "disaggregated": ("prefill",) * 4 + ("decode",) * 4,
    "decode-heavy": ("prefill",) * 2 + ("decode",) * 6,
    "prefill-heavy": ("prefill",) * 6 + ("decode",) * 2,
}
PROFILE_KEYS = ("h100-sxm", "a100-sxm-80gb", "l40s", "h100-pcie")
LOADS = (0.25, 0.45, 0.65, 0.85)


def _kernel(kind: str) -> tuple[Kernel, float]:
    if kind == "prefill":
        flops = 6.4e10 * _PREFILL_TOKENS
        return Kernel(flops, flops / 600, 0.6, 0.9, 0.98, 0.2), float(_PREFILL_TOKENS)
    if kind == "decode":
        b = _DECODE_BATCH
        kernel = Kernel(6.4e10 * b, 6.0e10 + 5.0e8 * b, 0.04, 0.15, 0.97, 0.5, 0.03)
        return kernel, float(b)
    flops = 5.0e10 * _ONESHOT_TOKENS
    return Kernel(flops, flops / 47, 0.5, 0.6, 0.9, 0.4), float(_ONESHOT_TOKENS)


@dataclasses.dataclass(frozen=True, slots=True)
class Table:
    """One (profile, stage kind): serving rate and busy power at every whole-watt cap."""

    min_w: int
    max_w: int
    default_w: int
    idle_w: float
    rate_tps: tuple[float, ...]  #: index: cap - min_w
    busy_w: tuple[float, ...]
    boost_rate_tps: float

    def at(self, cap_w: float) -> tuple[float, float]:
        """(tokens/s when busy, watts when busy) under a cap."""
        i = min(max(int(cap_w) - self.min_w, 0), self.max_w - self.min_w)
        return self.rate_tps[i], self.busy_w[i]


@cache
def table(profile_key: str, kind: str) -> Table:
    """The rate/power table of a stage kind on a profile, from the simulator's physics."""
    profile = get_profile(profile_key)
    model = GpuModel(profile, initial_temperature_c=TEMPERATURE_C)
    kernel, tokens = _kernel(kind)
    phase = Phase(kind, (kernel,))
    clocks = profile.supported_clocks_mhz
    power = [model.power_at(c, phase, TEMPERATURE_C) for c in clocks]
    lo, hi = int(profile.power_limit_min_w), int(profile.power_limit_max_w)
    rates, busy = [], []
    for cap in range(lo, hi + 1):
        fits = [i for i, p in enumerate(power) if p <= cap]
        i = fits[-1] if fits else 0
        rates.append(tokens / phase.at(profile, clocks[i]).round_s)
        busy.append(power[i])
    idle = model.power_at(profile.idle_clock_mhz, None, TEMPERATURE_C)
    boost = tokens / phase.at(profile, clocks[-1]).round_s
    return Table(lo, hi, int(profile.power_limit_default_w), idle, tuple(rates), tuple(busy), boost)


@dataclasses.dataclass(slots=True)
class SimGpu:
    """One GPU's light agent: its queue, cap, and the report window it is filling."""

    node: str
    uuid: str
    table: Table
    rate_tps: float  #: mean arrival rate
    bursty: bool
    cap_w: float
    backlog: float = 0.0
    served: float = 0.0
    dropped: float = 0.0
    win_j: float = 0.0
    win_tokens: float = 0.0
    win_capped_s: float = 0.0
    win_busy_s: float = 0.0
    win_s: float = 0.0
    points: deque[OperatingPoint] = dataclasses.field(default_factory=lambda: deque(maxlen=4))


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterConfig:
    """A cluster run: its size, budget, timing and events."""

    nodes: int = 16
    budget_fraction: float = 0.55  #: of the sum of default power limits
    margin_percent: float = 5.0
    duration_s: float = 300.0
    dt_s: float = 0.1
    report_s: float = 10.0
    rebalance_s: float = 5.0
    watch_latency_s: float = 0.5  #: mean; node n waits 0.2 s to 2 x the mean (varied by n)
    lower_budget_at_s: float | None = 200.0  #: when the budget drops (None: never)
    lower_budget_to: float = 0.85  #: as a share of the first budget
    silence_node_at_s: float | None = 150.0  #: when node 0 stops reporting
    seed: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class RowResult:
    """One allocation method's run."""

    method: str
    tokens_per_s: float
    p99_delay_s: float
    dropped_share: float
    max_window_w: float  #: highest 1 s mean fleet power
    max_over_budget_w: float  #: highest 1 s mean power above the budget then in force
    budget_w: float
    lowered_budget_w: float
    settle_after_lower_s: float | None  #: until 1 s power stayed under the lowered budget
    cap_writes: int
    p90_delay_s: float = 0.0
    max_caps_w: float = 0.0  #: highest sum of the caps in force before the budget drops
    caps_settle_s: float | None = None  #: until the caps in force fit the lowered budget


def fleet(config: ClusterConfig) -> list[SimGpu]:
    """The cluster's GPUs: profile, pipeline and load vary by node (deterministic)."""
    rng = random.Random(config.seed)
    gpus = []
    for n in range(config.nodes):
        profile = PROFILE_KEYS[n % len(PROFILE_KEYS)]
        pipeline = list(PIPELINES)[(n // len(PROFILE_KEYS)) % len(PIPELINES)]
        load = LOADS[(n + n // 4) % len(LOADS)]
        bursty = n % 3 == 0
        for g, kind in enumerate(PIPELINES[pipeline]):
            t = table(profile, kind)
            rate = t.boost_rate_tps * load * rng.uniform(0.9, 1.1)
            gpus.append(SimGpu(f"node-{n:02d}", f"GPU-{n:02d}-{g}", t, rate, bursty, t.min_w))
    return gpus


def _fixed_caps(method: str, gpus: Sequence[SimGpu], usable_w: float) -> list[float]:
    """Uniform or TDP-proportional caps, scaled so that they add up to the usable budget.

    Each GPU's share is `scale x weight` clamped to its power-limit range; the scale is
    bisected so that the clamped caps add up to the budget (a plain share would overrun it
    wherever a minimum limit is above the share).
    """
    weights = [1.0 if method == "uniform" else float(g.table.default_w) for g in gpus]

    def caps(scale: float) -> list[float]:
        return [
            min(max(scale * w, g.table.min_w), g.table.max_w)
            for g, w in zip(gpus, weights, strict=True)
        ]

    low, high = 0.0, max(g.table.max_w / w for g, w in zip(gpus, weights, strict=True))
    for _ in range(60):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if sum(caps(mid)) <= usable_w else (low, mid)
    return caps(low)


class _Kube:
    """The operator's node writes, kept as annotations the agents read after a latency."""

    def __init__(self) -> None:
        self.annotations: dict[str, str | None] = {}
        self.history: list[tuple[float, str, str | None]] = []
        self.now_s = 0.0

    async def patch_node(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        text = patch["metadata"]["annotations"][POWER_CAPS_ANNOTATION]
        self.annotations[name] = text
        self.history.append((self.now_s, name, text))
        return {}


def _report(node: str, gpus: Sequence[SimGpu], now_s: float) -> ReportView | None:
    """Close each GPU's window and write the node's report as the agent would."""
    reports: list[GpuReport] = []
    for g in gpus:
        if g.win_s > 0:
            g.points.append(
                OperatingPoint(
                    watts=round(g.win_j / g.win_s, 1),
                    tokens_per_second=round(g.win_tokens / g.win_s, 2),
                    cap_watts=round(g.cap_w, 1),
                    capped_seconds=round(g.win_capped_s, 2),
                    busy_seconds=round(g.win_busy_s, 2),
                    seconds=round(g.win_s, 2),
                )
            )
        power_w = g.win_j / g.win_s if g.win_s else 0.0
        g.win_j = g.win_tokens = g.win_capped_s = g.win_busy_s = g.win_s = 0.0
        reports.append(
            GpuReport(
                index=len(reports),
                uuid=g.uuid,
                state=GpuState.MANAGED,
                power_watts=round(power_w, 1),
                power_limit_min_watts=g.table.min_w,
                power_limit_max_watts=g.table.max_w,
                power_cap_watts=round(g.cap_w, 1),
                operating_points=list(g.points),
            )
        )
    when = dt.datetime.fromtimestamp(now_s, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    status = NodeEnergyReportStatus(
        policy=POLICY, phase=ReportPhase.MANAGING, last_report_time=when, gpus=reports
    )
    body = {"metadata": {"name": node}, "spec": {"nodeName": node}, "status": status.to_k8s()}
    return report_view(body)


def _agent_cap(g: SimGpu, text: str | None) -> float:
    """What the agent applies: its cap from the annotation, else the minimum limit."""
    try:
        caps = parse_power_caps(text) if text else None
    except PowerCapsError:
        caps = None
    watts = caps.watts.get(g.uuid) if caps is not None and caps.policy == POLICY else None
    if watts is None:
        return float(g.table.min_w)
    return float(min(max(watts, g.table.min_w), g.table.max_w))


@dataclasses.dataclass(slots=True)
class _Meter:
    """Fleet power over 1 s windows, against the budget in force."""

    lowered_at_s: float | None
    window_w: float = 0.0
    steps: int = 0
    max_w: float = 0.0
    max_over_w: float = -math.inf
    settled_at_s: float | None = None

    def add(
        self, power_w: float, dt_s: float, now_s: float, budget_w: float, lowered: bool
    ) -> None:
        self.window_w += power_w
        self.steps += 1
        if self.steps * dt_s < 1.0 - 1e-9:
            return
        mean_w = self.window_w / self.steps
        self.window_w, self.steps = 0.0, 0
        self.max_w = max(self.max_w, mean_w)
        self.max_over_w = max(self.max_over_w, mean_w - budget_w)
        if lowered and mean_w > budget_w:
            self.settled_at_s = None
        elif lowered and self.settled_at_s is None:
            self.settled_at_s = now_s - (self.lowered_at_s or 0.0)


class _Operator:
    """The operator's budget timer and the agents' view of its annotations."""

    def __init__(self, config: ClusterConfig, by_node: dict[str, list[SimGpu]]) -> None:
        self.config = config
        self.by_node = by_node
        self.kube = _Kube()
        self.budgeter = Budgeter(self.kube, settle_s=config.rebalance_s)
        self.reports: dict[str, ReportView] = {}
        self._in_flight: deque[tuple[float, str, str | None]] = deque()
        self._seen: dict[str, str | None] = {}
        self._next_s = 0.0

    def step(self, now_s: float, budget_w: float) -> None:
        """Deliver annotations past their watch latency, apply caps, re-balance when due."""
        self.kube.now_s = now_s
        self._in_flight.extend(self.kube.history)
        self.kube.history.clear()
        # Each node's watch delivers at its own latency: writes to different nodes land out
        # of order, as they do in a cluster.
        still: deque[tuple[float, str, str | None]] = deque()
        for sent_s, node, text in self._in_flight:
            if sent_s + self._latency_s(node) <= now_s:
                self._seen[node] = text
            else:
                still.append((sent_s, node, text))
        self._in_flight = still
        for members in self.by_node.values():
            for g in members:
                g.cap_w = _agent_cap(g, self._seen.get(g.node))
        if now_s >= self._next_s:
            self._next_s += self.config.rebalance_s
            _rebalance(
                self.budgeter, self.config, budget_w, self.by_node, self.kube, self.reports, now_s
            )

    def _latency_s(self, node: str) -> float:
        n = int(node.rsplit("-", 1)[1])
        return self.config.watch_latency_s * (0.4 + 1.6 * ((n * 7) % 11) / 10.0)

    def report(self, now_s: float) -> None:
        """Every node writes its report (except a node that went silent)."""
        silent_at = self.config.silence_node_at_s
        for node, members in self.by_node.items():
            view = _report(node, members, now_s)
            if view is not None and not (
                silent_at is not None and now_s >= silent_at and node == "node-00"
            ):
                self.reports[node] = view


def run(method: str, config: ClusterConfig) -> RowResult:
    """One row: `budget` (the operator's allocation), `uniform`, `tdp` or `uncapped`."""
    gpus = fleet(config)
    rng = random.Random(config.seed + 1)
    first_w = round(config.budget_fraction * sum(g.table.default_w for g in gpus))
    lowered_w = round(first_w * config.lower_budget_to)
    usable = 1.0 - config.margin_percent / 100.0
    by_node: dict[str, list[SimGpu]] = {}
    for g in gpus:
        by_node.setdefault(g.node, []).append(g)
    operator = _Operator(config, by_node) if method == "budget" else None
    _set_fixed(method, gpus, first_w * usable)
    delays = [0.0] * 60_001  #: token weights by queueing delay in ms bins
    meter = _Meter(config.lower_budget_at_s)
    next_report_s = config.report_s
    lowered = False
    max_caps_w, caps_settle_s = 0.0, None
    for step in range(round(config.duration_s / config.dt_s)):
        now_s = step * config.dt_s
        if (
            not lowered
            and config.lower_budget_at_s is not None
            and now_s >= config.lower_budget_at_s
        ):
            lowered = True
            _set_fixed(method, gpus, lowered_w * usable)
        budget_w = lowered_w if lowered else first_w
        if operator is not None:
            operator.step(now_s, budget_w)
        meter.add(
            _step(gpus, rng, now_s, config.dt_s, delays), config.dt_s, now_s, budget_w, lowered
        )
        caps_w = sum(g.cap_w for g in gpus)
        if not lowered:
            max_caps_w = max(max_caps_w, caps_w)
        elif caps_w > lowered_w * usable + 1e-6:
            caps_settle_s = None
        elif caps_settle_s is None:
            caps_settle_s = now_s - (config.lower_budget_at_s or 0.0)
        if now_s >= next_report_s:
            next_report_s += config.report_s
            if operator is not None:
                operator.report(now_s)
            else:
                for node, members in by_node.items():
                    _report(node, members, now_s)
    served = sum(g.served for g in gpus)
    offered = served + sum(g.dropped for g in gpus) + sum(g.backlog for g in gpus)
    return RowResult(
        method=method,
        tokens_per_s=served / config.duration_s,
        p99_delay_s=_percentile(delays, 0.99),
        p90_delay_s=_percentile(delays, 0.90),
        max_caps_w=max_caps_w,
        caps_settle_s=caps_settle_s,
        dropped_share=1.0 - served / offered if offered else 0.0,
        max_window_w=meter.max_w,
        max_over_budget_w=meter.max_over_w,
        budget_w=first_w,
        lowered_budget_w=lowered_w,
        settle_after_lower_s=meter.settled_at_s,
        cap_writes=operator.budgeter.writes if operator is not None else 0,
    )


def _set_fixed(method: str, gpus: Sequence[SimGpu], usable_w: float) -> None:
    """Fixed caps for the uniform and TDP rows, the maximum limit for the uncapped row."""
    if method in ("uniform", "tdp"):
        for g, cap in zip(gpus, _fixed_caps(method, gpus, usable_w), strict=True):
            g.cap_w = cap
    elif method == "uncapped":
        for g in gpus:
            g.cap_w = g.table.max_w


def _rebalance(
    budgeter: Budgeter,
    config: ClusterConfig,
    budget_w: float,
    by_node: dict[str, list[SimGpu]],
    kube: _Kube,
    reports: dict[str, ReportView],
    now_s: float,
) -> None:
    """One pass of the operator's budget timer, on the simulated cluster's state."""
    spec = EnergyPolicySpec.model_validate(
        {"powerBudget": {"watts": int(budget_w), "marginPercent": config.margin_percent}}
    )
    policy = PolicyView(POLICY, "uid", 0, "2026-01-01T00:00:00Z", 1, spec)
    nodes = [
        NodeView(name, {}, gpus=len(members), power_caps=kube.annotations.get(name))
        for name, members in by_node.items()
    ]
    asyncio.run(
        budgeter.rebalance(
            policy,
            nodes,
            {n.name: POLICY for n in nodes},
            reports,
            now_s=now_s,
            stale_after_s=3 * config.report_s,
            logger=log,
        )
    )


def _step(
    gpus: Sequence[SimGpu], rng: random.Random, now_s: float, dt_s: float, delays: list[float]
) -> float:
    """Advance every GPU's queue by `dt_s`; returns the fleet's power over the step."""
    total_w = 0.0
    burst_on = (now_s % 20.0) < 10.0
    for g in gpus:
        rate = g.rate_tps * ((1.5 if burst_on else 0.5) if g.bursty else 1.0)
        mean = rate * dt_s
        arrived = max(0.0, rng.gauss(mean, math.sqrt(mean))) if mean > 0 else 0.0
        rate_tps, busy_w = g.table.at(g.cap_w)
        limit = rate_tps * 20.0  # 20 s of queued work: beyond it requests are refused
        g.backlog += arrived
        if g.backlog > limit:
            g.dropped += g.backlog - limit
            g.backlog = limit
        bin_ms = min(int(1000.0 * g.backlog / rate_tps), len(delays) - 1)
        delays[bin_ms] += arrived
        served = min(g.backlog, rate_tps * dt_s)
        g.backlog -= served
        g.served += served
        busy = served / (rate_tps * dt_s)
        power_w = g.table.idle_w + busy * (busy_w - g.table.idle_w)
        total_w += power_w
        g.win_j += power_w * dt_s
        g.win_tokens += served
        g.win_s += dt_s
        g.win_busy_s += busy * dt_s
        if busy_w < g.table.busy_w[-1] - 1e-9 and g.cap_w < g.table.max_w:
            g.win_capped_s += busy * dt_s
    return total_w


def _percentile(weights: Sequence[float], q: float) -> float:
    """The `q` quantile of the token-weighted delay histogram (1 ms bins), seconds."""
    total = sum(weights)
    if total <= 0:
        return 0.0
    seen = 0.0
    for ms, w in enumerate(weights):
        seen += w
        if seen >= q * total:
            return ms / 1000.0
    return (len(weights) - 1) / 1000.0
