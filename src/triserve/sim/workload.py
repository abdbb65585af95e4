"""Request arrivals and shapes: Poisson, bursty (high inter-arrival CV) and trace replay.

Called by `triserve.sim.simulation.Simulation`, which pulls `RequestSpec`s in arrival order
from `arrivals(workload, rng)`. Trace CSVs have the header
``timestamp_s,input_tokens,output_tokens,media`` (media: none, image, audio, video).
Everything random draws from the `random.Random` passed in, so a seed fixes the run.
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from triserve.sim.scenario import ScenarioError, TokenDist, WorkloadSpec

__all__ = ["ArrivalSource", "RequestSpec", "arrivals", "read_trace"]

_Z90 = 1.2815515655446004  # standard normal 90th percentile


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One request as it arrives: time, prompt tokens (text + media), output text tokens."""

    arrival_s: float
    input_tokens: int
    output_tokens: int
    media: str


def _draw_tokens(dist: TokenDist, rng: random.Random) -> int:
    sigma = max(math.log(dist.p90 / dist.p50) / _Z90, 1e-6)
    value = rng.lognormvariate(math.log(dist.p50), sigma)
    return int(min(max(round(value), dist.min), dist.max))


def _draw_media(mix: dict[str, float], rng: random.Random) -> str:
    total = sum(mix.values())
    x = rng.random() * total
    for name, weight in sorted(mix.items()):
        x -= weight
        if x <= 0:
            return name
    return sorted(mix)[-1]


def _gaps_s(spec: WorkloadSpec, rng: random.Random) -> Iterator[float]:
    mean_s = 1.0 / spec.rate_rps
    if spec.arrival == "poisson":
        while True:
            yield rng.expovariate(spec.rate_rps)
    # Gamma gaps with shape 1/CV² keep the mean and give the requested coefficient of variation
    # (CV≈13 like the Azure code trace: long quiet spells, then near-simultaneous bursts).
    shape = 1.0 / (spec.cv * spec.cv)
    while True:
        yield rng.gammavariate(shape, mean_s / shape)


def read_trace(path: str | Path) -> list[tuple[float, int, int, str]]:
    """Rows ``(timestamp_s, input_tokens, output_tokens, media)`` of a trace CSV, sorted."""
    p = Path(path)
    rows: list[tuple[float, int, int, str]] = []
    try:
        with p.open(newline="") as fh:
            reader = csv.DictReader(fh)
            for lineno, row in enumerate(reader, start=2):
                try:
                    rows.append(
                        (
                            float(row["timestamp_s"]),
                            int(row["input_tokens"]),
                            int(row["output_tokens"]),
                            (row.get("media") or "none").strip() or "none",
                        )
                    )
                except (KeyError, TypeError, ValueError) as exc:
                    raise ScenarioError(
                        f"trace {p} line {lineno}: need timestamp_s,input_tokens,"
                        f"output_tokens[,media] ({exc})"
                    ) from exc
    except OSError as exc:
        raise ScenarioError(f"trace file {p} cannot be read: {exc}") from exc
    rows.sort(key=lambda r: r[0])
    return rows


def arrivals(spec: WorkloadSpec, rng: random.Random) -> Iterator[RequestSpec]:
    """Requests in arrival order (infinite for Poisson/bursty, the trace's rows for replay)."""
    if spec.arrival == "trace":
        assert spec.trace is not None
        rows = read_trace(spec.trace)
        t0 = rows[0][0] if rows else 0.0
        for ts, n_in, n_out, media in rows:
            extra = spec.media_tokens.get(media, 0)
            yield RequestSpec((ts - t0) * spec.trace_time_scale, n_in + extra, n_out, media)
        return
    now_s = 0.0
    for gap_s in _gaps_s(spec, rng):
        now_s += gap_s
        media = _draw_media(spec.media_mix, rng)
        n_in = _draw_tokens(spec.input_tokens, rng) + spec.media_tokens.get(media, 0)
        yield RequestSpec(now_s, n_in, _draw_tokens(spec.output_tokens, rng), media)


class ArrivalSource:
    """Arrivals with look-ahead: `pop_due(t)` takes those due, `peek_until(t)` only looks."""

    def __init__(self, spec: WorkloadSpec, rng: random.Random) -> None:
        self._it = arrivals(spec, rng)
        self._buf: list[RequestSpec] = []

    def _fill_until(self, t_s: float) -> None:
        while not self._buf or self._buf[-1].arrival_s <= t_s:
            nxt = next(self._it, None)
            if nxt is None:
                return
            self._buf.append(nxt)

    def next_time_s(self) -> float:
        """Arrival time of the next request (inf when a trace is exhausted)."""
        if not self._buf:
            nxt = next(self._it, None)
            if nxt is None:
                return float("inf")
            self._buf.append(nxt)
        return self._buf[0].arrival_s

    def pop_due(self, t_s: float) -> list[RequestSpec]:
        """Remove and return the requests arriving at or before `t_s`."""
        self._fill_until(t_s)
        due = [r for r in self._buf if r.arrival_s <= t_s]
        del self._buf[: len(due)]
        return due

    def peek_until(self, t_s: float) -> list[RequestSpec]:
        """The requests that will arrive up to `t_s`, without consuming them."""
        self._fill_until(t_s)
        return [r for r in self._buf if r.arrival_s <= t_s]
