"""A tolerant, bounded reader of Prometheus text exposition for the agent's scrapes.

dcgm-exporter and serving pods are read by `triserve.node_agent.dcgm` and
`triserve.node_agent.serving` through `read_samples`. Unlike a strict parser, one bad
series costs only itself: a line that does not parse (dcgm-exporter prints
``ERROR - FAILED TO CONVERT TO STRING`` for some fields), a non-finite value (``NaN``,
``+Inf``, ``1e309``) or a repeated series is counted and skipped, and every other series is
kept. Only the families the caller asks for are parsed at all, so a large dump costs little
beyond a scan of its lines; the names of the others are kept (`ReadResult.ignored_names`) so
`triserve explain-metrics` can say what it skipped. OpenMetrics exemplars (``# {trace_id=…}
0.3`` after a bucket's value) are dropped, never a reason to reject the line. A body with
no sample at all (empty, or only comments) raises
`ScrapeError`: an exporter that answers 200 with nothing is broken, not idle.

The format is the text exposition format (and OpenMetrics' ``# EOF``), see
https://prometheus.io/docs/instrumenting/exposition_formats/.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

#: A sample line: name, optional label block (quoted values may hold `}` and `\"`), rest.
_SERIES_RE = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{((?:[^"}]|"(?:[^"\\]|\\.)*")*)\})?(.*)')
#: A metric name at the start of a sample line.
_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = r"[a-zA-Z_][a-zA-Z0-9_]*"
_LABEL_VALUE = r'(?:[^"\\\n]|\\.)*'  # may hold escaped quotes, backslashes and newlines
#: One label pair (name and raw value captured).
_LABEL_RE = re.compile(rf'\s*({_LABEL_NAME})\s*=\s*"({_LABEL_VALUE})"\s*')
_PAIR = rf'\s*{_LABEL_NAME}\s*=\s*"{_LABEL_VALUE}"\s*'
#: A whole label block: pairs separated by commas, an optional trailing comma.
_LABELS_RE = re.compile(rf"(?:{_PAIR},)*(?:{_PAIR})?\s*")
#: A sample value as the exposition format writes it (Python's float() is laxer).
_VALUE_RE = re.compile(r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[Ii]nf(?:inity)?|NaN|nan)")
_UNESCAPE_RE = re.compile(r"\\(.)")

#: At most this many ignored metric names are remembered (a hostile body has many).
_MAX_IGNORED_NAMES = 4096

#: Decides from a metric name whether the caller wants the series.
Wanted = Callable[[str], bool]


class ScrapeError(ValueError):
    """A scrape that cannot be used at all; the message says why and what to check."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One series: metric name, labels and a finite value."""

    name: str
    labels: Mapping[str, str]
    value: float


@dataclass(slots=True)
class ReadResult:
    """The kept samples and what was skipped (for the caller's error counts)."""

    samples: list[Sample] = field(default_factory=list)
    lines_seen: int = 0
    malformed: int = 0
    non_finite: int = 0
    duplicates: int = 0
    non_finite_names: set[str] = field(default_factory=set)
    first_problem: str = ""
    #: Metric names of sample lines the caller did not ask for (not parsed).
    ignored_names: set[str] = field(default_factory=set)

    @property
    def skipped(self) -> int:
        """Series dropped for any reason."""
        return self.malformed + self.non_finite + self.duplicates

    def _problem(self, message: str) -> None:
        if not self.first_problem:
            self.first_problem = message


def _unescape(value: str) -> str:
    return _UNESCAPE_RE.sub(lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def _parse_labels(text: str) -> dict[str, str] | None:
    """The labels of a block, or None when it is not a well-formed label block."""
    if not text:
        return {}
    if _LABELS_RE.fullmatch(text) is None:
        return None
    return {
        key: _unescape(value) if "\\" in value else value for key, value in _LABEL_RE.findall(text)
    }


def _split_series(line: str) -> tuple[str, str, str] | None:
    """(name, label text, rest) of a sample line, or None when it is not one."""
    match = _SERIES_RE.match(line)
    if match is None:
        return None
    return match.group(1), match.group(2) or "", match.group(3)


def read_samples(text: str, wanted: Wanted) -> ReadResult:
    """Every finite, first-seen sample of the families `wanted` accepts.

    Raises `ScrapeError` when the text holds no sample line at all.
    """
    result = ReadResult()
    seen: set[tuple[str, frozenset[tuple[str, str]]]] = set()
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        result.lines_seen += 1
        name_match = _NAME_RE.match(line)
        if name_match is None:
            continue
        if not wanted(name_match.group(0)):
            if len(result.ignored_names) < _MAX_IGNORED_NAMES:
                result.ignored_names.add(name_match.group(0))
            continue
        _read_line(line, result, seen)
    if result.lines_seen == 0:
        raise ScrapeError("the scrape held no samples (empty or only comments)")
    return result


def _read_line(
    line: str, result: ReadResult, seen: set[tuple[str, frozenset[tuple[str, str]]]]
) -> None:
    parts = _split_series(line)
    labels = _parse_labels(parts[1]) if parts is not None else None
    # An OpenMetrics exemplar follows the value (and timestamp) after " # ".
    fields = parts[2].split("#", 1)[0].split() if parts is not None else []
    if parts is None or labels is None or not 1 <= len(fields) <= 2:
        result.malformed += 1
        result._problem(f"unparsable series: {line[:160]}")
        return
    name, value_text = parts[0], fields[0]
    if not _VALUE_RE.fullmatch(value_text):
        result.malformed += 1
        result._problem(f"{name}: value {value_text[:40]!r} is not a number")
        return
    value = float(value_text)
    if not math.isfinite(value):
        result.non_finite += 1
        result.non_finite_names.add(name)
        result._problem(f"{name}: non-finite value {value_text!r}")
        return
    key = (name, frozenset(labels.items()))
    if key in seen:
        result.duplicates += 1
        result._problem(f"{name}: repeated series {labels}")
        return
    seen.add(key)
    result.samples.append(Sample(name, labels, value))
