"""kopf handler registration: thin handlers that hand cached views to `reconciler.Placer`.

`register(registry, settings)` is the single place the operator's handlers are declared;
`main.registered()` calls it on a fresh `kopf.OperatorRegistry()`, for `triserve operator`
and for the tests alike (each with its own `OperatorSettings`). Three kopf indices cache the
cluster (nodes, policies, reports) as slim views, so placement and status never list the
API; kopf holds every handler until those indices are populated, which is what makes the
start-up sweep of stale node labels safe.

Triggers: a node event re-places that node; a policy event re-places every node; a timer
per policy re-places (self-healing) and patches status when it changed; another re-balances
its power budget (`budgeting.Budgeter`) every few seconds; deletion unlabels,
then waits for the agents to report `Released` (bounded by `release_timeout_s`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, TypeVar

import kopf

from triserve.api.annotations import GROUP, POLICY_FINALIZER, VERSION
from triserve.operator import aggregation, placement
from triserve.operator.budgeting import Budgeter
from triserve.operator.kube import KubeClient
from triserve.operator.reconciler import Placer
from triserve.operator.settings import OperatorSettings

POLICIES = (GROUP, VERSION, "energypolicies")
REPORTS = (GROUP, VERSION, "nodeenergyreports")
NODES = ("", "v1", "nodes")

T = TypeVar("T")


def values(index: Any, kind: type[T]) -> Iterator[T]:
    """Every value of a kopf index whose keys are unique (one view per object)."""
    for store in index.values():
        for value in store:
            if isinstance(value, kind):
                yield value


def by_node(index: Any) -> dict[str, aggregation.ReportView]:
    """The report index as node → report."""
    return {r.node: r for r in values(index, aggregation.ReportView)}


def register(registry: kopf.OperatorRegistry, settings: OperatorSettings) -> Placer:
    """Declare every handler on `registry`; returns the placer (tests inspect it)."""
    kube = KubeClient()
    placer = Placer(settings, kube, Budgeter(kube, settle_s=settings.budget_interval_s))
    # kopf runs the handlers of one cause in declaration order, so the order below matters:
    # connection and indices first, placement before status, release last.
    _register_connection(registry, settings, kube)
    _register_indices(registry)
    _register_placement(registry, placer)
    _register_status(registry, placer, settings)
    _register_budget(registry, placer, settings)
    _register_release(registry, placer, settings)
    return placer


def _register_connection(
    registry: kopf.OperatorRegistry, settings: OperatorSettings, kube: KubeClient
) -> None:
    """Start-up settings for kopf, the login (which also connects `kube`), and clean-up."""

    @kopf.on.startup(registry=registry, id="configure")
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = POLICY_FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=GROUP, key="last-handled-configuration"
        )
        # kopf would post its log lines as Events with a namespaced involvedObject, which
        # `kubectl describe` never shows for a cluster-scoped policy; the operator posts its
        # own events through `KubeClient.post_event` instead.
        settings.posting.enabled = False

    @kopf.on.login(registry=registry, id="login")
    async def login(**kwargs: Any) -> Any:
        # The kubernetes client's loader: in-cluster ServiceAccount, else $KUBECONFIG or
        # ~/.kube/config with everything it supports (exec credential plugins included).
        login_fn = settings.login or kopf.login_via_client
        try:
            info = login_fn(**kwargs)
        except kopf.LoginError as exc:
            # No credentials at all: answering None makes kopf stop with a LoginError (the CLI
            # turns that into guidance) instead of retrying every minute forever.
            kwargs["logger"].error(f"No Kubernetes credentials: {exc}")
            return None
        if info is not None:
            await kube.connect(info)
        return info

    @kopf.on.cleanup(registry=registry, id="close")
    async def close(**_: Any) -> None:
        await kube.close()


def _register_indices(registry: kopf.OperatorRegistry) -> None:
    """The three cluster caches: nodes, policies and agent reports as slim views."""

    @kopf.index(*NODES, id="triserve_nodes", registry=registry)
    def index_node(**kwargs: Any) -> dict[str, placement.NodeView]:
        return {kwargs["name"]: placement.node_view(kwargs["body"])}

    @kopf.index(*POLICIES, id="triserve_policies", registry=registry)
    def index_policy(**kwargs: Any) -> dict[str, placement.PolicyView]:
        return {kwargs["name"]: placement.policy_view(kwargs["body"])}

    @kopf.index(*REPORTS, id="triserve_reports", registry=registry)
    def index_report(**kwargs: Any) -> dict[str, Any]:
        view = aggregation.report_view(kwargs["body"])
        return {kwargs["name"]: view} if view is not None else {}


def _register_placement(registry: kopf.OperatorRegistry, placer: Placer) -> None:
    """Re-place a node when it changes, and every node when any policy changes."""

    @kopf.on.event(*NODES, registry=registry, id="node_changed")
    async def node_changed(**kwargs: Any) -> None:
        node = placement.node_view(kwargs["body"])
        placer.observe(node)
        if kwargs["type"] != "DELETED":
            policies = values(kwargs["triserve_policies"], placement.PolicyView)
            await placer.place([node], policies, kwargs["logger"])

    @kopf.on.event(*POLICIES, registry=registry, id="policy_changed")
    async def policy_changed(**kwargs: Any) -> None:
        await placer.place(
            values(kwargs["triserve_nodes"], placement.NodeView),
            values(kwargs["triserve_policies"], placement.PolicyView),
            kwargs["logger"],
        )


def _register_status(
    registry: kopf.OperatorRegistry, placer: Placer, settings: OperatorSettings
) -> None:
    """A timer per policy: re-place (self-healing), then patch status when it changed."""

    @kopf.timer(
        *POLICIES, interval=settings.status_interval_s, registry=registry, id="refresh_status"
    )
    async def refresh_status(**kwargs: Any) -> None:
        body: kopf.Body = kwargs["body"]
        logger = kwargs["logger"]
        triserve_policies, triserve_nodes = kwargs["triserve_policies"], kwargs["triserve_nodes"]
        policy = placement.policy_view(body)
        nodes = list(values(triserve_nodes, placement.NodeView))
        others = [
            p for p in values(triserve_policies, placement.PolicyView) if p.name != policy.name
        ]
        result = await placer.place(nodes, [*others, policy], logger)
        update = placer.status_update(
            policy, body.get("status"), result, nodes, by_node(kwargs["triserve_reports"])
        )
        if update.patch:
            kwargs["patch"]["status"] = update.patch
        for notice in update.notices:
            await placer.post(policy.ref(), notice.reason, notice.message, warning=notice.warning)


def _register_budget(
    registry: kopf.OperatorRegistry, placer: Placer, settings: OperatorSettings
) -> None:
    """A timer per policy: re-balance its power budget and write the caps that changed."""

    @kopf.timer(
        *POLICIES, interval=settings.budget_interval_s, registry=registry, id="rebalance_budget"
    )
    async def rebalance_budget(**kwargs: Any) -> None:
        policy = placement.policy_view(kwargs["body"])
        nodes = list(values(kwargs["triserve_nodes"], placement.NodeView))
        await placer.budgeter.rebalance(
            policy,
            nodes,
            placer.effective_labels(nodes),
            by_node(kwargs["triserve_reports"]),
            now_s=time.time(),
            stale_after_s=placer.stale_after_s(policy),
            logger=kwargs["logger"],
        )


def _register_release(
    registry: kopf.OperatorRegistry, placer: Placer, settings: OperatorSettings
) -> None:
    """On deletion: unlabel, then hold the finalizer until the agents report `Released`."""

    @kopf.on.delete(*POLICIES, registry=registry, id="release")
    async def release(**kwargs: Any) -> None:
        name: str = kwargs["name"]
        nodes = list(values(kwargs["triserve_nodes"], placement.NodeView))
        others = [
            p for p in values(kwargs["triserve_policies"], placement.PolicyView) if p.name != name
        ]
        labelled = _labelled_since_deletion(kwargs["memo"], name, nodes)
        await placer.budgeter.clear(name, nodes, kwargs["logger"])
        await _unlabel(placer, name, nodes, others, kwargs["logger"], settings.release_poll_s)
        reports = values(kwargs["triserve_reports"], aggregation.ReportView)
        waiting = placer.release_message(name, reports, labelled)
        ref = placement.policy_view(kwargs["body"]).ref()
        if waiting is None:
            await placer.post(
                ref, "GpusReleased", "Every agent restored default clocks; removing finalizer."
            )
            return
        if kwargs["runtime"].total_seconds() < settings.release_timeout_s:
            raise kopf.TemporaryError(
                f"Waiting for agents: {waiting}.", delay=settings.release_poll_s
            )
        await placer.post(
            ref,
            "ReleaseTimedOut",
            f"{waiting} within {settings.release_timeout_s:.0f}s; removing the finalizer anyway. "
            "Their agents may be down: check the triserve agent pods there, and reset clocks "
            "by hand if needed (nvidia-smi -rgc).",
            warning=True,
        )


def _labelled_since_deletion(
    memo: kopf.Memo, policy: str, nodes: list[placement.NodeView]
) -> set[str]:
    """Nodes that carried `policy`'s label when its deletion began and still exist.

    Kept in kopf's per-object memo across retries: their agents must confirm the release
    even if no report of theirs has arrived yet. A deleted node has no agent left to answer.
    """
    labelled: set[str] = memo.setdefault("release_labelled", set())
    labelled |= {n.name for n in nodes if n.policy == policy}
    labelled &= {n.name for n in nodes}
    return labelled


async def _unlabel(
    placer: Placer,
    policy: str,
    nodes: list[placement.NodeView],
    others: list[placement.PolicyView],
    logger: Any,
    poll_s: float,
) -> None:
    """Place `nodes` among the `others` policies; retry later while any still has the label.

    The finalizer stays until no node carries `policy`'s label: a label write that failed
    (and waits out its back-off) must not be left behind on a deleted policy.
    """
    await placer.place(nodes, others, logger)
    still = sorted(n for n, p in placer.effective_labels(nodes).items() if p == policy)
    if still:
        raise kopf.TemporaryError(
            f"Removing the policy label from {', '.join(still)}.", delay=poll_s
        )
