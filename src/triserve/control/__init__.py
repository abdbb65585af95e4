"""triserve.control — the Tri-serve controller, its baselines and the per-GPU control loop.

A pure library (no I/O, no Kubernetes, no NVML, no simulator): the node agent and the bench
build a `ControlLoop` per GPU over a `GpuBackend` and call `tick` every control interval.

    settings = ControlSettings.from_policy(spec)
    loop = ControlLoop(backend, gpu_index, None, settings)
    result = loop.tick(now_s, stages)   # a TickResult: sample, signals, decision, energy
    loop.release()
"""

from __future__ import annotations

from triserve.control.baselines import (
    DefaultStrategy,
    PhaseDvfsStrategy,
    PowerCapStrategy,
    SloDvfsStrategy,
    StaticClockStrategy,
    build_strategy,
)
from triserve.control.decisions import (
    Decision,
    DeviceLimits,
    Reason,
    StageSignals,
    Strategy,
    TickContext,
)
from triserve.control.loop import ControlLoop, TickResult
from triserve.control.probes import ProbeSchedule, ProbeSettings
from triserve.control.settings import ControlSettings, IntensitySource, StrategyKind
from triserve.control.slotargets import SloMeasured, SloReadout, SloTargetSetting
from triserve.control.tristrategy import TriServeStrategy

__all__ = [
    "ControlLoop",
    "ControlSettings",
    "Decision",
    "DefaultStrategy",
    "DeviceLimits",
    "IntensitySource",
    "PhaseDvfsStrategy",
    "PowerCapStrategy",
    "ProbeSchedule",
    "ProbeSettings",
    "Reason",
    "SloDvfsStrategy",
    "SloMeasured",
    "SloReadout",
    "SloTargetSetting",
    "StageSignals",
    "StaticClockStrategy",
    "Strategy",
    "StrategyKind",
    "TickContext",
    "TickResult",
    "TriServeStrategy",
    "build_strategy",
]
