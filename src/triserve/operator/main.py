"""The operator's start: triserve's handlers in an explicit kopf registry, run by kopf.

`triserve operator` (`cli.py`) and the tests (tests/integration/operator/harness.py,
tests/e2e) start the operator the same way: `registered(settings)` declares every handler
(`handlers.register`) on a fresh `kopf.OperatorRegistry`, and `operate(...)` runs it through
kopf's embedding API (`kopf.operator`, https://docs.kopf.dev/en/stable/embedding/). This
module only registers and starts; the handlers live in `handlers.py` and call the domain
modules (`reconciler`, `placement`, `aggregation`).
"""

from __future__ import annotations

import asyncio
from typing import NamedTuple

import kopf

from triserve.operator import handlers
from triserve.operator.reconciler import Placer
from triserve.operator.settings import OperatorSettings


class Registered(NamedTuple):
    """A kopf registry holding every triserve handler, and the placer those handlers call."""

    registry: kopf.OperatorRegistry
    placer: Placer


def registered(settings: OperatorSettings) -> Registered:
    """Every triserve handler, declared with `settings` on a fresh kopf registry."""
    registry = kopf.OperatorRegistry()
    return Registered(registry, handlers.register(registry, settings))


async def operate(
    registry: kopf.OperatorRegistry,
    *,
    liveness_endpoint: str | None = None,
    stop_flag: asyncio.Event | None = None,
) -> None:
    """Run the operator on `registry` until `stop_flag` is set or SIGINT/SIGTERM arrives.

    Cluster-wide, because EnergyPolicy and NodeEnergyReport are cluster-scoped. Standalone
    (no kopf peering), because the chart runs exactly one replica with the Recreate
    strategy. `liveness_endpoint` is kopf's probe URL (``http://0.0.0.0:8080/healthz``),
    None for none. kopf installs its signal handlers when this runs in the main thread.
    """
    await kopf.operator(
        registry=registry,
        clusterwide=True,
        standalone=True,
        liveness_endpoint=liveness_endpoint,
        stop_flag=stop_flag,
    )
