"""One table from several bench JSON files: ``triserve bench --summary out/*.json``.

Each file is what ``triserve bench --json`` wrote: one block's document, or a list of them
(one per scenario and boost hold). The summary prints a row per block and strategy, with the
changes versus that block's ``default`` row as ``mean [min, max]`` over the block's seeds,
and the latency-guard trips summed over them. Nothing is simulated: the figures are the
files', recomputed from their per-seed results, so a README table built from it can be
regenerated from the JSON the bench left.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from triserve.bench.results import StrategyResult
from triserve.bench.seeds import aggregate

#: The per-seed result fields a StrategyResult is rebuilt from.
_FIELDS = frozenset(StrategyResult.__dataclass_fields__)


class SummaryError(ValueError):
    """A file that is not a bench JSON document; the message names the file and the problem."""


def load_blocks(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """Every block document in `paths`, in order."""
    blocks: list[dict[str, Any]] = []
    for path in paths:
        try:
            payload = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SummaryError(f"{path}: cannot read bench JSON ({exc})") from None
        docs = payload if isinstance(payload, list) else [payload]
        for doc in docs:
            if not isinstance(doc, dict) or "per_seed" not in doc or "scenario" not in doc:
                raise SummaryError(
                    f"{path}: not a `triserve bench --json` document (no scenario/per_seed)"
                )
            blocks.append(doc)
    return blocks


def _results(seed_doc: dict[str, Any]) -> list[StrategyResult]:
    return [
        StrategyResult(**{k: v for k, v in row.items() if k in _FIELDS})
        for row in seed_doc["results"]
    ]


def _pmu(block: dict[str, Any]) -> str:
    """The block's PMU variant: parked share and the hold that applies without boost."""
    parked = block.get("parked_share")
    decode = block.get("decode_share")
    text = f"hold {block['idle_hold_s']:g} s"
    if parked is not None:
        text = f"parked {parked:g}, {text}"
    return text if decode is None else f"{text}, decode {decode:g}"


def summary_table(blocks: Sequence[dict[str, Any]]) -> str:
    """Markdown: a row per block and strategy, default rows left out."""
    lines = [
        "| scenario | PMU | strategy | seeds | eff. vs default | eff. vs best alternative "
        "| Δp99 e2e | Δp99 TTFT | Δthroughput | guard trips | share of optimum |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for block in blocks:
        per_seed = [_results(s) for s in block["per_seed"]]
        trips: dict[str, int] = {}
        for rows in per_seed:
            for r in rows:
                trips[r.strategy] = trips.get(r.strategy, 0) + r.slo_guard_trips
        for row in aggregate(per_seed):
            if row.strategy == "default":
                continue
            share = row.share_of_optimum_pct
            alt = row.vs_best_alternative_pct
            lines.append(
                f"| {block['scenario']} | {_pmu(block)} | {row.strategy} "
                f"| {row.seeds} | {row.efficiency_gain_pct.text()} "
                f"| {'-' if alt is None else alt.text()} "
                f"| {row.d_p99_e2e_pct.text('+.2f')} | {row.d_p99_ttft_pct.text('+.2f')} "
                f"| {row.d_throughput_pct.text('+.2f')} | {trips.get(row.strategy, 0)} "
                f"| {'-' if share is None else share.text('.0f')} |"
            )
    return "\n".join(lines)
