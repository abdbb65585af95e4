"""The GPU + multi-stage serving simulator: physics, PMU, counters, pipeline workload.

Public surface, used by benchmarks, tests and the live demo::

    scenario = load_scenario("reference")        # or a path to a YAML file
    sim = Simulation(scenario, seed=0)
    sim.run_until(60.0, on_tick=lambda now_s: ..., tick_s=0.05)
    sim.report()

Controllers must only use `sim.backend` and the serving snapshots/expositions; the one
exception, `sim.oracle_view()`, is labelled ORACLE ONLY. Calibration sources and the
meaning of every simulated counter: docs/calibration.md. A bench varies a loaded scenario
with ``with_overrides(scenario, {"pmu.idle_hold_s": 10.0})``.
"""

from __future__ import annotations

from triserve.sim.oracle import ORACLE_WARNING, OracleSegment, OracleView
from triserve.sim.physics import GpuModel, Kernel, Phase
from triserve.sim.profiles import PROFILES, DeviceProfile, get_profile
from triserve.sim.report import GpuReport, SimReport
from triserve.sim.scenario import Scenario, ScenarioError, load_scenario, with_overrides
from triserve.sim.simulation import Simulation, StagePlacement

__all__ = [
    "ORACLE_WARNING",
    "PROFILES",
    "DeviceProfile",
    "GpuModel",
    "GpuReport",
    "Kernel",
    "OracleSegment",
    "OracleView",
    "Phase",
    "Scenario",
    "ScenarioError",
    "SimReport",
    "Simulation",
    "StagePlacement",
    "get_profile",
    "load_scenario",
    "with_overrides",
]
