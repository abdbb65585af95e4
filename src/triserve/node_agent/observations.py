"""Assemble each GPU's `StageObservation`s from the node's latest scrapes and hints.

Called by `NodeAgent._refresh_stages` whenever a scrape, a hint or the pod mapping changed.
`StageIndex` is built once per refresh over the pods the policy selects; `for_gpu` then
gives the observations of one GPU's placements. Each observation carries, besides its own
stage's scrape and hint, what its neighbours in the pipeline graph show (from the stage
upstream annotations): the scrapes and hints of the stages that feed it (component D's
stall and pre-warm signals) and the queues of the stages it feeds, wherever they run on the
node (component P, `triserve.control.pipeline`).

Neighbours come only from selected pods of the same namespace and pipeline: another tenant's
pods must not steer this policy's clocks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from triserve.node_agent.gpumap import Placement
from triserve.node_agent.stages import ServingPod
from triserve.telemetry import DownstreamStage, ServingSnapshot, StageHint, StageObservation

#: (namespace, pipeline, stage): the key neighbours are looked up by.
StageKey = tuple[str, str | None, str]


class StageIndex:
    """The selected pods' scrapes and hints by stage, and the pipeline graph between them."""

    def __init__(
        self,
        pods: Iterable[ServingPod],
        serving: Mapping[tuple[str, str], ServingSnapshot],
        engines: Mapping[tuple[str, str], Mapping[str, ServingSnapshot]],
        hint_of: Callable[[tuple[str, str]], StageHint | None],
        max_age_s: float,
    ) -> None:
        self.serving = serving
        self.engines = engines
        self.hint_of = hint_of
        self.max_age_s = max_age_s
        self.snaps: dict[StageKey, list[ServingSnapshot]] = {}
        self.hints: dict[StageKey, list[StageHint]] = {}
        self.downstream: dict[StageKey, list[DownstreamStage]] = {}
        selected = list(pods)
        for pod in selected:
            where = (pod.namespace, pod.pipeline, pod.stage)
            snap = serving.get(pod.key)
            if snap is not None:
                self.snaps.setdefault(where, []).append(snap)
            hint = hint_of(pod.key)
            if hint is not None:
                self.hints.setdefault(where, []).append(hint)
        for pod in selected:
            peer = DownstreamStage(
                stage=pod.stage,
                serving=serving.get(pod.key),
                hint=hint_of(pod.key),
                max_age_s=max_age_s,
            )
            for up in pod.upstream:
                self.downstream.setdefault((pod.namespace, pod.pipeline, up), []).append(peer)

    def for_gpu(self, placements: Sequence[Placement]) -> tuple[StageObservation, ...]:
        """The observations of one GPU's placements."""
        out = []
        for placement in placements:
            pod = placement.pod
            ups = [(pod.namespace, pod.pipeline, up) for up in pod.upstream]
            out.append(
                StageObservation(
                    stage=pod.stage,
                    pipeline=pod.pipeline,
                    pod=pod.name,
                    namespace=pod.namespace,
                    container=placement.container,
                    upstream=pod.upstream,
                    serving=self.serving_for(placement),
                    upstream_serving=tuple(s for k in ups for s in self.snaps.get(k, ())),
                    max_age_s=self.max_age_s,
                    hint=self.hint_of(pod.key),
                    upstream_hints=tuple(h for k in ups for h in self.hints.get(k, ())),
                    downstream=tuple(
                        self.downstream.get((pod.namespace, pod.pipeline, pod.stage), ())
                    ),
                    disaggregated_decode=pod.disaggregated_decode,
                )
            )
        return tuple(out)

    def serving_for(self, placement: Placement) -> ServingSnapshot | None:
        """The scrape that speaks for this placement's GPU: its engine's, else the pod's.

        A pod with N units (data-parallel engines, SGLang DP ranks, vLLM-Omni stages) over G
        GPUs (G a multiple of N, listed in device order) runs unit i on GPUs
        i*G/N … (i+1)*G/N - 1.
        """
        total = self.serving.get(placement.pod.key)
        engines = self.engines.get(placement.pod.key) or {}
        if total is None or len(engines) < 2 or placement.of % len(engines) != 0:
            return total
        ordered = sorted(engines, key=lambda e: (not e.isdigit(), int(e) if e.isdigit() else 0, e))
        return engines[ordered[placement.rank // (placement.of // len(engines))]]
