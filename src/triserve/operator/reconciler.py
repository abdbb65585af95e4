"""The operator's stateful core: apply placements, compute status, check releases.

`handlers.py` creates one `Placer` per operator (per kopf registry) and calls it from thin
kopf handlers, passing the cached views from the kopf indices. The `Placer` owns the only
mutable state: a lock so that concurrent handlers never race on node labels, the label
writes in flight (`pending`) so that a write is not repeated before the watch stream shows
it, and a back-off per node whose label write keeps failing (a node the API server refuses
to label is retried after 5 s, 10 s, … up to 5 minutes, not on every pass, and only its
first failure becomes a Warning event). Decisions come from the pure modules `placement`,
`aggregation` and `policy_status`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from triserve.backoff import Backoff
from triserve.operator import aggregation, placement, policy_status
from triserve.operator.budgeting import Budgeter
from triserve.operator.placement import NodeView, Plan, PolicyView
from triserve.operator.settings import OperatorSettings

#: How long a label write counts as in flight when the watch stream does not confirm it.
PENDING_TTL_S = 30.0
#: Back-off after a failed label write: doubles from the first value up to the cap.
LABEL_BACKOFF_FIRST_S = 5.0
LABEL_BACKOFF_MAX_S = 300.0
#: Staleness window when a policy's spec (and so its report interval) is invalid.
DEFAULT_REPORT_INTERVAL_S = 30.0


class Kube(Protocol):
    """What the placer needs from a Kubernetes client (`kube.KubeClient` in production)."""

    async def patch_node(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch one node."""

    async def post_event(
        self, ref: Mapping[str, Any], reason: str, message: str, *, warning: bool = False
    ) -> None:
        """Record an event on an object."""


def now_rfc3339() -> str:
    """The current UTC time as Kubernetes writes it (seconds, `Z`)."""
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass(slots=True)
class StatusUpdate:
    """What the status timer must do: a status merge patch (maybe empty) and events."""

    patch: dict[str, Any]
    notices: list[policy_status.Notice]


class Placer:
    """Applies placements to node labels and derives policy status; one per operator."""

    def __init__(
        self, settings: OperatorSettings, kube: Kube, budgeter: Budgeter | None = None
    ) -> None:
        self.settings = settings
        self.kube = kube
        self.budgeter = (
            budgeter if budgeter is not None else Budgeter(kube, settings.budget_interval_s)
        )
        self._lock = asyncio.Lock()
        self._pending: dict[str, tuple[str | None, float]] = {}
        #: node → the backoff of its label writes that keep failing (monotonic clock)
        self._failing: dict[str, Backoff] = {}

    async def post(
        self, ref: Mapping[str, Any], reason: str, message: str, *, warning: bool = False
    ) -> None:
        """Record an event on a policy (`ref` is `PolicyView.ref()`)."""
        await self.kube.post_event(ref, reason, message, warning=warning)

    def backing_off(self) -> dict[str, int]:
        """Nodes whose label writes keep failing → consecutive failures so far."""
        return {node: backoff.attempts for node, backoff in self._failing.items()}

    def _may_try(self, node: str, now_s: float) -> bool:
        backoff = self._failing.get(node)
        return backoff is None or backoff.due(now_s)

    def _failed(self, node: str, now_s: float) -> int:
        backoff = self._failing.setdefault(
            node, Backoff(LABEL_BACKOFF_FIRST_S, LABEL_BACKOFF_MAX_S)
        )
        backoff.failed(now_s)
        return backoff.attempts

    def observe(self, node: NodeView) -> None:
        """The watch stream showed `node`: a write it confirms is no longer in flight."""
        entry = self._pending.get(node.name)
        if entry is not None and entry[0] == node.policy:
            del self._pending[node.name]

    def _in_flight(self) -> dict[str, str | None]:
        deadline = time.monotonic() - PENDING_TTL_S
        for name in [n for n, (_, at) in self._pending.items() if at < deadline]:
            del self._pending[name]
        return {name: value for name, (value, _) in self._pending.items()}

    def effective_labels(self, nodes: Iterable[NodeView]) -> dict[str, str | None]:
        """Node → policy label, counting writes not yet seen in the cache."""
        in_flight = self._in_flight()
        return {n.name: in_flight.get(n.name, n.policy) for n in nodes}

    async def place(
        self,
        nodes: Iterable[NodeView],
        policies: Iterable[PolicyView],
        logger: logging.Logger | logging.LoggerAdapter[Any],
    ) -> Plan:
        """Bring the labels of `nodes` in line with the placement; post events on policies.

        Safe to call from any handler at any time: it writes only labels that differ.
        """
        nodes, policies = list(nodes), list(policies)
        by_name = {p.name: p for p in policies}
        async with self._lock:
            result = placement.plan(nodes, policies)
            changes = placement.label_changes(nodes, result, self._in_flight())
            gained: dict[str, list[str]] = {}
            released: dict[str, list[tuple[str, str | None]]] = {}
            failed: dict[str, list[tuple[str, str]]] = {}
            for change in changes:
                now_s = time.monotonic()
                if not self._may_try(change.node, now_s):
                    continue
                try:
                    await self.kube.patch_node(change.node, placement.label_patch(change.new))
                except Exception as exc:  # a vanished node or a flaky API: retried after back-off
                    if self._failed(change.node, now_s) == 1:
                        logger.warning(f"Could not label node {change.node}: {exc}")
                        failed.setdefault(change.new or change.old or "", []).append(
                            (change.node, str(exc))
                        )
                    continue
                self._failing.pop(change.node, None)
                self._pending[change.node] = (change.new, time.monotonic())
                if change.new is not None:
                    gained.setdefault(change.new, []).append(change.node)
                if change.old is not None:
                    released.setdefault(change.old, []).append((change.node, change.new))
        await self._announce(gained, released, by_name, logger)
        for name, failures in failed.items():
            if name in by_name:
                nodes_text = placement.summarize(
                    [n for n, _ in failures], self.settings.max_event_nodes
                )
                await self.post(
                    by_name[name].ref(),
                    "LabelFailed",
                    f"Could not label {len(failures)} nodes ({nodes_text}): "
                    f"{failures[0][1][:300]}. Retrying with back-off up to "
                    f"{LABEL_BACKOFF_MAX_S:.0f}s.",
                    warning=True,
                )
        return result

    async def _announce(
        self,
        gained: Mapping[str, list[str]],
        released: Mapping[str, list[tuple[str, str | None]]],
        policies: Mapping[str, PolicyView],
        logger: logging.Logger | logging.LoggerAdapter[Any],
    ) -> None:
        limit = self.settings.max_event_nodes
        for name, nodes in gained.items():
            message = (
                f"Labelled {len(nodes)} nodes for this policy: {placement.summarize(nodes, limit)}."
            )
            logger.info(f"Policy {name}: {message}")
            if name in policies:
                await self.post(policies[name].ref(), "NodesPlaced", message)
        for name, moves in released.items():
            if name not in policies:
                logger.info(f"Removed stale labels of missing policy {name}: {len(moves)} nodes.")
                continue
            takers = sorted({new for _, new in moves if new is not None})
            names = [node for node, _ in moves]
            where = f"now held by policy {', '.join(takers)}" if takers else "label removed"
            message = f"Released {len(moves)} nodes ({where}): {placement.summarize(names, limit)}."
            await self.post(policies[name].ref(), "NodesReleased", message)

    def stale_after_s(self, policy: PolicyView) -> float:
        """Reports older than this stop counting as reporting for `policy`."""
        interval = policy.spec.report_interval_s if policy.spec else DEFAULT_REPORT_INTERVAL_S
        return self.settings.stale_report_intervals * interval

    def status_update(
        self,
        policy: PolicyView,
        stored: Mapping[str, Any] | None,
        result: Plan,
        nodes: Iterable[NodeView],
        reports: Mapping[str, aggregation.ReportView],
        *,
        now_s: float | None = None,
    ) -> StatusUpdate:
        """The status patch for `policy` (empty when nothing changed) and its events."""
        labels = self.effective_labels(nodes)
        labelled = sorted(n for n, p in labels.items() if p == policy.name)
        stale_after_s = self.stale_after_s(policy)
        agg = aggregation.aggregate(
            policy.name,
            policy.generation,
            labelled,
            reports,
            now_s=time.time() if now_s is None else now_s,
            stale_after_s=stale_after_s,
        )
        budget = self.budgeter.status(policy.name)
        found = policy_status.verdicts(
            policy,
            result,
            labelled,
            agg,
            stale_after_s=stale_after_s,
            limit=self.settings.max_event_nodes,
            budget=budget,
            shortfall_w=self.budgeter.shortfall_w(policy.name),
        )
        old = policy_status.owned(stored)
        new = policy_status.build_status(
            policy, result, agg, found, old, now_rfc3339(), budget=budget
        )
        patch = policy_status.merge_patch(old, new)
        notices = policy_status.transitions(old.get("conditions") or [], found) if patch else []
        return StatusUpdate(patch=patch, notices=notices)

    def release_message(
        self,
        policy: str,
        reports: Iterable[aggregation.ReportView],
        labelled: Iterable[str] = (),
    ) -> str | None:
        """None when every agent has let go of `policy`; otherwise who still holds it.

        `labelled` names the nodes that carried the policy's label when deletion began.
        """
        reports = list(reports)
        pending = aggregation.pending_release(policy, reports, labelled)
        if not pending:
            return None
        limit = self.settings.max_event_nodes
        locked = aggregation.holding_locks(policy, reports)
        silent = [n for n in pending if n not in locked]
        parts = []
        if locked:
            parts.append(
                f"{len(locked)} nodes still hold GPU locks their agents could not restore "
                f"(phase RestoreFailed): {placement.summarize(locked, limit)}"
            )
        if silent:
            parts.append(
                f"{len(silent)} nodes have not reported phase Released: "
                f"{placement.summarize(silent, limit)}"
            )
        return "; ".join(parts)
