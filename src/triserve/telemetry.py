"""What the node agent observes about serving, as plain data shared by every layer.

The serving engines' `/metrics` (vLLM, SGLang, TensorRT-LLM) are parsed into
`ServingSnapshot`s by the node agent; the simulator produces the same snapshots (and the same
exposition text) for its stages. Engines that send stage hints (`triserve.hints`, received
by `triserve.node_agent.hints`) add a `StageHint`: what the engine said about itself, when
the agent received it. Controllers consume only these and `GpuSample`s — never simulator
state — which is how the honesty rule is kept by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Histogram:
    """A cumulative Prometheus histogram: bucket upper bounds (s) and cumulative counts."""

    upper_bounds_s: tuple[float, ...]
    cumulative_counts: tuple[float, ...]
    sum_s: float
    count: float

    def quantile_s(self, q: float) -> float | None:
        """Estimate quantile `q` by interpolating inside buckets, as histogram_quantile does.

        A quantile that falls in the ``+Inf`` bucket is the highest finite bound, as in
        Prometheus; without any finite bucket (a scrape that lost its bucket lines) the
        histogram cannot say, and the quantile is unknown (None), never 0 s.
        """
        if self.count <= 0 or not self.upper_bounds_s:
            return None
        if not any(b != float("inf") for b in self.upper_bounds_s):
            return None
        rank = q * self.count
        prev_bound, prev_count = 0.0, 0.0
        for bound, cum in zip(self.upper_bounds_s, self.cumulative_counts, strict=True):
            if cum >= rank:
                if bound == float("inf"):
                    return prev_bound
                width = cum - prev_count
                frac = 0.0 if width <= 0 else (rank - prev_count) / width
                return prev_bound + (bound - prev_bound) * frac
            prev_bound, prev_count = bound, cum
        return prev_bound

    def minus(self, earlier: Histogram) -> Histogram:
        """The observations made since `earlier` (same buckets), for windowed quantiles.

        A histogram whose count went down (the engine restarted) or whose buckets changed
        is a reset: everything it holds is new, so it is returned whole.
        """
        if (
            self.count < earlier.count
            or self.upper_bounds_s != earlier.upper_bounds_s
            or any(
                a < b
                for a, b in zip(self.cumulative_counts, earlier.cumulative_counts, strict=True)
            )
        ):
            return self
        return Histogram(
            self.upper_bounds_s,
            tuple(
                a - b
                for a, b in zip(self.cumulative_counts, earlier.cumulative_counts, strict=True)
            ),
            self.sum_s - earlier.sum_s,
            self.count - earlier.count,
        )


@dataclass(frozen=True, slots=True)
class ServingSnapshot:
    """One scrape of a serving engine's metrics for one stage (counters are cumulative).

    `unknown` names the signals the engine does not export (``running``, ``waiting``,
    ``prompt_tokens``, ``generation_tokens``, ``requests_finished``): their fields then
    read 0 but mean "not known", and the phase logic (`triserve.control.phases`) falls back
    to the GPU's own counters instead of taking the zero at its word. `prompt_tokens_total`
    counts the prompt tokens this engine computed itself where the engine says so (vLLM's
    ``prompt_tokens_by_source_total{source="local_compute"}``); `kv_transfer_tokens_total`
    those that arrived by KV transfer from a prefill worker (None: not exported).
    `prefill_running` is the requests the engine reports in their prefill (context) phase,
    where it reports them (Triton's TensorRT-LLM backend), else None.
    """

    timestamp_s: float
    running: int
    waiting: int
    prompt_tokens_total: float
    generation_tokens_total: float
    requests_finished_total: float
    ttft: Histogram | None = None
    inter_token: Histogram | None = None
    e2e: Histogram | None = None
    unknown: frozenset[str] = frozenset()
    kv_transfer_tokens_total: float | None = None
    prefill_running: int | None = None

    def knows(self, signal: str) -> bool:
        """True when the engine exports `signal` (see `unknown`)."""
        return signal not in self.unknown


@dataclass(frozen=True, slots=True)
class StageHint:
    """What a serving engine last told the agent about its stage (docs/serving-pods.md).

    `received_s` is the agent's clock when the latest event of the pod arrived (a heartbeat
    counts), never the sender's clock; `busy` and `phase` (``prefill``, ``decode``,
    ``oneshot`` or None) are from its last busy/idle event; `waiting`/`running` its last
    queue depth (None: never sent); `handoff_s` when it last handed work downstream (agent
    clock, None: never). A hint older than `max_age_s` is stale: controllers fall back to
    the scrapes (see `fresh`).
    """

    received_s: float
    busy: bool = False
    phase: str | None = None
    waiting: int | None = None
    running: int | None = None
    handoff_s: float | None = None
    max_age_s: float = 3.0

    def fresh(self, now_s: float) -> bool:
        """True while the engine is still speaking (its last event within `max_age_s`)."""
        return now_s - self.received_s <= self.max_age_s

    @property
    def has_work(self) -> bool:
        """True when the engine said it is busy or has requests running or queued."""
        return self.busy or bool(self.waiting) or bool(self.running)


@dataclass(frozen=True, slots=True)
class DownstreamStage:
    """A stage that the observed stage feeds, as the agent last saw it (any GPU of the node).

    `serving` is its pod's latest scrape and `hint` its latest hint (either may be None);
    `max_age_s` bounds how old the scrape may be before its queue is no longer trusted.
    """

    stage: str
    serving: ServingSnapshot | None = None
    hint: StageHint | None = None
    max_age_s: float | None = None

    def waiting(self, now_s: float) -> int | None:
        """Requests queued at this stage now: the fresh hint's word, else the scrape's.

        None when neither is fresh enough to act on.
        """
        hint = self.hint
        if hint is not None and hint.fresh(now_s) and hint.waiting is not None:
            return hint.waiting
        snap = self.serving
        if snap is None:
            return None
        if self.max_age_s is not None and now_s - snap.timestamp_s > self.max_age_s:
            return None
        return snap.waiting


@dataclass(frozen=True, slots=True)
class StageObservation:
    """What the agent knows about one serving stage placed on a GPU.

    `stage` is the resolved stage name (thinker, talker, code2wav, prefill, decode, …);
    `upstream` names the stages that feed it in the same pipeline (from the pipeline
    annotation and the known stage graphs); `serving` is the latest scrape (may be None when
    the pod exposes no metrics, or stale by up to one scrape interval). `max_age_s` is how
    old `serving` may be before a controller must stop trusting it (None: no limit); see
    `stale_reason`. `hint` is the stage's own latest hint and `upstream_hints` those of its
    upstream stages (empty when the engines send none); a stale hint is ignored, never an
    error, because the scrapes still speak for the stage. `disaggregated_decode` is True
    when the pod's role label makes it a disaggregated decode worker (its queue waits for
    KV transfers, not for prefill).
    """

    stage: str
    pipeline: str | None = None
    pod: str | None = None
    namespace: str | None = None
    container: str | None = None
    upstream: tuple[str, ...] = ()
    serving: ServingSnapshot | None = None
    upstream_serving: tuple[ServingSnapshot, ...] = field(default_factory=tuple)
    max_age_s: float | None = None
    hint: StageHint | None = None
    upstream_hints: tuple[StageHint, ...] = ()
    downstream: tuple[DownstreamStage, ...] = ()
    disaggregated_decode: bool = False

    def fresh_hint(self, now_s: float) -> StageHint | None:
        """The stage's hint when it is fresh at `now_s`, else None (use the scrapes)."""
        hint = self.hint
        return hint if hint is not None and hint.fresh(now_s) else None

    def waiting(self, now_s: float) -> int | None:
        """Requests queued at this stage now: the fresh hint's word, else the scrape's."""
        hint = self.fresh_hint(now_s)
        if hint is not None and hint.waiting is not None:
            return hint.waiting
        return None if self.serving is None else self.serving.waiting

    def age_s(self, now_s: float) -> float | None:
        """Seconds since the stage's last good scrape (None: it has none)."""
        return None if self.serving is None else max(now_s - self.serving.timestamp_s, 0.0)

    def stale_reason(self, now_s: float) -> str | None:
        """Why this observation must not drive a clock decision at `now_s`, or None."""
        age_s = self.age_s(now_s)
        if age_s is None or self.max_age_s is None or age_s <= self.max_age_s:
            return None
        who = f"{self.namespace}/{self.pod}" if self.pod else self.stage
        return f"serving metrics of {who} are {age_s:.1f} s old (limit {self.max_age_s:.1f} s)"
