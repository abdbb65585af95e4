"""Every row of the engine support matrix (docs/serving-pods.md), through the agent's scrape path.

Each real fixture (tests/fixtures/exporters, source in its header) is served on 127.0.0.1 and
read by `Scrapers` into a `NodeAgent`, exactly as a pod's `/metrics` is in production; the
test then checks what the agent holds: the engine, its units, running/waiting (or that they
are unknown) and the phase the controller would read. Hypothesis then varies the values and
adds OpenMetrics exemplars to each format: the parser keeps its shape or rejects the scrape,
it never crashes or invents a zero.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from triserve.api.models import EnergyPolicySpec
from triserve.control.phases import DECODE, ONESHOT, PREFILL, UNKNOWN, classify
from triserve.node_agent.agent import NodeAgent, PolicyRef
from triserve.node_agent.promtext import ScrapeError
from triserve.node_agent.safety import StateFile
from triserve.node_agent.scraping import ScrapeLimits, Scrapers
from triserve.node_agent.serving import parse_serving_scrape
from triserve.node_agent.stages import ServingPod
from triserve.simnode import open_simulation
from triserve.telemetry import Histogram, ServingSnapshot

from ...support.httpserver import http_server

CORPUS = Path(__file__).parents[2] / "fixtures" / "exporters"


@dataclass(frozen=True)
class Row:
    fixture: str
    engine: str
    units: tuple[str, ...]
    running: int | None  # None: unknown
    waiting: int | None
    phase: str | None  # what classify() reads from this one body (None: idle)


ROWS = [
    Row("vllm-dp2-running.prom", "vllm", ("0", "1"), 0, None, None),
    Row("vllm-v0-bloom.prom", "vllm", (), None, None, UNKNOWN),
    Row("sglang-queue-metrics.prom", "sglang", (), 0, None, None),
    Row("sglang-dp-attention-aibrix.prom", "sglang", ("1", "3"), None, 0, None),
    Row("trtllm-dynamo-doc-example.prom", "trtllm", (), None, None, UNKNOWN),
    Row("trtllm-serve-unprefixed.prom", "trtllm-serve", (), None, None, UNKNOWN),
    Row("pytrtllm-pr5560.prom", "pytrtllm", (), 1, 0, DECODE),
    Row("triton-trtllm-backend-readme.prom", "triton", (), 0, 1, PREFILL),
    Row("triton-ensemble-issue49.prom", "triton", (), None, None, UNKNOWN),
    Row("tgi-format-ibm-vllm-tgis.prom", "tgi", (), 0, 0, None),
]


def _agent(tmp_path: Path, port: int, rows: list[Row]) -> NodeAgent:
    sim = open_simulation("reference", seed=0)
    agent = NodeAgent(sim.backend, "node-1", StateFile(tmp_path / "state.json"))
    agent.set_policy(PolicyRef("p1", EnergyPolicySpec.model_validate({}), 1))
    agent.set_pods(
        [
            ServingPod(
                "ns",
                r.fixture,
                "decode",
                metrics_port=port,
                metrics_path="/" + r.fixture.removesuffix(".prom"),
                pod_ip="127.0.0.1",
            )
            for r in rows
        ]
    )
    return agent


def _route(path: str) -> str | None:
    file = CORPUS / (path.lstrip("/") + ".prom")
    return file.read_text() if file.is_file() else None


async def test_every_matrix_row_reads_as_documented_through_the_scrape_path(
    tmp_path: Path,
) -> None:
    with http_server(_route) as port:
        agent = _agent(tmp_path, port, ROWS)
        async with httpx.AsyncClient() as client:
            # A generous deadline: ten scrapes share a loaded CI machine.
            scrapers = Scrapers(agent, client, clock=lambda: 5.0, limits=ScrapeLimits(5.0))
            try:
                await scrapers.scrape_once()
            finally:
                scrapers.close()
    assert agent.errors["scrape"] == 0, "a matrix fixture was rejected"
    for row in ROWS:
        key = ("ns", row.fixture)
        snap = agent.inputs.serving[key]
        assert tuple(agent.inputs.serving_engines[key]) == row.units, row.fixture
        assert (snap.running if snap.knows("running") else None) == row.running, row.fixture
        assert (snap.waiting if snap.knows("waiting") else None) == row.waiting, row.fixture
        assert classify(None, snap) == row.phase, row.fixture
        assert parse_serving_scrape(_route("/" + row.fixture[:-5]) or "", 0).engine_kind == (
            row.engine
        )


def test_the_docs_matrix_names_every_fixture_it_relies_on() -> None:
    page = (Path(__file__).parents[3] / "docs" / "serving-pods.md").read_text()
    assert [r.fixture for r in ROWS if f"`{r.fixture}`" not in page] == []
    assert "test_engine_matrix.py" in page


# ---- spellings and labels the engines' own code shows, applied to real bodies ---------------
# No public /metrics body exists for Ray Serve LLM or for vLLM-Omni's per-stage series; these
# tests take a real vLLM fixture and apply the renaming or relabelling that the engine's own
# source performs (cited at each helper), then read the result through the scrape path.


def _as_ray_exports(body: str, sep: str) -> str:
    """`vllm:x` as Ray exports it: vLLM's Ray stat logger (vllm/v1/metrics/ray_wrappers.py,
    `_get_sanitized_opentelemetry_name`: re.sub(r"[^a-zA-Z0-9_]", "_", name)) makes it `vllm_x`
    and Ray's metrics agent adds `ray_` (Ray's own dashboard, python/ray/dashboard/modules/
    metrics/dashboards/vllm_engine_panels.py, queries `ray_vllm_num_requests_running`); older
    releases kept the colon (`ray_vllm:`, serve_llm_dashboard_panels.py)."""
    return re.sub(r"^(# (?:HELP|TYPE) )?vllm:", rf"\1ray_vllm{sep}", body, flags=re.M)


def _as_omni_stages(body: str, stages: dict[str, tuple[str, str]]) -> str:
    """vLLM-Omni's stat logger replaces upstream vLLM's `engine` label by `replica` and `stage`
    (vllm-project/vllm-omni tests/metrics/test_stat_logger.py, commit 01e7897: e.g.
    `{model_name="m",replica="0",stage="talker"}`); `stages` maps engine → (stage, replica)."""

    def relabel(m: re.Match[str]) -> str:
        stage, replica = stages[m.group(2)]
        rest = m.group(1) + m.group(3)
        return "{" + rest.strip(",") + f',replica="{replica}",stage="{stage}"' + "}"

    return re.sub(r'\{([^}]*?)engine="(\d+)",?([^}]*)\}', relabel, body)


async def _scrape_bodies(tmp_path: Path, bodies: dict[str, str]) -> NodeAgent:
    rows = [Row(name + ".prom", "", (), None, None, None) for name in bodies]
    with http_server(lambda path: bodies.get(path.lstrip("/"))) as port:
        agent = _agent(tmp_path, port, rows)
        async with httpx.AsyncClient() as client:
            scrapers = Scrapers(agent, client, clock=lambda: 5.0, limits=ScrapeLimits(5.0))
            try:
                await scrapers.scrape_once()
            finally:
                scrapers.close()
    assert agent.errors["scrape"] == 0
    return agent


async def test_ray_serve_llm_reads_as_vllm_in_both_spellings(tmp_path: Path) -> None:
    body = (CORPUS / "vllm-v0-bloom.prom").read_text()
    bodies = {
        "vllm": body,
        "colon": _as_ray_exports(body, ":"),
        "underscore": _as_ray_exports(body, "_"),
    }
    assert "ray_vllm_prompt_tokens_total{" in bodies["underscore"]
    agent = await _scrape_bodies(tmp_path, bodies)
    vllm = agent.inputs.serving[("ns", "vllm.prom")]
    assert vllm.prompt_tokens_total == 1196.0 and vllm.ttft is not None
    for name in ("colon", "underscore"):
        # The same tokens, TTFT histogram and unknowns as the vLLM body it came from.
        assert agent.inputs.serving[("ns", f"{name}.prom")] == vllm, name
        assert parse_serving_scrape(bodies[name], 5.0).engine_kind == "ray-vllm"


def test_ray_counter_exported_twice_counts_once() -> None:
    # Ray >= 2.10 exports a counter as `x_total` and, for compatibility, as a gauge `x`
    # (python/ray/util/metrics.py, Counter; RAY_EXPORT_COUNTER_AS_GAUGE): the same observation.
    ray = _as_ray_exports((CORPUS / "vllm-v0-bloom.prom").read_text(), "_")
    both = ray + "".join(
        line.replace("_total{", "{", 1) + "\n" for line in ray.splitlines() if "_total{" in line
    )
    assert "ray_vllm_prompt_tokens{" in both
    snap = parse_serving_scrape(both, 1.0).total
    assert (snap.prompt_tokens_total, snap.generation_tokens_total) == (1196.0, 218152.0)


async def test_vllm_omni_stages_in_one_pod_are_units_and_replicas_are_summed(
    tmp_path: Path,
) -> None:
    body = (CORPUS / "vllm-dp2-running.prom").read_text()
    # The real body had both engines idle; running set here to 2 and 3.
    busy = body.replace(
        '"0",model_name="deepseek-v4-flash-w8a8-mtp"} 0.0',
        '"0",model_name="deepseek-v4-flash-w8a8-mtp"} 2.0',
    )
    busy = busy.replace(
        '"1",model_name="deepseek-v4-flash-w8a8-mtp"} 0.0',
        '"1",model_name="deepseek-v4-flash-w8a8-mtp"} 3.0',
    )
    two_stages = _as_omni_stages(busy, {"0": ("thinker", "0"), "1": ("talker", "0")})
    one_stage_two_replicas = _as_omni_stages(busy, {"0": ("thinker", "0"), "1": ("thinker", "1")})
    assert 'replica="0",stage="talker"}' in two_stages and "engine=" not in two_stages
    agent = await _scrape_bodies(
        tmp_path, {"stages": two_stages, "replicas": one_stage_two_replicas}
    )
    stages = parse_serving_scrape(two_stages, 5.0)
    assert stages.unit_label == "stage"
    assert {k: s.running for k, s in stages.engines.items()} == {"talker": 3, "thinker": 2}
    assert tuple(agent.inputs.serving_engines[("ns", "stages.prom")]) == ("talker", "thinker")
    assert tuple(agent.inputs.serving_engines[("ns", "replicas.prom")]) == ("thinker",)
    thinker = agent.inputs.serving_engines[("ns", "replicas.prom")]["thinker"]
    assert thinker.running == 5 and not thinker.knows("waiting")


# ---- issue 27, item 3: what a broken reader got wrong -------------------------------------
def test_exemplars_on_bucket_lines_keep_the_buckets() -> None:
    body = (CORPUS / "vllm-dp-engine1-ttft.prom").read_text()
    # OpenMetrics puts an exemplar after a bucket's value (openmetrics.io, "Exemplars").
    with_exemplars = re.sub(r"(_bucket\{[^}]*\} [0-9.]+)$", r'\1 # {trace_id="4bf92f"} 0.07',
                            body, flags=re.M)  # fmt: skip
    assert "# {trace_id" in with_exemplars
    plain = parse_serving_scrape(body, 1.0).engines["1"].ttft
    ttft = parse_serving_scrape(with_exemplars, 1.0).engines["1"].ttft
    assert ttft is not None and plain is not None
    assert ttft.upper_bounds_s == plain.upper_bounds_s and len(ttft.upper_bounds_s) > 1
    q = ttft.quantile_s(0.5)
    assert q is not None and q > 0.0


def test_a_quantile_without_finite_buckets_is_unknown_not_zero_seconds() -> None:
    only_inf = Histogram((float("inf"),), (10.0,), 4.2, 10.0)
    assert only_inf.quantile_s(0.5) is None


def _snap(t: float, *, prompt: float, gen: float, running: int = 4, waiting: int = 0,
          finished: float = 0.0) -> ServingSnapshot:  # fmt: skip
    return ServingSnapshot(t, running, waiting, prompt, gen, finished)


def test_a_counter_reset_counts_from_zero_instead_of_dropping_the_window() -> None:
    before = _snap(1.0, prompt=1_000_000.0, gen=2_000_000.0)
    # The engine restarted: its counters start again, and this window was mostly prefill.
    after = _snap(2.0, prompt=9_000.0, gen=100.0)
    assert classify(before, after) == PREFILL


def test_the_first_prefill_after_start_is_prefill_not_oneshot() -> None:
    fresh = _snap(1.0, prompt=0.0, gen=0.0, running=1)
    assert classify(None, fresh) == PREFILL
    # A stage that finished requests without ever counting a token is one-shot (a vocoder).
    vocoder = _snap(9.0, prompt=0.0, gen=0.0, running=1, finished=12.0)
    assert classify(None, vocoder) == ONESHOT


def test_an_sglang_without_token_counters_is_unknown_not_oneshot() -> None:
    body = (CORPUS / "sglang-deepseek-r1.prom").read_text()
    # The real body at load: its running gauge set to 3 here (the fixture was idle).
    busy = re.sub(r"^(sglang:num_running_reqs\{[^}]*\}) 0\.0$", r"\1 3.0", body, flags=re.M)
    snap = parse_serving_scrape(busy, 1.0).total
    assert snap.running == 3 and not snap.knows("generation_tokens")
    assert classify(None, snap) == UNKNOWN


# ---- hypothesis over each format ----------------------------------------------------------
_VALUE = re.compile(r"(?<=[ }])(-?[0-9][0-9.e+]*)$", re.M)


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.fixture)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_each_format_survives_any_values_and_exemplars(row: Row, data: st.DataObject) -> None:
    body = (CORPUS / row.fixture).read_text()

    def value(_: re.Match[str]) -> str:
        v = data.draw(
            st.one_of(
                st.integers(0, 10**6).map(str),
                st.floats(allow_nan=True, allow_infinity=True).map(repr),
                st.sampled_from(["-1", "1e309", "NaN", "+Inf"]),
            )
        )
        exemplar = data.draw(st.sampled_from(["", ' # {trace_id="a"} 0.5', " # {} 1 1700000000"]))
        return v + exemplar

    text = _VALUE.sub(value, body)
    try:
        scrape = parse_serving_scrape(text, 1.0)
    except ScrapeError:
        return  # rejected as a whole: the previous snapshot ages
    assert scrape.engine_kind == row.engine
    assert tuple(scrape.engines) == row.units
    for snap in (scrape.total, *scrape.engines.values()):
        assert snap.running >= 0 and snap.waiting >= 0
        assert classify(None, snap) in {None, PREFILL, DECODE, ONESHOT, UNKNOWN}
