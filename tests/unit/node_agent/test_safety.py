"""Every safety path hands the clocks back to the PMU (SimBackend shows the lock state)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.eventually import eventually_sync
from triserve.api.status import GpuState
from triserve.control import ControlLoop, ControlSettings, Decision, Reason, TickContext
from triserve.gpu.backend import GpuBackend, GpuLostError
from triserve.node_agent.agent import NodeAgent
from triserve.node_agent.safety import GuardedBackend, StateFile, Watchdog, restore_stale
from triserve.sim import Simulation, load_scenario, with_overrides
from triserve.simnode.node import SimNode

from .conftest import policy, run

Make = Callable[..., tuple[NodeAgent, SimNode]]


@pytest.fixture
def sim() -> Simulation:
    """The reference node with `counters: ideal`, so the agent holds clock locks to restore.

    These tests are about restoring locks, not about savings: under realistic counters the
    agent locks less often and a 20 s run may hold none (docs/calibration.md).
    """
    sc = with_overrides(load_scenario("reference"), {"telemetry.counters": "ideal"})
    return Simulation(sc, seed=0)


def locks(sim: Simulation) -> list[tuple[int, int] | None]:
    return [sim.backend.locked_sm_clocks_mhz(i) for i in range(sim.backend.device_count())]


def test_enforce_locks_and_the_state_file_names_the_gpu_before_the_lock(
    sim: Simulation, make_agent: Make, tmp_path: Path
) -> None:
    _agent, node = make_agent()
    seen = 0

    def tick(now_s: float) -> None:
        # Locks come and go (stalls are parked, then unlocked): check at every tick.
        nonlocal seen
        node.on_tick(now_s)
        held_now = [i for i, lock in enumerate(locks(sim)) if lock is not None]
        if not held_now:
            return
        seen += 1
        held = json.loads((tmp_path / "state.json").read_text())["gpus"]
        assert all(sim.backend.identity(i).uuid in held for i in held_now)

    sim.run_until(20.0, on_tick=tick, tick_s=0.05)
    assert seen > 0


def test_shutdown_restores_every_gpu_and_clears_the_state_file(
    sim: Simulation, make_agent: Make, tmp_path: Path
) -> None:
    agent, node = make_agent()
    run(sim, node, 20.0)
    agent.shutdown("SIGTERM")
    assert locks(sim) == [None, None]
    assert json.loads((tmp_path / "state.json").read_text())["gpus"] == {}
    assert all(g.state is GpuState.RELEASED for g in agent.gpus.values())


def test_start_up_restores_locks_a_crashed_agent_left(sim: Simulation, tmp_path: Path) -> None:
    state = StateFile(tmp_path / "state.json")
    GuardedBackend(sim.backend, state).lock_sm_clocks(1, 500, 600)  # then "crash"
    assert locks(sim)[1] is not None
    fresh = NodeAgent(sim.backend, "n", StateFile(tmp_path / "state.json"))
    assert fresh.startup() == [1]
    assert locks(sim) == [None, None]


def test_corrupt_state_file_restores_every_gpu(sim: Simulation, tmp_path: Path) -> None:
    sim.backend.lock_sm_clocks(0, 500, 600)
    (tmp_path / "state.json").write_text("{not json")
    assert restore_stale(sim.backend, StateFile(tmp_path / "state.json")).restored == [0, 1]
    assert locks(sim) == [None, None]


def test_removed_policy_releases_every_gpu(sim: Simulation, make_agent: Make) -> None:
    agent, node = make_agent()
    run(sim, node, 20.0)
    agent.set_policy(None)
    assert locks(sim) == [None, None]
    assert not any(g.governed for g in agent.gpus.values())


def test_gpu_leaving_management_is_restored(sim: Simulation, make_agent: Make) -> None:
    agent, node = make_agent()
    run(sim, node, 20.0)
    sim.backend.lock_sm_clocks(0, 500, 600)  # make sure GPU 0 holds a lock right now
    agent.gpus[0].locked = True
    agent.state_file.mark(sim.backend.identity(0).uuid, 0, clocks=True)
    agent.set_pods([p for p in node.pods if p.stage != "thinker"])
    run(sim, node, 21.0)
    assert locks(sim)[0] is None and agent.gpus[0].state is GpuState.RELEASED
    assert agent.gpus[1].governed


def test_opt_out_pod_keeps_its_gpu_at_defaults(sim: Simulation, make_agent: Make) -> None:
    agent, node = make_agent()
    from dataclasses import replace

    agent.set_pods([replace(p, opt_out=p.stage == "thinker") for p in node.pods])
    run(sim, node, 20.0)
    assert locks(sim)[0] is None and not agent.gpus[0].governed
    assert "opted out" in agent.gpus[0].message


def test_repeated_gpu_errors_degrade_that_gpu_only(sim: Simulation, make_agent: Make) -> None:
    agent, node = make_agent()
    run(sim, node, 15.0)
    sim.backend.mark_lost(0)
    run(sim, node, 16.0)
    # A lost GPU cannot be read back at its defaults: never "Released", always retried.
    assert agent.gpus[0].state is GpuState.RESTORE_FAILED
    assert 0 in agent.releases.unrestored
    assert agent.gpus[1].governed and agent.errors["nvml"] >= 3
    decided_s16 = sum(agent.gpus[1].totals.decisions.values())
    run(sim, node, 20.0)  # the healthy GPU keeps being controlled
    assert agent.gpus[1].governed
    assert sum(agent.gpus[1].totals.decisions.values()) > decided_s16, "GPU 1 stopped deciding"


def test_observe_never_actuates(sim: Simulation, make_agent: Make) -> None:
    calls: list[str] = []
    backend = sim.backend
    for name in ("lock_sm_clocks", "reset_sm_clocks", "set_power_limit_mw", "reset_power_limit"):
        original = getattr(backend, name)

        def spy(*args: object, _name: str = name, _orig: Callable[..., None] = original) -> None:
            calls.append(_name)
            _orig(*args)

        setattr(backend, name, spy)
    agent, node = make_agent(policy(mode="Observe"))
    run(sim, node, 30.0)
    agent.set_policy(None)
    agent.shutdown()
    assert calls == [] and locks(sim) == [None, None]
    assert sum(agent.gpus[0].totals.decisions.values()) > 0  # it did decide, and recorded it


def test_watchdog_restores_when_the_tick_stalls(sim: Simulation, make_agent: Make) -> None:
    agent, node = make_agent()
    run(sim, node, 20.0)
    sim.backend.lock_sm_clocks(0, 500, 600)
    agent.state_file.mark(sim.backend.identity(0).uuid, 0, clocks=True)
    dog = Watchdog(0.2, agent.on_watchdog, poll_s=0.02)
    dog.start()
    try:  # no beats: the "loop" is stuck
        eventually_sync(lambda: dog.trips, "the watchdog to trip", 3.0, poll_s=0.02)
    finally:
        dog.stop()
    assert dog.trips == 1 and locks(sim) == [None, None]
    run(sim, node, 25.0)  # ticks resume: loops are rebuilt and control again
    assert any(g.governed for g in agent.gpus.values())


class _Asks:
    """A strategy that asks for one clock whatever the device or the policy allows."""

    name = "asks"

    def __init__(self, clock_mhz: int) -> None:
        self.clock_mhz = clock_mhz

    def decide(self, ctx: TickContext) -> Decision:
        return Decision(self.clock_mhz, Reason.DEFAULT, f"asks for {self.clock_mhz} MHz")


def test_no_lock_leaves_the_device_range_or_the_policys_clock_limits(
    sim: Simulation, make_agent: Make
) -> None:
    clocks = sim.backend.supported_sm_clocks_mhz(0)
    seen: set[tuple[int, int] | None] = set()
    for ask_mhz, limits, allowed in (
        (1, {}, (min(clocks), max(clocks))),
        (99_999, {"minMHz": 900}, (900, max(clocks))),
        (300, {"minMHz": 900, "maxMHz": 1200}, (900, 1200)),
        (1980, {"minMHz": 900, "maxMHz": 1200}, (900, 1200)),
    ):

        def make_loop(
            backend: GpuBackend, index: int, settings: ControlSettings, ask: int = ask_mhz
        ) -> ControlLoop:
            return ControlLoop(backend, index, _Asks(ask), settings)

        agent, node = make_agent(policy(clockLimits=limits), loop_factory=make_loop)
        seen.clear()

        def tick(now_s: float, node: SimNode = node) -> None:
            node.on_tick(now_s)
            seen.update(locks(sim))

        sim.run_until(sim.now_s + 2.0, on_tick=tick, tick_s=0.05)
        agent.shutdown()
        held = [lock for lock in seen if lock is not None]
        assert held, f"asking for {ask_mhz} MHz under {limits} locked something"
        for lo, hi in held:
            assert allowed[0] <= lo <= hi <= allowed[1], (ask_mhz, limits, lo, hi)


# Slow: shutdown retries the lost GPU's restore for its whole shutdown_retry_s (10 s)
# of wall clock.
@pytest.mark.slow
def test_lost_gpu_restore_failure_is_logged_not_raised(sim: Simulation, make_agent: Make) -> None:
    agent, node = make_agent()
    run(sim, node, 20.0)
    sim.backend.mark_lost(1)
    with pytest.raises(GpuLostError):
        sim.backend.sample(1)
    assert agent.errors["restore"] == 0
    assert agent.shutdown() == [1], "shutdown returns (not raises) the GPU it could not restore"
    assert agent.errors["restore"] > 0, "the failed restore is counted"
    assert agent.gpus[1].state is GpuState.RESTORE_FAILED
    held = [entry["index"] for entry in agent.state_file.held().values()]
    assert held == [1], "the state file keeps GPU 1 so the next agent restores it at start-up"
    assert sim.backend.locked_sm_clocks_mhz(0) is None, "the healthy GPU is still restored"


def test_a_static_clock_above_the_gpus_maximum_is_clamped_and_said(
    sim: Simulation, make_agent: Make
) -> None:
    agent, node = make_agent(policy(strategy="StaticClock", staticClock={"smClockMHz": 4000}))
    run(sim, node, 2.0)
    top = max(sim.backend.supported_sm_clocks_mhz(0))
    assert agent.errors["policy"] == len(agent.gpus), "said once per GPU, not every tick"
    for gpu in agent.gpus.values():
        assert gpu.state is GpuState.MANAGED
        assert "staticClock.smClockMHz 4000" in gpu.message and f"{top} MHz" in gpu.message
        assert gpu.last_decision is not None
        assert gpu.last_decision.message == f"static clock {top} MHz"
        # The top clock is the PMU's own ceiling, so it needs no lock; a lock must be exactly it.
        assert sim.backend.locked_sm_clocks_mhz(gpu.index) in (None, (top, top))
