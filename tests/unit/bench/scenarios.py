"""Short scenarios for the bench tests (a minute of simulated time or less each)."""

from __future__ import annotations

from typing import Any

from triserve.sim import Scenario, load_scenario


def short_reference(duration_s: float = 60.0, warmup_s: float = 10.0) -> Scenario:
    """The reference scenario cut to `duration_s` (runs in about a second)."""
    return load_scenario("reference").model_copy(
        update={"duration_s": duration_s, "warmup_s": warmup_s}
    )


def split_scenario() -> Scenario:
    """Two GPUs that want opposite clocks.

    GPU0 runs a decode-only text stage (no prefill): memory-bound, so a low clock costs it
    nothing. GPU1 runs a heavy compute-bound pass over each whole request on the critical
    path, so any clock below boost lengthens every request by several percent.
    """
    doc: dict[str, Any] = load_scenario("reference").model_dump()
    thinker = next(s for s in doc["pipeline"]["stages"] if s["name"] == "thinker")
    thinker["prefill_tokens"] = "none"
    renderer = {
        "name": "renderer",
        "kind": "oneshot",
        "gpu": 1,
        "upstream": "thinker",
        "handoff": "whole",
        "handoff_latency_s": 0.05,
        "max_batch": 4,
        "oneshot": {"flops_per_token": 4.0e12, "ai": 2000, "efficiency": 0.5, "tensor_share": 0.9},
    }
    doc["pipeline"]["stages"] = [thinker, renderer]
    doc.update(name="split", duration_s=70.0, warmup_s=10.0)
    doc["workload"]["rate_rps"] = 0.3
    return Scenario.model_validate(doc)
