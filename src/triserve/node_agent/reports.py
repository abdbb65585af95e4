"""The NodeEnergyReport: per-GPU state and the window's energy and efficiency.

`Reporter(agent).build(now)` closes every GPU's report window and turns the agent's state
into a `NodeEnergyReportStatus` (the reporter remembers when each condition last changed, so
a lastTransitionTime moves only with its status); `ReportWriter` creates the cluster-scoped
report (named after the node, owned by the Node so it is garbage-collected with it) and
patches its status subresource. Standalone runs log the same status instead (`log_status`).
A node whose GPU restore did not verify reports phase `RestoreFailed` under the policy it
was released from
(so the operator keeps waiting for it), never `Released`; its conditions say which GPUs.
Tokens come from the serving engines' generation counters; the PMU-default baseline is the
agent's own counterfactual estimate (`triserve.node_agent.accounting.BASELINE_METHOD`), never
simulator data.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any

from triserve.api.annotations import GROUP, VERSION
from triserve.api.models import PolicyMode
from triserve.api.status import (
    Condition,
    ConditionStatus,
    Efficiency,
    EnergyWindow,
    GpuReport,
    GpuState,
    NodeEnergyReportStatus,
    ReportPhase,
    SloMeasurement,
    SloStatus,
)
from triserve.control import SloMeasured, SloReadout
from triserve.node_agent.accounting import BASELINE_METHOD, ENFORCE_ESTIMATE_METHOD
from triserve.node_agent.agent import NodeAgent
from triserve.node_agent.gpus import GpuRuntime

log = logging.getLogger(__name__)

PLURAL = "nodeenergyreports"
KIND = "NodeEnergyReport"


def rfc3339(when: dt.datetime) -> str:
    """Kubernetes' timestamp format (UTC, seconds, trailing Z)."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _absent(agent: NodeAgent) -> list[str]:
    """State-file records of GPUs not on the node now: they may still hold locks."""
    return agent.state_file.unplaced({g.identity.uuid for g in agent.gpus.values()})


def _gpu_order(item: tuple[int | str, str]) -> tuple[int, int, str]:
    """GPUs by index, then absent GPUs by UUID."""
    key = item[0]
    return (0, key, "") if isinstance(key, int) else (1, 0, key)


def _phase(agent: NodeAgent) -> ReportPhase:
    states = [g.state for g in agent.gpus.values()]
    if GpuState.RESTORE_FAILED in states or _absent(agent):
        return ReportPhase.RESTORE_FAILED
    if agent.state_file.write_error is not None or agent.inventory.problem is not None:
        return ReportPhase.DEGRADED
    if agent.policy is None:
        return ReportPhase.RELEASED
    if GpuState.DEGRADED in states and not any(
        s in (GpuState.MANAGED, GpuState.OBSERVED) for s in states
    ):
        return ReportPhase.DEGRADED
    if agent.policy.spec.mode is PolicyMode.OBSERVE:
        return ReportPhase.OBSERVING
    return ReportPhase.MANAGING


#: Report condition type → (status, lastTransitionTime) as last reported.
ConditionSince = dict[str, tuple[str, str]]


def _condition(
    since_of: ConditionSince,
    kind: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    now: str,
) -> Condition:
    """A condition whose lastTransitionTime moves only when its status changes."""
    seen = since_of.get(kind)
    since = seen[1] if seen is not None and seen[0] == status.value else now
    since_of[kind] = (status.value, since)
    return Condition(
        type=kind, status=status, reason=reason, message=message, last_transition_time=since
    )


def conditions(agent: NodeAgent, now: str, since_of: ConditionSince) -> list[Condition]:
    """The node's conditions, from the agent's state.

    RestoreFailed, StateFileWritable, GuardRailClamped, GpusFound, LatencyBoundHeld and, in
    mode Targets, SloTargetsMet.
    """
    failed: dict[int | str, str] = {
        g.index: g.message for g in agent.gpus.values() if g.state is GpuState.RESTORE_FAILED
    }
    for uuid in _absent(agent):
        failed[uuid] = (
            "not on this node now (absent from enumeration at start-up): its state-file record "
            "is kept and it is restored when it enumerates again; if it was removed from the "
            f"node, delete its entry from {agent.state_file.path}"
        )
    restore = (
        _condition(
            since_of,
            "RestoreFailed",
            ConditionStatus.TRUE,
            "RestoreNotVerified",
            "; ".join(f"GPU {i}: {m}" for i, m in sorted(failed.items(), key=_gpu_order)),
            now,
        )
        if failed
        else _condition(
            since_of,
            "RestoreFailed",
            ConditionStatus.FALSE,
            "AllRestoresVerified",
            "every GPU released by triserve read back at its defaults",
            now,
        )
    )
    error = agent.state_file.write_error
    writable = (
        _condition(
            since_of,
            "StateFileWritable",
            ConditionStatus.FALSE,
            "WriteFailed",
            f"{error}; new locks are refused until it can be written",
            now,
        )
        if error is not None
        else _condition(
            since_of,
            "StateFileWritable",
            ConditionStatus.TRUE,
            "Written",
            str(agent.state_file.path),
            now,
        )
    )
    clamped = dict(agent.backend.clamped)
    rails = (
        _condition(
            since_of,
            "GuardRailClamped",
            ConditionStatus.TRUE,
            "BelowFloor",
            "; ".join(f"GPU {i}: {m}" for i, m in sorted(clamped.items())),
            now,
        )
        if clamped
        else _condition(
            since_of,
            "GuardRailClamped",
            ConditionStatus.FALSE,
            "WithinFloors",
            "no clock or power limit was raised to a guard-rail floor",
            now,
        )
    )
    problem = agent.inventory.problem
    found = (
        _condition(since_of, "GpusFound", ConditionStatus.FALSE, "DeviceCountFailed", problem, now)
        if problem is not None
        else _condition(
            since_of,
            "GpusFound",
            ConditionStatus.TRUE,
            "Enumerated",
            f"{len(agent.gpus)} GPUs",
            now,
        )
    )
    out = [restore, writable, rails, found]
    unheld = [g.index for g in agent.gpus.values() if g.bound_unheld]
    out.append(
        _condition(
            since_of,
            "LatencyBoundHeld",
            ConditionStatus.FALSE if unheld else ConditionStatus.TRUE,
            "GuardGaveUp" if unheld else "Held",
            f"GPUs {', '.join(map(str, unheld))}: control kept breaking the latency bound "
            "or SLO targets; they run at the PMU default (triserve_slo_bound_unheld)"
            if unheld
            else "no GPU is held at the PMU default for breaking the latency bound",
            now,
        )
    )
    readouts = [g.slo for g in agent.gpus.values() if g.slo is not None]
    if readouts:
        unmet = [g.index for g in agent.gpus.values() if g.slo is not None and g.slo.unmet]
        over = [m for r in readouts for m in r.measured if m.over_share > 1.0 - m.target.quantile]
        if unmet:
            status, reason = ConditionStatus.FALSE, "MissedAtDefault"
            message = (
                f"GPUs {', '.join(map(str, unmet))}: an SLO target is missed at boost clocks; "
                "those GPUs run at the PMU default (clocks cannot meet it: add capacity or "
                "relax the target)"
            )
        elif over:
            status, reason = ConditionStatus.FALSE, "OverTarget"
            message = "; ".join(
                f"{m.target.scope} {m.target.metric}: {100 * m.over_share:.1f}% over target"
                for m in over
            )
        else:
            status, reason = ConditionStatus.TRUE, "WithinTargets"
            message = "every SLO target measured is met"
        out.append(_condition(since_of, "SloTargetsMet", status, reason, message, now))
    return out


def slo_status(readouts: Sequence[SloReadout]) -> SloStatus | None:
    """The node's SLO targets: per target the worst GPU's reading (None: mode Relative)."""
    if not readouts:
        return None
    worst: dict[tuple[str, str, float], SloMeasured] = {}
    for r in readouts:
        for m in r.measured:
            key = (m.target.scope, m.target.metric, m.target.quantile)
            if key not in worst or m.headroom_used > worst[key].headroom_used:
                worst[key] = m
    targets = [
        SloMeasurement(
            scope=m.target.scope,
            metric=_METRIC_NAMES[m.target.metric],
            quantile=m.target.quantile,
            target_seconds=round(m.target.target_s, 4),
            measured_seconds=round(m.measured_s, 4),
            headroom_used_percent=round(100.0 * m.headroom_used, 1),
            over_target_percent=round(100.0 * m.over_share, 2),
            observations=m.observations,
        )
        for _, m in sorted(worst.items())
    ]
    return SloStatus(
        headroom_used_percent=max((t.headroom_used_percent for t in targets), default=0.0),
        over_target_percent=max((t.over_target_percent for t in targets), default=0.0),
        targets=targets,
    )


#: Status names of the SLO metrics.
_METRIC_NAMES = {"ttft": "ttft", "inter_token": "interToken", "e2e": "e2e"}


class Reporter:
    """Builds one node's reports; keeps when each of its conditions last changed."""

    def __init__(self, agent: NodeAgent) -> None:
        self.agent = agent
        self._since: ConditionSince = {}

    def build(self, now: dt.datetime) -> NodeEnergyReportStatus:
        """The report for the window that ends now (closes every GPU's window)."""
        return _build_status(self.agent, now, self._since)


def _power_fields(gpu: GpuRuntime) -> dict[str, Any]:
    """A governed GPU's power-limit range, budget cap and operating points (budget input)."""
    loop = gpu.loop
    if loop is None:
        return {}
    ceiling_mw = loop.power_ceiling_mw
    return {
        "power_limit_min_watts": loop.limits.power_min_mw / 1000.0,
        "power_limit_max_watts": loop.limits.power_max_mw / 1000.0,
        "power_cap_watts": (ceiling_mw or 0) / 1000.0,
        "operating_points": list(gpu.operating_points),
    }


def _build_status(
    agent: NodeAgent, now: dt.datetime, since_of: ConditionSince
) -> NodeEnergyReportStatus:
    with agent.lock:
        gpu_reports: list[GpuReport] = []
        energy_j = baseline_j = enforce_j = tokens = window_s = 0.0
        pods: dict[str, int] = {}
        for pod in agent.inputs.pods.values():
            pods[pod.stage] = pods.get(pod.stage, 0) + 1
        for gpu in agent.gpus.values():
            window = gpu.close_window()
            sample = gpu.last_sample
            decision = gpu.last_decision
            # A window accrues only while governed; count it even if the GPU was released
            # since (the final report after SIGTERM carries the last window too).
            if window.seconds > 0:
                energy_j += window.energy_j
                baseline_j += max(window.baseline_energy_j, window.energy_j)
                enforce_j += min(window.enforce_energy_j, window.energy_j)
                tokens += window.tokens
                window_s = max(window_s, window.seconds)
            gpu_reports.append(
                GpuReport(
                    index=gpu.index,
                    uuid=gpu.identity.uuid,
                    name=gpu.identity.name,
                    state=gpu.state,
                    pods=sorted({p.pod.ref for p in gpu.placements}),
                    stages=sorted({p.pod.stage for p in gpu.placements}),
                    target_sm_clock_mhz=(decision.target_sm_clock_mhz or 0) if decision else 0,
                    applied_sm_clock_mhz=sample.sm_clock_mhz if sample else 0,
                    power_watts=round(sample.power_mw / 1000.0, 1) if sample else 0.0,
                    temperature_celsius=round(sample.temperature_c, 1) if sample else 0.0,
                    energy_joules=round(window.energy_j, 1),
                    stall_seconds=round(window.stall_s, 2),
                    throttle_seconds=round(window.throttle_s, 2),
                    decisions=dict(sorted(window.decisions.items())),
                    message=gpu.message,
                    **_power_fields(gpu),
                )
            )
        policy = agent.policy
        # Until every GPU's restore verified, report under the policy released from.
        policy_name = policy.name if policy else agent.releases.releasing_policy
        managed = sum(g.state is GpuState.MANAGED for g in agent.gpus.values())
        phase = _phase(agent)
        found = conditions(agent, rfc3339(now), since_of)
        slo = slo_status([g.slo for g in agent.gpus.values() if g.slo is not None])
    tpj = tokens / energy_j if energy_j > 0 else 0.0
    base_tpj = tokens / baseline_j if baseline_j > 0 else 0.0
    observing = policy is not None and policy.spec.mode is PolicyMode.OBSERVE
    enforce_pct = 100.0 * (energy_j / enforce_j - 1.0) if observing and enforce_j > 0 else 0.0
    return NodeEnergyReportStatus(
        policy=policy_name,
        policy_generation=policy.generation if policy else 0,
        mode=policy.spec.mode if policy else None,
        strategy=policy.spec.strategy if policy else None,
        phase=phase,
        conditions=found,
        last_report_time=rfc3339(now),
        managed_gpus=managed,
        gpus=gpu_reports,
        pods=pods,
        energy=EnergyWindow(
            joules=round(energy_j, 1),
            average_watts=round(energy_j / window_s, 1) if window_s > 0 else 0.0,
            window_seconds=round(window_s, 2),
        ),
        efficiency=Efficiency(
            tokens=round(tokens, 1),
            tokens_per_joule=round(tpj, 4),
            baseline_tokens_per_joule=round(base_tpj, 4),
            improvement_percent=round(100.0 * (tpj / base_tpj - 1.0), 2) if base_tpj > 0 else 0.0,
            method=BASELINE_METHOD,
            enforce_estimate_percent=round(enforce_pct, 2),
            enforce_estimate_method=ENFORCE_ESTIMATE_METHOD if observing else "",
        ),
        slo=slo,
    )


def log_status(status: NodeEnergyReportStatus) -> None:
    """One log line per report (standalone mode has no API server to write to)."""
    eff = status.efficiency
    log.info(
        "report: phase=%s policy=%s gpus=%d energy=%.0f J over %.1f s, %.3f tokens/J "
        "(baseline est. %.3f, %+.1f%%)%s",
        status.phase.value, status.policy or "-", status.managed_gpus, status.energy.joules,
        status.energy.window_seconds, eff.tokens_per_joule, eff.baseline_tokens_per_joule,
        eff.improvement_percent,
        f"; Observe: Enforce would give est. {eff.enforce_estimate_percent:+.1f}%"
        if eff.enforce_estimate_method else "",
    )  # fmt: skip


class ReportWriter:
    """Creates and updates this node's NodeEnergyReport through the Kubernetes API."""

    def __init__(self, api_client: Any, node_name: str) -> None:
        """`api_client` is a `kubernetes.client.ApiClient`; calls are synchronous."""
        from kubernetes import client

        self.node_name = node_name
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self._exists = False
        self._exception = client.ApiException
        self._stages_sent: set[str] = set()

    def _ensure(self) -> None:
        if self._exists:
            return
        try:
            self.custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, self.node_name)
        except self._exception as exc:
            if exc.status != 404:
                raise
            node = self.core.read_node(self.node_name)
            body = {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "metadata": {
                    "name": self.node_name,
                    "labels": {"app.kubernetes.io/managed-by": "triserve-agent"},
                    "ownerReferences": [
                        {
                            "apiVersion": "v1",
                            "kind": "Node",
                            "name": self.node_name,
                            "uid": (node.metadata.uid if node.metadata else None) or "",
                            "blockOwnerDeletion": False,
                        }
                    ],
                },
                "spec": {"nodeName": self.node_name},
            }
            try:
                self.custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, body)
            except self._exception as create_exc:
                if create_exc.status != 409:
                    raise
        self._exists = True

    def write(self, status: NodeEnergyReportStatus) -> None:
        """Create the report if needed and replace its status (raises ApiException)."""
        self._ensure()
        body = status.to_k8s()
        # A merge patch keeps map keys it is not told about: zero the stages that left.
        body["pods"] = {**dict.fromkeys(self._stages_sent, 0), **body.get("pods", {})}
        self._stages_sent = {k for k, v in body["pods"].items() if v}
        try:
            self.custom.patch_cluster_custom_object_status(
                GROUP, VERSION, PLURAL, self.node_name, {"status": body}
            )
        except self._exception as exc:
            if exc.status == 404:
                self._exists = False
            raise
