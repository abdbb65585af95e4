"""Bench results: one `StrategyResult` per strategy run, the Markdown table and the JSON.

Produced by `triserve.bench.runner` (one simulated run each) and rendered by
`triserve.bench.cli`. Efficiency is useful work per joule; the change versus the ``default``
row is computed on tokens per joule (every strategy of a scenario replays the same arrivals).
"Share of optimum" is a row's efficiency gain over default divided by the ``optimum`` row's
(the hindsight optimum of `triserve.bench.optimum`), in percent.
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


def with_gains(results: Sequence[StrategyResult]) -> list[StrategyResult]:
    """Fill each row's gain over ``default`` and its share of the ``optimum`` row's gain.

    `efficiency_gain_pct` is relative to the ``default`` row (0 when it is absent) and
    `share_of_optimum_pct` relative to the ``optimum`` row (None when it is absent or
    gained nothing).
    """
    base = next((r for r in results if r.strategy == "default"), None)
    if base is None or base.tokens_per_j <= 0:
        return list(results)
    gained = [
        replace(r, efficiency_gain_pct=100.0 * (r.tokens_per_j / base.tokens_per_j - 1.0))
        for r in results
    ]
    best = next((r for r in gained if r.strategy == "optimum"), None)
    if best is None or best.efficiency_gain_pct <= 0:
        return gained
    return [
        replace(r, share_of_optimum_pct=100.0 * r.efficiency_gain_pct / best.efficiency_gain_pct)
        for r in gained
    ]


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
