"""The agent's error kinds and their counts: `triserve_agent_errors_total{kind}`.

Every input the agent skips, every call that fails and every restore that does not verify is
counted under one `ErrorKind` and logged (the agent keeps running). The exporter publishes
every kind from the start, at 0 until it happens, so an alert or a dashboard on a kind has a
series to read before the first error. docs/architecture.md lists the same kinds (a test
checks that the two agree).

`ErrorCounts` is owned by `triserve.node_agent.agent.NodeAgent`; scrapers, the cluster source,
the state file and the simulated node report into it through `NodeAgent.error`.
"""

from __future__ import annotations

import logging
from collections import Counter
from enum import StrEnum

log = logging.getLogger("triserve.node_agent.agent")


class ErrorKind(StrEnum):
    """What went wrong; the `kind` label of `triserve_agent_errors_total`."""

    NVML = "nvml"
    SCRAPE = "scrape"
    SCRAPE_FOREIGN = "scrape-foreign"
    SCRAPE_TASK = "scrape-task"
    STALE = "stale"
    ANNOTATION = "annotation"
    REPORT = "report"
    POLICY = "policy"
    MAPPING = "mapping"
    WATCH = "watch"
    PODRESOURCES = "podresources"
    RESTORE = "restore"
    STATE_FILE = "state-file"
    TASK = "task"
    WATCHDOG = "watchdog"


class ErrorCounts:
    """Errors counted by kind since the agent started (read under the agent's lock)."""

    def __init__(self) -> None:
        self._counts: Counter[ErrorKind] = Counter({kind: 0 for kind in ErrorKind})

    def count(self, kind: ErrorKind | str, message: str) -> None:
        """Count and log one error of `kind` (a kind that is not an `ErrorKind` is a bug)."""
        known = ErrorKind(kind)
        self._counts[known] += 1
        log.warning("%s error: %s", known.value, message)

    def __getitem__(self, kind: ErrorKind | str) -> int:
        return self._counts[ErrorKind(kind)]

    def items(self) -> list[tuple[ErrorKind, int]]:
        """Every kind with its count, zeros included, in the enum's order."""
        return [(kind, self._counts[kind]) for kind in ErrorKind]
