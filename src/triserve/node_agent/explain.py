"""`triserve explain-metrics`: what the agent concludes from a saved or live `/metrics` body.

Runs the agent's own parsers (`triserve.node_agent.serving`, `triserve.node_agent.dcgm`) and
phase classifier (`triserve.control.phases.classify`) on one body, or on two taken
`--interval` seconds apart (`--then`) for token rates and windowed latency quantiles, and
prints the engine and, per engine / rank / stage unit, its phase, running and waiting
requests, token rates and latency quantiles; for a dcgm-exporter body, per GPU its UUID, pods
and activity fields; and the metric families it ignored. Signals the engine does not export
are shown as unknown (null in `--json`), never as zero. An unreadable file or URL exits 2
with one line on stderr; a body the agent cannot use exits 1 with the reason in `errors`.

docs/serving-pods.md uses it in its wiring check.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from triserve.control.phases import UNKNOWN, classify, counter_delta, unknown_reason
from triserve.node_agent.dcgm import WANTED_METRICS, ForeignScrapeError, parse_dcgm
from triserve.node_agent.promtext import ScrapeError, read_samples
from triserve.node_agent.serving import ServingScrape, parse_serving_scrape
from triserve.telemetry import Histogram, ServingSnapshot

#: Quantiles shown per latency histogram.
QUANTILES = (0.5, 0.99)
_PART = re.compile(r"_(bucket|sum|count|created)$")
#: The dcgm-exporter activity fields shown per GPU.
_ACTIVITY_FIELDS = ("tensor_active", "dram_active", "sm_active", "gr_engine_active")


class Unreadable(Exception):
    """The file or URL could not be read (exit 2)."""


def read_source(source: str, timeout_s: float = 5.0) -> str:
    """The text of a file, or of an http(s) URL; raises `Unreadable` with one line."""
    if re.match(r"^https?://", source):
        try:
            response = httpx.get(source, timeout=timeout_s)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise Unreadable(f"cannot fetch {source}: {type(exc).__name__}: {exc}") from None
        return response.text
    try:
        return Path(source).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise Unreadable(f"cannot read {source}: {exc.strerror or exc}") from None


@dataclass(slots=True)
class Report:
    """What one explanation found (`as_json` gives the documented shape)."""

    engine: str | None = None
    units: list[dict[str, Any]] = field(default_factory=list)
    gpus: list[dict[str, Any]] = field(default_factory=list)
    ignored_families: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The `--json` object."""
        return {
            "engine": self.engine,
            "units": self.units,
            "gpus": self.gpus,
            "ignored_families": self.ignored_families,
            "errors": self.errors,
        }


def _families(names: set[str] | frozenset[str]) -> list[str]:
    return sorted({_PART.sub("", n) for n in names})


def _quantiles(hist: Histogram | None, earlier: Histogram | None) -> dict[str, float | None]:
    if hist is None:
        return {}
    window = hist.minus(earlier) if earlier is not None else hist
    return {f"p{round(q * 100)}": window.quantile_s(q) for q in QUANTILES}


def _unit(
    unit_id: str, snap: ServingSnapshot, first: ServingSnapshot | None, interval_s: float | None
) -> dict[str, Any]:
    phase = classify(first, snap) or "idle"
    row: dict[str, Any] = {
        "id": unit_id,
        "phase": phase,
        "running": snap.running if snap.knows("running") else None,
        "waiting": snap.waiting if snap.knows("waiting") else None,
        "unknown": sorted(snap.unknown),
    }
    if phase == UNKNOWN:
        row["why"] = unknown_reason(snap)
    if first is not None and interval_s:
        for name, now, before, signal in (
            ("prompt_tokens_per_s", snap.prompt_tokens_total, first.prompt_tokens_total,
             "prompt_tokens"),
            ("generation_tokens_per_s", snap.generation_tokens_total,
             first.generation_tokens_total, "generation_tokens"),
        ):  # fmt: skip
            row[name] = counter_delta(now, before) / interval_s if snap.knows(signal) else None
    for name, hist, earlier in (
        ("ttft_s", snap.ttft, first.ttft if first else None),
        ("inter_token_s", snap.inter_token, first.inter_token if first else None),
        ("e2e_s", snap.e2e, first.e2e if first else None),
    ):
        quantiles = _quantiles(hist, earlier)
        if quantiles:
            row[name] = quantiles
    return row


def _units(scrape: ServingScrape) -> dict[str, ServingSnapshot]:
    if not scrape.engines:
        return {"pod": scrape.total}
    return {f"{scrape.unit_label}={key}": snap for key, snap in scrape.engines.items()}


def explain_serving(
    text: str, then: str | None = None, interval_s: float | None = None
) -> Report | None:
    """The report for a serving body (and a later one), or None when it holds no engine."""
    try:
        first = parse_serving_scrape(text, 0.0)
    except ScrapeError as exc:
        if "no serving metrics" in str(exc):
            return None
        return Report(errors=[str(exc)])
    report = Report(engine=first.engine_kind, ignored_families=_families(first.ignored_names))
    if then is None:
        report.units = [_unit(uid, snap, None, None) for uid, snap in _units(first).items()]
        return report
    try:
        second = parse_serving_scrape(then, interval_s or 1.0)
    except ScrapeError as exc:
        report.errors.append(f"--then: {exc}")
        return report
    before = _units(first)
    report.units = [
        _unit(uid, snap, before.get(uid), interval_s or 1.0) for uid, snap in _units(second).items()
    ]
    return report


def explain_dcgm(text: str, node: str) -> Report:
    """The report for a dcgm-exporter body (only `node`'s series when a node is named)."""
    result = read_samples(text, lambda name: name.startswith("DCGM_"))
    hosts = frozenset(
        s.labels.get("Hostname", "") or s.labels.get("hostname", "") for s in result.samples
    )
    report = Report(engine=None)
    try:
        snap = parse_dcgm(
            text,
            0.0,
            node or "",
            accept_unlabelled=True,
            hostnames=frozenset() if node else hosts,
        )
    except ForeignScrapeError as exc:
        report.errors.append(str(exc))
        return report
    for _key, gpu in sorted(snap.gpus.items()):
        row: dict[str, Any] = {
            "uuid": gpu.uuid or None,
            "gpu": gpu.gpu,
            "hostname": gpu.hostname or None,
            "pods": sorted("/".join(p for p in pod[:2] if p) for pod in gpu.all_pods()),
            "mig_instances": sorted(gpu.instances),
        }
        row.update({name: getattr(gpu, name) for name in _ACTIVITY_FIELDS})
        report.gpus.append(row)
    seen = {s.name for s in result.samples} | result.ignored_names
    report.ignored_families = _families(seen - WANTED_METRICS)
    if not snap.gpus:
        report.errors.append("no GPU series (gpu/UUID labels) in this dcgm-exporter body")
    return report


def explain(
    text: str, then: str | None = None, interval_s: float | None = None, node: str = ""
) -> Report:
    """What the agent concludes from `text` (a serving or dcgm-exporter body)."""
    serving = explain_serving(text, then, interval_s)
    if serving is not None:
        return serving
    if "DCGM_FI_" in text:
        return explain_dcgm(text, node)
    try:
        ignored = read_samples(text, lambda name: False).ignored_names
    except ScrapeError as exc:
        return Report(errors=[str(exc)])
    return Report(
        ignored_families=_families(ignored),
        errors=["no serving engine and no dcgm-exporter metrics recognised in this body"],
    )


def _fmt(value: object) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render(report: Report) -> str:
    """The human-readable form."""
    lines = [f"engine: {report.engine or 'none recognised'}"]
    for unit in report.units:
        parts = [f"phase {unit['phase']}", f"running {_fmt(unit['running'])}",
                 f"waiting {_fmt(unit['waiting'])}"]  # fmt: skip
        for key in ("prompt_tokens_per_s", "generation_tokens_per_s"):
            if key in unit:
                parts.append(f"{key.removesuffix('_per_s')}/s {_fmt(unit[key])}")
        for key in ("ttft_s", "inter_token_s", "e2e_s"):
            if key in unit:
                qs = ", ".join(f"{q} {_fmt(v)}" for q, v in unit[key].items())
                parts.append(f"{key.removesuffix('_s')} [{qs}] s")
        lines.append(f"  {unit['id']}: " + "; ".join(parts))
        if unit.get("why"):
            lines.append(f"    phase unknown: {unit['why']}")
    for gpu in report.gpus:
        acts = ", ".join(f"{k} {_fmt(gpu[k])}" for k in _ACTIVITY_FIELDS)
        lines.append(
            f"  GPU {gpu['gpu']} {gpu['uuid'] or '(no UUID)'} on {gpu['hostname'] or '?'}: "
            f"pods {', '.join(gpu['pods']) or 'none'}; {acts}"
        )
    if report.ignored_families:
        lines.append(f"ignored families ({len(report.ignored_families)}): "
                     + ", ".join(report.ignored_families[:20])
                     + (" …" if len(report.ignored_families) > 20 else ""))  # fmt: skip
    lines += [f"error: {e}" for e in report.errors]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """`triserve explain-metrics FILE|URL [--json] [--then FILE2 --interval S] [--node NAME]`."""
    parser = argparse.ArgumentParser(
        prog="triserve explain-metrics",
        description="Show what the node agent concludes from a /metrics body (serving engine "
        "or dcgm-exporter).",
    )
    parser.add_argument("source", metavar="FILE|URL", help="a saved /metrics body or its URL")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--then", metavar="FILE2", help="a later body of the same target")
    parser.add_argument(
        "--interval", type=float, default=None, metavar="S",
        help="seconds between the two bodies (default 1)",
    )  # fmt: skip
    parser.add_argument(
        "--node", default="", metavar="NAME",
        help="for dcgm-exporter: keep only this node's series, as the agent on it would",
    )  # fmt: skip
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.interval is not None and args.interval <= 0:
        parser.error("--interval must be > 0")
    try:
        text = read_source(args.source)
        then = read_source(args.then) if args.then else None
    except Unreadable as exc:
        print(f"triserve explain-metrics: {exc}", file=sys.stderr)
        return 2
    report = explain(text, then, args.interval, args.node)
    print(json.dumps(report.as_json(), indent=2) if args.json else render(report))
    return 1 if report.errors and not (report.units or report.gpus) else 0
