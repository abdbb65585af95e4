"""Several seeds of one bench block: per-row mean and spread, as a table and as JSON.

Called by `triserve.bench.cli` for ``--seeds N``. Each seed is a paired comparison of its
own (every row replays that seed's arrivals, and the searched rows are searched on it); the
aggregate summarises the per-seed changes versus default. The spread is the range over
seeds (min to max), which with a handful of seeds says more than a standard deviation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from triserve.bench.results import BEST_ALTERNATIVE_ROWS, StrategyResult, delta_pct
from triserve.bench.search import Bounds

#: What an alternative must keep to count as "the best alternative": the policy's default
#: latency bound (+1%) on p99 end-to-end latency and p99 TTFT, throughput within -0.5%.
ALTERNATIVE_RULE = Bounds(p99_ttft_pct=1.0)


@dataclass(frozen=True, slots=True)
class Spread:
    """Mean, minimum and maximum of one figure over seeds."""

    mean: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        """The spread of a non-empty sequence."""
        return cls(sum(values) / len(values), min(values), max(values))

    def text(self, fmt: str = "+.1f", unit: str = "%") -> str:
        """``mean [min, max]`` with `unit` after each figure."""
        return f"{self.mean:{fmt}}{unit} [{self.min:{fmt}}{unit}, {self.max:{fmt}}{unit}]"


@dataclass(frozen=True, slots=True)
class RowAggregate:
    """One row over seeds: efficiency gain, latency and throughput changes, share of optimum.

    `share_of_optimum_pct` is None when some seed had no usable optimum row;
    `vs_best_alternative_pct` (tokens per joule versus the most efficient of the
    `BEST_ALTERNATIVE_ROWS` that keeps `ALTERNATIVE_RULE` on the same seed) None when a
    seed ran none that keeps it.
    """

    strategy: str
    seeds: int
    efficiency_gain_pct: Spread
    d_p99_e2e_pct: Spread
    d_p99_ttft_pct: Spread
    d_throughput_pct: Spread
    share_of_optimum_pct: Spread | None
    vs_best_alternative_pct: Spread | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; each spread is ``{"mean", "min", "max"}``."""
        return asdict(self)


def aggregate(per_seed: Sequence[Sequence[StrategyResult]]) -> list[RowAggregate]:
    """Per-row spreads over seeds, in the row order of the first seed.

    Every seed's rows must include ``default`` (the changes are relative to it).
    """
    if not per_seed:
        raise ValueError("aggregate needs at least one seed's results")
    out = []
    best_alt: list[float | None] = []
    for rows in per_seed:
        base = next((r for r in rows if r.strategy == "default"), None)
        alts = [
            r.tokens_per_j
            for r in rows
            if r.strategy in BEST_ALTERNATIVE_ROWS
            and base is not None
            and not ALTERNATIVE_RULE.violations(base, r)
        ]
        best_alt.append(max(alts) if alts else None)
    for name in [r.strategy for r in per_seed[0]]:
        pairs = []
        vs_alt: list[float | None] = []
        for rows, alt in zip(per_seed, best_alt, strict=True):
            by_name = {r.strategy: r for r in rows}
            if "default" not in by_name:
                raise ValueError("every seed's results need a default row")
            if name in by_name:
                pairs.append((by_name[name], by_name["default"]))
                mine = by_name[name].tokens_per_j
                vs_alt.append(None if not alt else 100.0 * (mine / alt - 1.0))

        def spread(fn: Callable[[StrategyResult, StrategyResult], float]) -> Spread:
            return Spread.of([fn(r, d) for r, d in pairs])  # noqa: B023

        shares = [r.share_of_optimum_pct for r, _ in pairs]
        out.append(
            RowAggregate(
                strategy=name,
                seeds=len(pairs),
                efficiency_gain_pct=spread(lambda r, d: r.efficiency_gain_pct),
                d_p99_e2e_pct=spread(lambda r, d: delta_pct(r.p99_e2e_s, d.p99_e2e_s)),
                d_p99_ttft_pct=spread(lambda r, d: delta_pct(r.p99_ttft_s, d.p99_ttft_s)),
                d_throughput_pct=spread(lambda r, d: delta_pct(r.throughput_rps, d.throughput_rps)),
                share_of_optimum_pct=(
                    None
                    if any(s is None for s in shares)
                    else Spread.of([s for s in shares if s is not None])
                ),
                vs_best_alternative_pct=(
                    None
                    if any(v is None for v in vs_alt)
                    else Spread.of([v for v in vs_alt if v is not None])
                ),
            )
        )
    return out


def aggregate_table(title: str, rows: Sequence[RowAggregate]) -> str:
    """The aggregate as Markdown: ``mean [min, max]`` over seeds for every figure."""
    n = max((r.seeds for r in rows), default=0)
    lines = [
        f"### {title}: mean [min, max] over {n} seeds",
        "",
        "| strategy | eff. vs default | eff. vs best alternative | Δp99 e2e | Δp99 TTFT "
        "| Δthroughput | share of optimum |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        share = "-" if r.share_of_optimum_pct is None else r.share_of_optimum_pct.text(".0f")
        alt = "-" if r.vs_best_alternative_pct is None else r.vs_best_alternative_pct.text()
        lines.append(
            f"| {r.strategy} | {r.efficiency_gain_pct.text()} | {alt} "
            f"| {r.d_p99_e2e_pct.text('+.2f')} | {r.d_p99_ttft_pct.text('+.2f')} "
            f"| {r.d_throughput_pct.text('+.2f')} | {share} |"
        )
    return "\n".join(lines)
