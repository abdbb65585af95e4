"""Operator settings: every knob that changes the operator's behaviour, injected, never global.

`triserve operator` (cli.py) builds `OperatorSettings` from its flags, tests build it
directly; both hand it to `main.registered()`, which passes it to `handlers.register()`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

#: A kopf login function: called with kopf's login kwargs, returns a `kopf.ConnectionInfo`.
LoginFn = Callable[..., Any]


@dataclasses.dataclass(frozen=True, kw_only=True)
class OperatorSettings:
    """How the operator paces itself and how long it waits for node agents.

    Attributes:
        status_interval_s: seconds between status re-computations per policy; the status
            subresource is patched only when the result differs from what is stored.
        release_timeout_s: how long deletion waits for agents to report `Released` before
            removing the finalizer anyway (with a warning event).
        release_poll_s: how often deletion re-checks the agents' reports.
        stale_report_intervals: a report counts as "reporting" while its `lastReportTime` is
            younger than this many of the policy's `reportIntervalSeconds`.
        max_event_nodes: how many node names an event or message lists before "+N more".
        budget_interval_s: seconds between re-balances of a policy's power budget; a lowered
            budget reaches the Nodes within one interval, and a lowered cap counts at its old
            value for one interval (while the agents apply it) before its watts go elsewhere.
        login: kopf login function; None uses the service account, then the kubeconfig.

    """

    status_interval_s: float = 10.0
    release_timeout_s: float = 120.0
    release_poll_s: float = 5.0
    stale_report_intervals: float = 3.0
    max_event_nodes: int = 5
    budget_interval_s: float = 5.0
    login: LoginFn | None = None
