"""Bench results: one `StrategyResult` per strategy run, the Markdown table and the JSON.

Produced by `triserve.bench.runner` (one simulated run each) and rendered by
`triserve.bench.cli`. Efficiency is useful work per joule; the change versus the ``default``
row is computed on tokens per joule (every strategy of a scenario replays the same arrivals).
"Share of optimum" is the energy per token a row saves over default as a share of what its
optimum row saves (the hindsight optimum of `triserve.bench.optimum` under the same bounds
or SLO targets as the row), in percent.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

#: The rows that stand for what a user could run instead of Tri-serve (`triserve.bench.
#: catalog`): a results table compares every row with the best of those present, per seed.
BEST_ALTERNATIVE_ROWS: tuple[str, ...] = (
    "perf-boost-off",
    "pstated",
    "static-best",
    "power-cap-best",
)


@dataclass(frozen=True, slots=True)
class StrategyResult:
    """Measured outcome of one strategy on one scenario (units in the names)."""

    strategy: str
    energy_j: float
    requests: int
    tokens: float
    duration_s: float
    p50_ttft_s: float
    p99_ttft_s: float
    p50_e2e_s: float
    p99_e2e_s: float
    throughput_rps: float
    stall_high_s: float
    throttle_s: float
    setting: str = ""
    efficiency_gain_pct: float = 0.0
    share_of_optimum_pct: float | None = None
    decisions: dict[str, int] = field(default_factory=dict)
    slo_guard_trips: int = 0
    #: SLO rows: percent of requests over the pipeline target most missed (None elsewhere).
    over_target_pct: float | None = None
    wall_s: float = 0.0

    @property
    def requests_per_j(self) -> float:
        """Completed requests per joule."""
        return self.requests / self.energy_j if self.energy_j > 0 else 0.0

    @property
    def tokens_per_j(self) -> float:
        """Generated tokens per joule."""
        return self.tokens / self.energy_j if self.energy_j > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (adds the per-joule figures)."""
        d = asdict(self)
        d["requests_per_j"] = self.requests_per_j
        d["tokens_per_j"] = self.tokens_per_j
        return d


def optimum_for(strategy: str) -> str:
    """The optimum row that judges `strategy`: ``optimum``, or an SLO row's own optimum.

    An SLO-target row (``tri-serve-slo-2``) is judged by the optimum under the same targets
    (``optimum-slo-2``); every other row by the optimum under the policy's default bounds.
    """
    if strategy.startswith("tri-serve-slo-"):
        return "optimum-slo-" + strategy.removeprefix("tri-serve-slo-")
    if strategy.startswith("optimum-slo-"):
        return strategy
    return "optimum"


def with_gains(results: Sequence[StrategyResult]) -> list[StrategyResult]:
    """Fill each row's gain over ``default`` and its share of its optimum's saving.

    `efficiency_gain_pct` is relative to the ``default`` row (0 when it is absent).
    `share_of_optimum_pct` is the energy per token the row saves over default as a share of
    what its optimum row (`optimum_for`) saves: ``(e_default - e_row) / (e_default -
    e_optimum)``, percent (None when that optimum is absent or saves nothing).
    """
    base = next((r for r in results if r.strategy == "default"), None)
    if base is None or base.tokens_per_j <= 0:
        return list(results)
    gained = [
        replace(r, efficiency_gain_pct=100.0 * (r.tokens_per_j / base.tokens_per_j - 1.0))
        for r in results
    ]
    by_name = {r.strategy: r for r in gained}
    e_base = 1.0 / base.tokens_per_j
    out = []
    for r in gained:
        best = by_name.get(optimum_for(r.strategy))
        share = None
        if best is not None and best.tokens_per_j > 0 and r.tokens_per_j > 0:
            saved_best = e_base - 1.0 / best.tokens_per_j
            if saved_best > 0:
                share = 100.0 * (e_base - 1.0 / r.tokens_per_j) / saved_best
        out.append(replace(r, share_of_optimum_pct=share))
    return out


def delta_pct(value: float, base: float) -> float:
    """Percent change of `value` over `base` (0 when the base is 0)."""
    return 100.0 * (value / base - 1.0) if base else 0.0


def markdown_table(
    scenario: str, results: Sequence[StrategyResult], notes: Sequence[str] = ()
) -> str:
    """The results as a Markdown table, with latency and throughput changes versus default."""
    base = next((r for r in results if r.strategy == "default"), None)
    head = (
        "| strategy | setting | energy (J) | req/J | tokens/J | eff. vs default | "
        "share of optimum | p99 TTFT (s) | Δp99 TTFT | p50 e2e (s) | p99 e2e (s) | "
        "Δp99 e2e | throughput (req/s) | Δthroughput | stalled@high (s) | throttled (s) |"
    )
    lines = [f"### scenario: {scenario}", "", head, "|" + "---|" * 16]
    for r in results:
        dttft = delta_pct(r.p99_ttft_s, base.p99_ttft_s) if base else 0.0
        dp99 = delta_pct(r.p99_e2e_s, base.p99_e2e_s) if base else 0.0
        dthr = delta_pct(r.throughput_rps, base.throughput_rps) if base else 0.0
        share = "-" if r.share_of_optimum_pct is None else f"{r.share_of_optimum_pct:.0f}%"
        lines.append(
            f"| {r.strategy} | {r.setting or '-'} | {r.energy_j:,.0f} | {r.requests_per_j:.5f} | "
            f"{r.tokens_per_j:.4f} | {r.efficiency_gain_pct:+.1f}% | {share} | "
            f"{r.p99_ttft_s:.3f} | {dttft:+.2f}% | {r.p50_e2e_s:.2f} | {r.p99_e2e_s:.2f} | "
            f"{dp99:+.2f}% | {r.throughput_rps:.4f} | {dthr:+.2f}% | {r.stall_high_s:.1f} | "
            f"{r.throttle_s:.1f} |"
        )
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def write_json(path: Path, docs: Sequence[dict[str, Any]]) -> None:
    """Write one block's document, or a list of them when several blocks ran."""
    payload: Any = docs[0] if len(docs) == 1 else list(docs)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
