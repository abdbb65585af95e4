"""The alerts and the dashboard work on the metrics the agent really exports.

`promtool` checks and unit-tests the PrometheusRule's groups as the chart renders them. Then a
real Prometheus server on loopback scrapes the standalone agent running the simulated demo, and
every dashboard query (panels and template variables) and every alert expression runs through
Prometheus's HTTP API: panel queries must return data, alert expressions must evaluate.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import processes
from tests.support.eventually import eventually_sync

from .support import DASHBOARD, REPO, one, render, run, tool

# The one place that says how to run the agent against the simulator, without a cluster.
AGENT_COMMAND = (
    sys.executable,
    "-m",
    "triserve.cli",
    "agent",
    "--standalone",
    "--policy",
    "examples/energypolicy-full.yaml",
    "--sim",
    "reference",
    "--metrics-host",
    "127.0.0.1",
    "--metrics-port",
    "{port}",
    "--state-file",
    "{tmp}/state.json",
    # Tokens per joule are computed per report window: a short one gives data within seconds.
    "--report-interval",
    "2",
)
# The job name a ServiceMonitor gives the agents of release "triserve" (its Service's name).
AGENT_JOB = "triserve-agent"
SCRAPE_INTERVAL = "1s"
# Grafana's built-in variables, as Grafana would expand them for a short time range.
GRAFANA_MACROS = {"$__rate_interval": "5s", "$__interval": "1s", "$__range": "1m"}
DASHBOARD_VARIABLES = ("node", "policy", "gpu")


@pytest.fixture(scope="module")
def rule_groups(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The `groups` of the PrometheusRule the chart renders with default values."""
    objects = render(tmp_path_factory.mktemp("rules"), {}, include_crds=False)
    return {"groups": one(objects, "PrometheusRule")["spec"]["groups"]}


@pytest.fixture(scope="module")
def rules_file(rule_groups: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("promtool") / "triserve.rules.yaml"
    path.write_text(yaml.safe_dump(rule_groups, sort_keys=False))
    return path


def _alerts(rule_groups: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for group in rule_groups["groups"] for rule in group["rules"]}


def test_promtool_accepts_the_rendered_rules(rules_file: Path) -> None:
    out = run([tool("promtool"), "check", "rules", str(rules_file)]).stdout
    assert "SUCCESS" in out


def test_rendered_alerts_use_the_agent_job_of_the_release(rule_groups: dict[str, Any]) -> None:
    alerts = _alerts(rule_groups)
    assert f'job="{AGENT_JOB}"' in alerts["TriserveAgentDown"]["expr"]
    locked = alerts["TriserveGpuClocksLockedUnmanaged"]["expr"]
    assert "(triserve_gpu_clocks_locked) == 1" in locked
    assert "(triserve_gpu_managed) == 0" in locked


# promtool unit tests: synthetic series in, expected alerts out. GPU 0 is shared by two stage
# pods, so each of its metrics has two series: it must still alert once.
GPU = 'node="gpu-1", gpu="0", UUID="GPU-a", pod="", namespace="", container="", stage=""'
GPU_POD_B = (
    'node="gpu-1", gpu="0", UUID="GPU-a", pod="b", namespace="x", container="c", stage="talker"'
)
ALERT_CASES: list[dict[str, Any]] = [
    {
        "interval": "1m",
        "input_series": [
            {"series": f'triserve_gpu_clocks_locked{{{GPU}, policy=""}}', "values": "1x10"},
            {"series": f'triserve_gpu_clocks_locked{{{GPU_POD_B}, policy=""}}', "values": "1x10"},
            {"series": f'triserve_gpu_managed{{{GPU}, policy=""}}', "values": "0x10"},
            {"series": f'triserve_gpu_managed{{{GPU_POD_B}, policy=""}}', "values": "0x10"},
            {"series": f'up{{job="{AGENT_JOB}", instance="10.0.0.7:9402"}}', "values": "0x10"},
            {
                "series": 'triserve_policy_info{node="gpu-1", policy="omni", mode="Enforce",'
                ' strategy="TriServe"}',
                "values": "1x20",
            },
            {"series": f'triserve_gpu_managed{{{GPU}, policy="omni"}}', "values": "0x20"},
            {
                "series": f'triserve_gpu_throttle_seconds_total{{{GPU}, policy="omni"}}',
                "values": "0+30x30",
            },
            {
                "series": f'triserve_gpu_throttle_seconds_total{{{GPU_POD_B}, policy="omni"}}',
                "values": "0+30x30",
            },
        ],
        "alert_rule_test": [
            {
                "eval_time": "6m",
                "alertname": "TriserveGpuClocksLockedUnmanaged",
                "exp_alerts": [
                    {
                        "exp_labels": {
                            "severity": "critical",
                            "node": "gpu-1",
                            "gpu": "0",
                            "UUID": "GPU-a",
                        },
                        "exp_annotations": {
                            "summary": "GPU 0 on gpu-1 has clocks locked but is not managed",
                            "description": "triserve released GPU 0 (GPU-a) on gpu-1 but its SM "
                            "clocks are still locked. Reset them with nvidia-smi -i 0 "
                            "--reset-gpu-clocks and check the agent's log.",
                        },
                    }
                ],
            },
            {
                "eval_time": "6m",
                "alertname": "TriserveAgentDown",
                "exp_alerts": [
                    {
                        "exp_labels": {
                            "severity": "critical",
                            "job": AGENT_JOB,
                            "instance": "10.0.0.7:9402",
                        },
                        "exp_annotations": {
                            "summary": "triserve agent 10.0.0.7:9402 is down",
                            "description": "Prometheus cannot scrape the triserve agent at "
                            "10.0.0.7:9402 for 5 minutes. While it is down nobody restores the "
                            "clocks it locked on that node's GPUs.",
                        },
                    }
                ],
            },
            {
                "eval_time": "16m",
                "alertname": "TriservePolicyManagesNoGpus",
                "exp_alerts": [
                    {
                        "exp_labels": {"severity": "warning", "policy": "omni"},
                        "exp_annotations": {
                            "summary": "EnergyPolicy omni manages no GPU",
                            "description": "Agents on 1 node(s) follow EnergyPolicy omni but "
                            "none manages a GPU (no GPUs found, NVML unavailable or all "
                            "degraded). See kubectl describe enpol omni.",
                        },
                    }
                ],
            },
            # 30 s throttled per 60 s: half the time, above the 0.1 threshold, for 10 minutes.
            {
                "eval_time": "25m",
                "alertname": "TriserveGpuThrottling",
                "exp_alerts": [
                    {
                        "exp_labels": {
                            "severity": "warning",
                            "node": "gpu-1",
                            "gpu": "0",
                            "UUID": "GPU-a",
                        },
                        "exp_annotations": {
                            "summary": "GPU 0 on gpu-1 is throttling",
                            "description": "GPU 0 (GPU-a) on gpu-1 spent 50% of the last 10 "
                            "minutes with a thermal or power clock event active.",
                        },
                    }
                ],
            },
            # A GPU that is managed while locked is the normal case: no alert.
            {"eval_time": "2m", "alertname": "TriserveGpuDegraded", "exp_alerts": []},
        ],
    },
    # GPU 0's guard gives up at minute 3 and stays given up: the alert waits its 10 minutes.
    {
        "interval": "1m",
        "input_series": [
            {"series": f"triserve_slo_bound_unheld{{{GPU}}}", "values": "0 0 0 1x20"},
            {"series": f"triserve_slo_bound_unheld{{{GPU_POD_B}}}", "values": "0 0 0 1x20"},
        ],
        "alert_rule_test": [
            {"eval_time": "10m", "alertname": "TriserveLatencyBoundUnheld", "exp_alerts": []},
            {
                "eval_time": "15m",
                "alertname": "TriserveLatencyBoundUnheld",
                "exp_alerts": [
                    {
                        "exp_labels": {
                            "severity": "warning",
                            "node": "gpu-1",
                            "gpu": "0",
                            "UUID": "GPU-a",
                        },
                        "exp_annotations": {
                            "summary": "triserve cannot hold the latency bound on gpu-1 GPU 0",
                            "description": "For 10 minutes clock control could not keep the "
                            "policy's latency bound or SLO targets on GPU 0 of gpu-1: it runs at "
                            "the PMU default and saves nothing there. See the LatencyBoundHeld "
                            "condition (kubectl describe enpol) and loosen the bound or the "
                            "targets.",
                        },
                    }
                ],
            },
        ],
    },
    # Policy "fleet" has a 1,000 W budget. Its two GPUs draw 450 + 450 W (GPU 0's series
    # repeats for a second pod: it counts once), then 450 + 650 W from minute 5.
    {
        "interval": "1m",
        "input_series": [
            {"series": f'triserve_gpu_power_watts{{{GPU}, policy="fleet"}}', "values": "450x12"},
            {
                "series": f'triserve_gpu_power_watts{{{GPU_POD_B}, policy="fleet"}}',
                "values": "450x12",
            },
            {
                "series": 'triserve_gpu_power_watts{node="gpu-2", gpu="0", UUID="GPU-b", pod="",'
                ' namespace="", container="", stage="", policy="fleet"}',
                "values": "450 450 450 450 450 650 650 650 650 650 650 650",
            },
            {
                "series": 'triserve_policy_power_budget_watts{node="gpu-1", policy="fleet"}',
                "values": "1000x12",
            },
            {
                "series": 'triserve_policy_power_budget_watts{node="gpu-2", policy="fleet"}',
                "values": "1000x12",
            },
        ],
        "alert_rule_test": [
            {"eval_time": "4m", "alertname": "TriservePowerOverBudget", "exp_alerts": []},
            {
                "eval_time": "8m",
                "alertname": "TriservePowerOverBudget",
                "exp_alerts": [
                    {
                        "exp_labels": {"severity": "critical", "policy": "fleet"},
                        "exp_annotations": {
                            "summary": "EnergyPolicy fleet draws more than its power budget",
                            "description": "The GPUs under EnergyPolicy fleet draw 1.1kW, "
                            "above spec.powerBudget.watts. See the BudgetLimited condition in "
                            "kubectl describe enpol fleet.",
                        },
                    }
                ],
            },
        ],
    },
]


def test_alerts_fire_on_the_situations_they_describe(rules_file: Path) -> None:
    tests_file = rules_file.with_name("triserve.rules.test.yaml")
    tests_file.write_text(
        yaml.safe_dump(
            {"rule_files": [rules_file.name], "evaluation_interval": "1m", "tests": ALERT_CASES},
            sort_keys=False,
        )
    )
    proc = subprocess.run(
        [tool("promtool"), "test", "rules", tests_file.name],
        cwd=tests_file.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- the dashboard -----------------------------------------------------------------------


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def _panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel, rows included."""
    queries = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                queries.append((inner["title"], target["expr"]))
    return queries


def test_dashboard_is_templated_on_datasource_node_policy_and_gpu() -> None:
    dashboard = _dashboard()
    variables = {var["name"]: var for var in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in DASHBOARD_VARIABLES:
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"]["uid"] == "${datasource}"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    exprs = " ".join(expr for _, expr in _panel_queries(dashboard))
    for name in DASHBOARD_VARIABLES:
        assert f"${name}" in exprs, f"no panel filters on ${name}"


def test_dashboard_uses_only_metrics_from_the_architecture_contract() -> None:
    contract = (REPO / "docs" / "architecture.md").read_text()
    documented = set(re.findall(r"`(triserve_[a-z_]+)`", contract))
    exprs = [expr for _, expr in _panel_queries(_dashboard())]
    variables = [var.get("definition", "") for var in _dashboard()["templating"]["list"]]
    used = set(re.findall(r"\b(triserve_[a-z_]+)", " ".join(exprs + variables)))
    # Histograms are queried through their _bucket series.
    used = {re.sub(r"_bucket$", "", name) for name in used}
    assert used <= documented, f"not in docs/architecture.md: {sorted(used - documented)}"


def _expand(expr: str) -> str:
    """A dashboard query as Grafana sends it with every variable set to All."""
    for macro, value in GRAFANA_MACROS.items():
        expr = expr.replace(macro, value)
    for name in DASHBOARD_VARIABLES:
        expr = expr.replace(f"${name}", ".*")
    assert "$" not in expr, f"unexpanded variable in {expr}"
    return expr


# --- a real Prometheus scraping the real agent ----------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get(url: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, b""


def _wait_for(
    what: str, check: Any, proc: subprocess.Popen[bytes], log: Path, timeout_s: float
) -> None:
    """Poll `check()` until true; fail with the process's log if it exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if check():
            return
        time.sleep(0.25)
    out = log.read_text(errors="replace")[-4000:]
    state = f"exited with {proc.returncode}" if proc.returncode is not None else "not ready"
    pytest.fail(f"{what}: {state} after {timeout_s:.0f} s; command: {proc.args!r}\n{out}")


@contextlib.contextmanager
def _process(argv: Sequence[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run `argv` from the repository root, output to `log`; terminate it afterwards."""
    with log.open("wb") as sink:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        processes.stop(proc, grace_s=15)


class PrometheusApi:
    """The few Prometheus HTTP API calls the checks use."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def call(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        status, body = _get(f"{self.base_url}{path}?{query}", timeout_s=10)
        payload = json.loads(body) if body else {}
        assert status == 200 and payload.get("status") == "success", (
            f"{path} {params}: HTTP {status} {payload.get('error', body[:300])}"
        )
        return payload["data"]

    def query(self, expr: str) -> list[Any]:
        result: list[Any] = self.call("/api/v1/query", query=expr)["result"]
        return result

    def query_range(self, expr: str, seconds: float) -> list[Any]:
        now = time.time()
        data = self.call(
            "/api/v1/query_range",
            query=expr,
            start=f"{now - seconds:.3f}",
            end=f"{now:.3f}",
            step="1",
        )
        result: list[Any] = data["result"]
        return result


@pytest.fixture(scope="module")
def prometheus(
    rules_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrometheusApi]:
    """A real Prometheus on loopback that has scraped the standalone agent for a while."""
    prometheus_bin = tool("prometheus")
    tmp = tmp_path_factory.mktemp("prometheus")
    agent_port = _free_port()
    agent_argv = [part.format(port=agent_port, tmp=tmp) for part in AGENT_COMMAND]
    web_port = _free_port()
    config = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": [str(rules_file)],
        "scrape_configs": [
            {
                "job_name": AGENT_JOB,
                "honor_labels": True,  # as the chart's ServiceMonitor
                "static_configs": [{"targets": [f"127.0.0.1:{agent_port}"]}],
            }
        ],
    }
    config_file = tmp / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    prometheus_argv = [
        prometheus_bin,
        f"--config.file={config_file}",
        f"--storage.tsdb.path={tmp / 'data'}",
        f"--web.listen-address=127.0.0.1:{web_port}",
        "--log.level=warn",
    ]
    with (
        _process(agent_argv, tmp / "agent.log") as agent,
        _process(prometheus_argv, tmp / "prometheus.log") as server,
    ):
        metrics_url = f"http://127.0.0.1:{agent_port}/metrics"
        agent_log, server_log = tmp / "agent.log", tmp / "prometheus.log"
        _wait_for("agent /metrics", lambda: _get(metrics_url)[0] == 200, agent, agent_log, 60)
        base_url = f"http://127.0.0.1:{web_port}"
        ready_url = f"{base_url}/-/ready"
        _wait_for("prometheus", lambda: _get(ready_url)[0] == 200, server, server_log, 30)
        api = PrometheusApi(base_url)

        def scraped_enough() -> bool:
            # Enough samples that rate() over GRAFANA_MACROS' windows has data, and a
            # finished report window, which the tokens-per-joule panels need.
            return all(
                api.query(expr)
                for expr in (
                    f'count_over_time(up{{job="{AGENT_JOB}"}}[1m]) >= 8',
                    f'up{{job="{AGENT_JOB}"}} == 1',
                    "max(triserve_gpu_tokens_per_joule) > 0",
                    "max(triserve_gpu_baseline_tokens_per_joule) > 0",
                )
            )

        _wait_for("a scraped report window", scraped_enough, server, server_log, 45)
        yield api


def test_every_dashboard_panel_query_returns_data(prometheus: PrometheusApi) -> None:
    empty = []
    for title, expr in _panel_queries(_dashboard()):
        if not prometheus.query_range(_expand(expr), seconds=10):
            empty.append(f"{title}: {expr}")
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)


def _panel_query(title: str, legend: str = "") -> str:
    for panel in _dashboard()["panels"]:
        for target in panel.get("targets", []):
            if panel["title"] == title and target.get("legendFormat", "") == legend:
                return _expand(target["expr"])
    raise AssertionError(f"no panel {title!r} with legend {legend!r}")


def test_a_gpu_shared_by_several_stage_pods_counts_once(prometheus: PrometheusApi) -> None:
    # The reference simulation puts talker and code2wav on one GPU: 3 pods, 2 GPUs.
    series = prometheus.query("count(triserve_gpu_managed)")
    gpus = prometheus.query("count(count by (node, gpu) (triserve_gpu_managed))")
    assert float(series[0]["value"][1]) > float(gpus[0]["value"][1])
    (managed,) = prometheus.query(_panel_query("Managed GPUs", "managed"))
    assert float(managed["value"][1]) == float(gpus[0]["value"][1])
    (power,) = prometheus.query(_panel_query("GPU power now"))
    per_gpu = prometheus.query("sum(avg by (node, gpu) (triserve_gpu_power_watts))")
    assert float(power["value"][1]) == pytest.approx(float(per_gpu[0]["value"][1]))


def test_every_dashboard_variable_has_values(prometheus: PrometheusApi) -> None:
    for var in _dashboard()["templating"]["list"]:
        if var["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", var["definition"])
        assert match, f"${var['name']}: expected label_values(selector, label)"
        selector, label = _expand(match.group(1)), match.group(2)
        values = prometheus.call(f"/api/v1/label/{label}/values", **{"match[]": selector})
        assert values, f"${var['name']} would have no values ({var['definition']})"


def test_every_alert_expression_evaluates_and_a_healthy_agent_raises_none(
    prometheus: PrometheusApi, rule_groups: dict[str, Any]
) -> None:
    for name, rule in _alerts(rule_groups).items():
        prometheus.query(rule["expr"])  # raises on a PromQL error
        if name in {"TriserveAgentDown", "TriserveGpuClocksLockedUnmanaged"}:
            assert prometheus.query(rule["expr"]) == [], f"{name} matches a healthy agent"

    # The server loaded the same file and evaluated every rule without error.
    def evaluated_rules() -> list[dict[str, Any]] | None:
        groups = prometheus.call("/api/v1/rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        done = all(rule.get("lastEvaluation", "").startswith("20") for rule in rules)
        return rules if done else None

    rules = eventually_sync(evaluated_rules, "Prometheus to evaluate every rule", 10, poll_s=0.5)
    assert {rule["name"] for rule in rules} == set(_alerts(rule_groups))
    bad = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert not bad, f"rules failing in Prometheus: {bad}"
