"""Bench results: one `StrategyResult` per strategy run, the Markdown table and the JSON.

Produced by `triserve.bench.runner` (one simulated run each) and rendered by
`triserve.bench.cli`. Efficiency is useful work per joule; the change versus the ``default``
row is computed on tokens per joule (every strategy of a scenario replays the same arrivals).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any


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
    decisions: dict[str, int] = field(default_factory=dict)
    slo_guard_trips: int = 0
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
    """Fill `efficiency_gain_pct` relative to the ``default`` row (0 when it is absent)."""
    base = next((r for r in results if r.strategy == "default"), None)
    if base is None or base.tokens_per_j <= 0:
        return list(results)
    return [
        replace(r, efficiency_gain_pct=100.0 * (r.tokens_per_j / base.tokens_per_j - 1.0))
        for r in results
    ]


def delta_pct(value: float, base: float) -> float:
    """Percent change of `value` over `base` (0 when the base is 0)."""
    return 100.0 * (value / base - 1.0) if base else 0.0


def oracle_capture_pct(results: Sequence[StrategyResult], strategy: str) -> float | None:
    """Share of the oracle's energy saving over default that `strategy` achieves, percent."""
    rows = {r.strategy: r for r in results}
    base, oracle, mine = rows.get("default"), rows.get("oracle"), rows.get(strategy)
    if base is None or oracle is None or mine is None:
        return None
    # Energy per token, so that small differences in completed work do not count as saving.
    saving_oracle = 1.0 / base.tokens_per_j - 1.0 / oracle.tokens_per_j
    saving_mine = 1.0 / base.tokens_per_j - 1.0 / mine.tokens_per_j
    if saving_oracle <= 0:
        return None
    return 100.0 * saving_mine / saving_oracle


def markdown_table(scenario: str, results: Sequence[StrategyResult]) -> str:
    """The results as a Markdown table, with p99 and throughput changes versus default."""
    base = next((r for r in results if r.strategy == "default"), None)
    head = (
        "| strategy | setting | energy (J) | req/J | tokens/J | eff. vs default | "
        "p50 TTFT (s) | p99 TTFT (s) | p50 e2e (s) | p99 e2e (s) | Δp99 e2e | "
        "throughput (req/s) | Δthroughput | stalled@high (s) | throttled (s) |"
    )
    lines = [f"### scenario: {scenario}", "", head, "|" + "---|" * 15]
    for r in results:
        dp99 = delta_pct(r.p99_e2e_s, base.p99_e2e_s) if base else 0.0
        dthr = delta_pct(r.throughput_rps, base.throughput_rps) if base else 0.0
        lines.append(
            f"| {r.strategy} | {r.setting or '-'} | {r.energy_j:,.0f} | {r.requests_per_j:.5f} | "
            f"{r.tokens_per_j:.4f} | {r.efficiency_gain_pct:+.1f}% | {r.p50_ttft_s:.3f} | "
            f"{r.p99_ttft_s:.3f} | {r.p50_e2e_s:.2f} | {r.p99_e2e_s:.2f} | {dp99:+.2f}% | "
            f"{r.throughput_rps:.4f} | {dthr:+.2f}% | {r.stall_high_s:.1f} | {r.throttle_s:.1f} |"
        )
    capture = oracle_capture_pct(results, "tri-serve")
    if capture is not None:
        lines += ["", f"tri-serve captures {capture:.0f}% of the oracle's energy saving."]
    return "\n".join(lines)


def to_json(scenario: str, results: Sequence[StrategyResult]) -> dict[str, Any]:
    """The JSON document `--json` writes."""
    doc: dict[str, Any] = {"scenario": scenario, "results": [r.to_dict() for r in results]}
    capture = oracle_capture_pct(results, "tri-serve")
    if capture is not None:
        doc["tri_serve_oracle_capture_pct"] = capture
    return doc


def write_json(path: Path, docs: Sequence[dict[str, Any]]) -> None:
    """Write one scenario's document, or a list of them when several scenarios ran."""
    payload: Any = docs[0] if len(docs) == 1 else list(docs)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
