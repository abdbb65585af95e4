"""A disaggregated decode worker (llm-d / NVIDIA Dynamo) runs at its ridge, through the agent.

The agent scrapes a vLLM decode worker on 127.0.0.1 with its real scrape path (`Scrapers`),
then ticks. On such a worker requests wait in `vllm:num_requests_waiting` for their KV cache
to arrive from the prefill worker, and `vllm:prompt_tokens_total` counts the transferred
prompt tokens; read naively both say "prefill" and the GPU gets full boost. The body is
generated here from the family names vLLM documents for P/D disaggregation
(`vllm:prompt_tokens_by_source_total{source=…}`, vllm-project/vllm pull request #33290): no
public capture of such a worker's /metrics with values was found.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from triserve.api.models import EnergyPolicySpec
from triserve.control.decisions import Reason
from triserve.node_agent.agent import NodeAgent, PolicyRef
from triserve.node_agent.safety import StateFile
from triserve.node_agent.scraping import ScrapeLimits, Scrapers
from triserve.node_agent.stages import ServingPod
from triserve.simnode import open_simulation

from ...support.httpserver import http_server

RIDGE_MHZ = 1200


def decode_worker_body(*, prompt: int, local: int, transferred: int, generated: int) -> str:
    """A vLLM V1 decode worker's serving families (values chosen by the test)."""
    labels = 'engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"'
    return (
        f"vllm:num_requests_running{{{labels}}} 24.0\n"
        f"vllm:num_requests_waiting{{{labels}}} 6.0\n"
        f"vllm:prompt_tokens_total{{{labels}}} {prompt}.0\n"
        f'vllm:prompt_tokens_by_source_total{{{labels},source="local_compute"}} {local}.0\n'
        f'vllm:prompt_tokens_by_source_total{{{labels},source="local_cache_hit"}} 0.0\n'
        f'vllm:prompt_tokens_by_source_total{{{labels},source="external_kv_transfer"}} '
        f"{transferred}.0\n"
        f"vllm:generation_tokens_total{{{labels}}} {generated}.0\n"
    )


@pytest.mark.parametrize("role_label", [True, False], ids=["llm-d-role", "by-source-only"])
async def test_a_disaggregated_decode_worker_runs_at_its_ridge_not_at_boost(
    tmp_path: Path, role_label: bool
) -> None:
    sim = open_simulation("reference", seed=0)
    agent = NodeAgent(sim.backend, "node-1", StateFile(tmp_path / "state.json"))
    spec = EnergyPolicySpec.model_validate(
        {
            "triServe": {
                "arithmeticIntensity": {
                    "source": "Profile",
                    "profile": [{"stage": "decode", "phase": "decode", "ridgeMHz": RIDGE_MHZ}],
                }
            },
            # No kubelet here: the pod names its GPU by annotation, so its namespace is trusted.
            "gpuAnnotations": {"trustedNamespaces": ["llm"]},
        }
    )
    agent.set_policy(PolicyRef("p1", spec, 1))
    bodies = [
        decode_worker_body(prompt=40_000, local=40, transferred=39_960, generated=5_000),
        decode_worker_body(prompt=80_000, local=80, transferred=79_920, generated=5_600),
    ]
    body = {"now": bodies[0]}
    with http_server(lambda path: body["now"] if path == "/metrics" else None) as port:
        agent.set_pods(
            [
                ServingPod(
                    "llm",
                    "llama-decode-0",
                    "decode",
                    pipeline="llama-pd",
                    metrics_port=port,
                    pod_ip="127.0.0.1",
                    gpu_ids=("0",),
                    labels={"llm-d.ai/role": "decode"} if role_label else {},
                )
            ]
        )
        async with httpx.AsyncClient() as client:
            # Two rounds back to back, both scraping the pod (no spacing by cost).
            limits = ScrapeLimits(cost_spacing=0.0)
            scrapers = Scrapers(agent, client, clock=lambda: now_s, limits=limits)
            try:
                now_s = 1.0
                await scrapers.scrape_once()
                agent.tick(now_s)
                body["now"] = bodies[1]
                now_s = 2.0
                await scrapers.scrape_once()
                agent.tick(now_s)
            finally:
                scrapers.close()
    assert agent.errors["scrape"] == 0
    loop = agent.gpus[0].loop
    result = loop.last_result if loop is not None else None
    assert result is not None
    decision = result.decision
    assert decision.reason is Reason.RIDGE, decision.message
    assert decision.target_sm_clock_mhz is not None
    assert RIDGE_MHZ <= decision.target_sm_clock_mhz <= RIDGE_MHZ * 1.3
    snap = agent.inputs.serving[("llm", "llama-decode-0")]
    # Only the locally computed prompt tokens count as this worker's prefill work.
    assert snap.prompt_tokens_total == 80.0 and snap.kv_transfer_tokens_total == 79_920.0
