"""Operator settings: every knob that changes the operator's behaviour, injected, never global.

`triserve operator` (cli.py) turns command-line flags into `TRISERVE_OPERATOR_*` environment
variables because `kopf run -m triserve.operator.main` imports `main` in the same process;
`main` reads them once with `OperatorSettings.from_env()`. Tests build `OperatorSettings`
directly and hand it to `handlers.register()`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

ENV_PREFIX = "TRISERVE_OPERATOR_"

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
        login: kopf login function; None uses the service account, then the kubeconfig.

    """

    status_interval_s: float = 10.0
    release_timeout_s: float = 120.0
    release_poll_s: float = 5.0
    stale_report_intervals: float = 3.0
    max_event_nodes: int = 5
    login: LoginFn | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorSettings:
        """Read `TRISERVE_OPERATOR_<FIELD>` variables (upper-case field names); unset → default.

        Raises ValueError naming the variable when a value is not a number.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            if field.name == "login":
                continue
            var = ENV_PREFIX + field.name.upper()
            if var not in env:
                continue
            kind = int if field.type in (int, "int") else float
            try:
                values[field.name] = kind(env[var])
            except ValueError:
                raise ValueError(f"{var}={env[var]!r} is not a number") from None
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The environment variables that make `from_env()` return these settings."""
        return {
            ENV_PREFIX + field.name.upper(): str(getattr(self, field.name))
            for field in dataclasses.fields(self)
            if field.name != "login"
        }
