"""Component P through the production agent on a simulated node with a queued talker.

The policy (not a bench row) switches P on, so this drives the whole path: the CRD field,
`ControlSettings.from_policy`, the agent's downstream observations from the scrapes, the
loop's lock on the thinker's GPU, the metric, and the release on shutdown.
"""

from __future__ import annotations

from pathlib import Path

from triserve.api.models import EnergyPolicySpec
from triserve.control import Reason
from triserve.node_agent.agent import PolicyRef
from triserve.node_agent.exporter import build_registry
from triserve.sim import load_scenario, with_overrides
from triserve.simnode import AgentRun, run_agent


def test_the_thinker_gpu_is_capped_while_the_talker_queues_and_released_at_the_end(
    tmp_path: Path,
) -> None:
    # reference-high with a talker batch of 4: requests queue at the talker for long spells.
    scenario = with_overrides(
        load_scenario("reference-high"),
        {"pipeline.stages.1.max_batch": 4, "duration_s": 150.0, "warmup_s": 0.0},
    )
    spec = EnergyPolicySpec.model_validate({"triServe": {"pipeline": {"enabled": True}}})
    capped_locks: list[tuple[int, int]] = []
    talker_gpu_pipeline: list[tuple[int | None, str]] = []

    def record(run: AgentRun, now_s: float) -> None:
        thinker = run.agent.gpus[0]
        decision = thinker.last_decision
        lock = run.sim.backend.locked_sm_clocks_mhz(0)
        if decision is not None and decision.reason is Reason.PIPELINE and lock is not None:
            capped_locks.append(lock)
        talker = run.agent.gpus[1].last_decision
        if talker is not None and talker.reason is Reason.PIPELINE:
            talker_gpu_pipeline.append((talker.target_sm_clock_mhz, talker.message))

    run = run_agent(
        scenario,
        policy=PolicyRef("pipeline", spec, 1),
        after_tick=record,
        state_dir=tmp_path,
    )
    boost = run.sim.backend.default_max_sm_clock_mhz(0)
    assert capped_locks, "the thinker's GPU was never capped while the talker queued"
    assert all(hi < boost for _lo, hi in capped_locks)
    assert min(hi for _lo, hi in capped_locks) >= 0.6 * boost
    # The talker's own GPU hosts the queue: P never caps it (here its queued ticks are prefill
    # and search windows at boost already, so P's protection of it has nothing to lift).
    assert all(target is None for target, _ in talker_gpu_pipeline)
    capped_s = run.agent.gpus[0].totals.pipeline_capped_s
    # Prefill and the ridge search's boost windows keep their clock, so the cap shows in
    # the thinker's decode ticks only.
    assert capped_s > 0.0
    exported = [
        sample.value
        for family in build_registry(run.agent).collect()
        for sample in family.samples
        if sample.name == "triserve_gpu_pipeline_capped_seconds_total"
        and sample.labels["gpu"] == "0"
    ]
    assert exported == [capped_s]
    # No clock is left locked once the agent has shut down.
    for index in range(len(scenario.gpus)):
        assert run.sim.backend.locked_sm_clocks_mhz(index) is None
    assert run.agent.state_file.held() == {}
