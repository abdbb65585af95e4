"""How much faster than real time the simulator runs: `python -m triserve.sim.speed`.

Used by tests/benchmarks/test_sim_speed.py and by people checking the ≥100x target. Runs a
scenario with a 50 ms tick callback that reads `backend.sample()` for every GPU (what a
control loop does) and reports simulated seconds per wall-clock second.
"""

from __future__ import annotations

import argparse
import time

from triserve.sim.scenario import load_scenario
from triserve.sim.simulation import Simulation

__all__ = ["main", "measure_speed_factor"]


def measure_speed_factor(
    scenario: str = "reference",
    duration_s: float | None = None,
    tick_s: float = 0.05,
    seed: int = 0,
) -> float:
    """Simulated seconds per wall second for `scenario` with a trivial per-tick sampler."""
    sc = load_scenario(scenario)
    sim = Simulation(sc, seed=seed)
    backend = sim.backend
    n = backend.device_count()

    def on_tick(now_s: float) -> None:
        for g in range(n):
            backend.sample(g)

    end_s = duration_s if duration_s is not None else sc.duration_s
    t0 = time.perf_counter()
    sim.run_until(end_s, on_tick=on_tick, tick_s=tick_s)
    wall_s = time.perf_counter() - t0
    return end_s / wall_s if wall_s > 0 else float("inf")


def main(argv: list[str] | None = None) -> int:
    """CLI: print the speed factor of a scenario."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("scenario", nargs="?", default="reference")
    ap.add_argument("--duration-s", type=float, default=None)
    ap.add_argument("--tick-s", type=float, default=0.05)
    args = ap.parse_args(argv)
    factor = measure_speed_factor(args.scenario, args.duration_s, args.tick_s)
    print(
        f"{args.scenario}: {factor:.0f}x faster than real time (tick {args.tick_s * 1000:.0f} ms)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
