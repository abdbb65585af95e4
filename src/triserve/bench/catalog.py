"""The bench's strategy catalogue and the offline sweeps behind static-best / power-cap-best.

Called by `triserve.bench.cli`. Every row is a `StrategySpec`; static and power-cap settings
are given as fractions of each GPU's boost clock / default power limit so one sweep fits
every device profile of a scenario. `pick_best` applies the selection rule: the lowest
energy whose p99 end-to-end latency is within +1% of default's.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from triserve.bench.oracle import oracle_factory
from triserve.bench.results import StrategyResult
from triserve.bench.runner import StrategySpec
from triserve.control import (
    ControlSettings,
    PowerCapStrategy,
    StaticClockStrategy,
    Strategy,
    StrategyKind,
)
from triserve.sim import Simulation

STRATEGIES: tuple[str, ...] = (
    "default",
    "static-best",
    "power-cap-best",
    "slo-dvfs",
    "tri-serve",
    "tri-serve-D",
    "tri-serve-A",
    "tri-serve-T",
    "oracle",
)
#: Static clocks swept, as fractions of each GPU's boost clock (1.0 = default's clock).
STATIC_FRACTIONS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
#: Power limits swept, as fractions of each GPU's default power limit.
POWER_FRACTIONS: tuple[float, ...] = (0.4, 0.5, 0.6, 0.7, 0.85, 1.0)
#: The p99 end-to-end latency bound (percent over default) the sweeps select under.
P99_BOUND_PCT = 1.0


def _static(
    fraction: float, sim: Simulation, gpu_index: int, settings: ControlSettings
) -> Strategy:
    top = sim.backend.default_max_sm_clock_mhz(gpu_index)
    return StaticClockStrategy(round(top * fraction))


def _power(fraction: float, sim: Simulation, gpu_index: int, settings: ControlSettings) -> Strategy:
    default_mw = sim.backend.power_limit_constraints_mw(gpu_index).default_mw
    return PowerCapStrategy(round(default_mw * fraction / 1000))


def sweep_specs(name: str) -> list[StrategySpec]:
    """The candidate rows of an offline sweep (``static-best`` or ``power-cap-best``)."""
    base = ControlSettings(strategy=StrategyKind.DEFAULT)
    if name == "static-best":
        return [
            StrategySpec(name, base, f"{f:.2f} x boost clock", partial(_static, f))
            for f in STATIC_FRACTIONS
        ]
    if name == "power-cap-best":
        return [
            StrategySpec(name, base, f"{f:.2f} x default power limit", partial(_power, f))
            for f in POWER_FRACTIONS
        ]
    raise ValueError(f"{name!r} is not a swept strategy")


def spec_for(name: str, settings: ControlSettings | None = None) -> StrategySpec:
    """The single row `name` (not a sweep); `settings` overrides the Tri-serve defaults."""
    tri = settings or ControlSettings()
    if name == "default":
        return StrategySpec(name, ControlSettings(strategy=StrategyKind.DEFAULT))
    if name == "slo-dvfs":
        return StrategySpec(name, ControlSettings(strategy=StrategyKind.SLO_DVFS))
    if name == "tri-serve":
        return StrategySpec(name, tri)
    if name.startswith("tri-serve-") and name[-1] in "DAT":
        return StrategySpec(name, tri.only(name[-1]), f"{name[-1]} only")
    if name == "oracle":
        return StrategySpec(name, tri, "ORACLE: future phases", oracle_factory)
    known = ", ".join(STRATEGIES)
    raise ValueError(f"unknown strategy {name!r}; choose from {known}")


def pick_best(default: StrategyResult, candidates: Sequence[StrategyResult]) -> StrategyResult:
    """Lowest energy per token among candidates whose p99 e2e is within the bound."""
    limit_s = default.p99_e2e_s * (1.0 + P99_BOUND_PCT / 100.0)
    ok = [c for c in candidates if c.p99_e2e_s <= limit_s]
    pool = ok or [min(candidates, key=lambda c: c.p99_e2e_s)]
    return max(pool, key=lambda c: c.tokens_per_j)
