"""The Helm chart renders, lints and validates, and keeps the promises its README makes.

Every rendered object is validated strictly (unknown fields are errors) with
kubernetes-validate for Kubernetes KUBERNETES_VERSION. kubernetes-validate has no schemas for
CRD kinds, so ServiceMonitor, PodMonitor and PrometheusRule are validated against the minimal
hand-written schema in schemas/monitoring.coreos.com_v1.json instead; those three kinds are the
only ones not checked by kubernetes-validate (MONITORING_KINDS).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from .support import (
    CHART,
    CLUSTER_API_VERSIONS,
    DASHBOARD,
    REPO,
    VARIANTS,
    by_kind,
    leaf_paths,
    one,
    render,
    run,
    tool,
)

# The newest Kubernetes the installed kubernetes-validate knows, and the oldest the chart allows.
KUBERNETES_VERSION = "1.37.0"
OLDEST_KUBERNETES_VERSION = "1.29.0"
MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
# Served from Kubernetes 1.30 on: the chart renders them only where the cluster serves them.
NEWER_KINDS = {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
MONITORING_SCHEMA = json.loads(
    (Path(__file__).parent / "schemas" / "monitoring.coreos.com_v1.json").read_text()
)
# The CRD files `triserve crds` writes into the repository's crds/.
EXPECTED_CRDS = {"triserve.io_energypolicies.yaml", "triserve.io_nodeenergyreports.yaml"}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def rendered(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """(variant name, rendered objects) for each value set."""
    name = request.param
    return name, render(tmp_path_factory.mktemp(name), VARIANTS[name])


def _validate(obj: dict[str, Any], version: str) -> None:
    if obj["kind"] in MONITORING_KINDS:
        schema = {**MONITORING_SCHEMA, "$ref": f"#/kinds/{obj['kind']}"}
        jsonschema.Draft202012Validator(schema).validate(obj)
    else:
        kubernetes_validate.validate(obj, version, strict=True)


def test_helm_lint_passes_in_strict_mode_for_every_variant(tmp_path: Path) -> None:
    helm = tool("helm")
    for name, values in VARIANTS.items():
        values_file = tmp_path / f"{name}.json"
        values_file.write_text(json.dumps(values))
        run([helm, "lint", "--strict", str(CHART), "--values", str(values_file)])


def test_packaged_chart_renders_what_the_chart_directory_renders(tmp_path: Path) -> None:
    helm = tool("helm")
    run([helm, "package", str(CHART), "--destination", str(tmp_path)])
    (package,) = tmp_path.glob("triserve-0.1.0.tgz")
    template = [helm, "template", "triserve", "--namespace", "triserve-system", "--include-crds"]
    template += [f"--api-versions={api}" for api in CLUSTER_API_VERSIONS]
    from_dir = run([*template, str(CHART)]).stdout
    from_package = run([*template, str(package)]).stdout
    assert from_package == from_dir, "the package misses files (check .helmignore)"


@pytest.mark.parametrize("version", [KUBERNETES_VERSION, OLDEST_KUBERNETES_VERSION])
def test_every_rendered_object_validates_strictly(rendered: Any, version: str) -> None:
    variant, objects = rendered
    assert objects, f"{variant}: helm template rendered nothing"
    for obj in objects:
        if version == OLDEST_KUBERNETES_VERSION and obj["kind"] in NEWER_KINDS:
            continue
        try:
            _validate(obj, version)
        except jsonschema.ValidationError as exc:
            name = f"{obj['kind']}/{obj['metadata']['name']}"
            pytest.fail(f"{variant}: {name} is invalid for Kubernetes {version}: {exc.message}")


def test_hints_value_mounts_the_socket_directory_and_switches_the_hint_server_on(
    tmp_path: Path,
) -> None:
    (tmp_path / "off").mkdir()
    (tmp_path / "on").mkdir()
    off = one(render(tmp_path / "off", {}), "DaemonSet", "agent")["spec"]["template"]["spec"]
    (agent,) = off["containers"]
    assert not any(a.startswith("--hints-socket") for a in agent["args"])
    assert "hints" not in {v["name"] for v in off["volumes"]}
    assert "hostPID" not in off
    on = one(render(tmp_path / "on", VARIANTS["hints"]), "DaemonSet", "agent")["spec"]["template"]
    (agent,) = on["spec"]["containers"]
    assert "--hints-socket=/run/triserve-hints/hints.sock" in agent["args"]
    # Without the host's PIDs the hint server cannot tell pods apart and refuses every sender.
    assert on["spec"]["hostPID"] is True
    (mount,) = [m for m in agent["volumeMounts"] if m["name"] == "hints"]
    assert mount["mountPath"] == "/run/triserve-hints"
    (volume,) = [v for v in on["spec"]["volumes"] if v["name"] == "hints"]
    assert volume["hostPath"] == {"path": "/run/triserve-hints", "type": "DirectoryOrCreate"}


def test_operator_runs_under_restricted_pod_security(tmp_path: Path) -> None:
    deployment = one(render(tmp_path, {}), "Deployment", "operator")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert spec["replicas"] == 1
    assert spec["strategy"]["type"] == "Recreate", "two kopf operators must never overlap"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["command"] == ["triserve"]
    assert container["args"] == [
        "operator",
        "--standalone",
        "--liveness=http://0.0.0.0:8080/healthz",
    ]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_monitoring_objects_need_their_crds_in_the_cluster(tmp_path: Path) -> None:
    objects = render(tmp_path, VARIANTS["podmonitor-debug"], monitoring_crds=False)
    assert not {obj["kind"] for obj in objects} & MONITORING_KINDS


def test_values_without_a_key_of_the_schema_are_refused(tmp_path: Path) -> None:
    values = tmp_path / "values.json"
    values.write_text(json.dumps({"operator": {"peering": {"enabled": True}}}))
    result = subprocess.run(
        [tool("helm"), "template", "triserve", str(CHART), "--values", str(values)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode != 0 and "peering" in result.stderr


def test_agent_daemonset_runs_on_every_gpu_node_with_least_privilege(tmp_path: Path) -> None:
    daemonset = one(render(tmp_path, {}), "DaemonSet", "agent")
    pod = daemonset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    # Every GPU node, labelled for a policy or not: a node that left its policy still gets an
    # agent, which restores whatever locks its state file lists.
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert "affinity" not in pod
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert pod["priorityClassName"] == "triserve-agent"
    assert "runtimeClassName" not in pod
    env = {item["name"]: item for item in container["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    security = container["securityContext"]
    assert security["privileged"] is False
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["SYS_ADMIN"]}
    assert security["runAsUser"] == 0
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["pod-resources"]["hostPath"] == {
        "path": "/var/lib/kubelet/pod-resources",
        "type": "Directory",
    }
    assert volumes["state"]["hostPath"] == {
        "path": "/var/lib/triserve",
        "type": "DirectoryOrCreate",
    }
    mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
    assert mounts["pod-resources"]["readOnly"] is True
    assert container["ports"] == [
        {"name": "metrics", "containerPort": 9402, "protocol": "TCP"},
        {"name": "health", "containerPort": 9403, "protocol": "TCP"},
    ]
    # The probes ask the health listener, which slow clients of :9402 cannot fill.
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert container["command"] == ["triserve"]
    assert container["args"] == [
        "agent",
        "--metrics-port=9402",
        "--health-port=9403",
        "--state-file=/var/lib/triserve/state.json",
        "--dcgm-discover=app=nvidia-dcgm-exporter",
        "--dcgm-namespace=gpu-operator",
        "--dcgm-port=9400",
        "--dcgm-collect-interval=30",
        "--log-level=INFO",
        "--min-sm-clock-fraction=0.2",
        "--min-power-limit-fraction=0.5",
        "--shutdown-retry=20",
    ]
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"


def test_agent_runs_at_the_charts_own_priority_above_workloads_below_system(
    tmp_path: Path,
) -> None:
    objects = render(tmp_path, {})
    (priority,) = by_kind(objects, "PriorityClass")
    pod = one(objects, "DaemonSet", "agent")["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == priority["metadata"]["name"] == "triserve-agent"
    # The highest value a non-system class may have; system-cluster-critical is 2000000000.
    assert priority["value"] == 1_000_000_000
    assert priority["globalDefault"] is False
    assert priority["preemptionPolicy"] == "PreemptLowerPriority"


def test_agent_priority_class_and_rollout_pace_are_configurable(tmp_path: Path) -> None:
    values = {
        "agent": {
            "priorityClassName": "system-node-critical",
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "10%"}},
        }
    }
    objects = render(tmp_path, values)
    daemonset = one(objects, "DaemonSet", "agent")
    assert daemonset["spec"]["template"]["spec"]["priorityClassName"] == "system-node-critical"
    assert daemonset["spec"]["updateStrategy"]["rollingUpdate"] == {"maxUnavailable": "10%"}
    assert not by_kind(objects, "PriorityClass"), "a named class replaces the chart's own"
    off = {"agent": {"priorityClass": {"create": False, "preemptionPolicy": "Never"}}}
    objects = render(tmp_path, off)
    assert "priorityClassName" not in one(objects, "DaemonSet", "agent")["spec"]["template"]["spec"]
    assert not by_kind(objects, "PriorityClass")
    never = render(tmp_path, {"agent": {"priorityClass": {"preemptionPolicy": "Never"}}})
    assert by_kind(never, "PriorityClass")[0]["preemptionPolicy"] == "Never"


def test_dcgm_source_is_node_local_unless_a_url_is_given(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Issue 14, defect 1: the default must not be gpu-operator's cluster-wide Service."""
    default = render(tmp_path_factory.mktemp("d"), {})
    args = one(default, "DaemonSet", "agent")["spec"]["template"]["spec"]
    assert not [a for a in args["containers"][0]["args"] if ".svc" in a]
    custom = render(tmp_path_factory.mktemp("h"), VARIANTS["custom-scheduling"])
    host = one(custom, "DaemonSet", "agent")
    assert "--dcgm-host-port=9400" in host["spec"]["template"]["spec"]["containers"][0]["args"]


def test_network_policy_is_on_by_default_and_admits_only_the_listed_peers(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    policy = one(render(tmp_path_factory.mktemp("d"), {}), "NetworkPolicy", "agent")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    # Only the metrics port, only from the monitoring namespace: the health port is reached
    # by the kubelet from the node, which NetworkPolicy always admits.
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 9402}]
    assert rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    opted_out = {"agent": {"networkPolicy": {"enabled": False}}}
    assert by_kind(render(tmp_path_factory.mktemp("o"), opted_out), "NetworkPolicy") == []


def test_privileged_agent_is_opt_in(tmp_path: Path) -> None:
    daemonset = one(render(tmp_path, VARIANTS["privileged-agent"]), "DaemonSet", "agent")
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["containers"][0]["securityContext"]["privileged"] is True


def test_custom_scheduling_adds_to_the_gpu_node_selection(tmp_path: Path) -> None:
    objects = render(tmp_path, VARIANTS["custom-scheduling"])
    pod = one(objects, "DaemonSet", "agent")["spec"]["template"]["spec"]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    keys = [expr["key"] for expr in terms["nodeSelectorTerms"][0]["matchExpressions"]]
    assert keys == ["nvidia.com/gpu.product"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert len(pod["tolerations"]) == 2
    args = pod["containers"][0]["args"]
    assert "--dcgm-host-port=9400" in args


def test_rbac_uses_named_verbs_and_resources_only(rendered: Any) -> None:
    variant, objects = rendered
    for role in by_kind(objects, "ClusterRole") + by_kind(objects, "Role"):
        for rule in role["rules"]:
            for field in ("verbs", "resources", "apiGroups"):
                assert "*" not in rule.get(field, []), f"{variant}: {role['metadata']['name']}"


def _grants(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_rbac_grants_exactly_what_the_operator_and_agents_use(tmp_path: Path) -> None:
    # Each of these is exercised against a real API server in tests/apiserver.
    objects = render(tmp_path, {})
    assert _grants(one(objects, "ClusterRole", "operator")) == {
        ("triserve.io", "energypolicies", "list"),
        ("triserve.io", "energypolicies", "watch"),
        ("triserve.io", "energypolicies", "patch"),
        ("triserve.io", "energypolicies/status", "patch"),
        ("triserve.io", "nodeenergyreports", "list"),
        ("triserve.io", "nodeenergyreports", "watch"),
        ("", "nodes", "list"),
        ("", "nodes", "watch"),
        ("", "nodes", "patch"),
        ("", "events", "create"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
    }
    assert _grants(one(objects, "ClusterRole", "agent")) == {
        ("", "nodes", "get"),
        ("", "nodes", "list"),
        ("", "nodes", "watch"),
        ("", "pods", "list"),
        ("", "pods", "watch"),
        ("triserve.io", "energypolicies", "list"),
        ("triserve.io", "energypolicies", "watch"),
        ("triserve.io", "nodeenergyreports", "get"),
        ("triserve.io", "nodeenergyreports", "create"),
        ("triserve.io", "nodeenergyreports/status", "patch"),
    }
    assert not by_kind(objects, "Role"), "no namespaced roles: the operator elects no leader"


def test_monitoring_objects_follow_their_toggles(rendered: Any) -> None:
    variant, objects = rendered
    kinds = {obj["kind"] for obj in objects}
    values = VARIANTS[variant].get("monitoring", {})

    def enabled(key: str, default: bool) -> bool:
        return bool(values.get(key, {}).get("enabled", default))

    assert ("ServiceMonitor" in kinds) == enabled("serviceMonitor", True)
    assert ("PodMonitor" in kinds) == enabled("podMonitor", False)
    assert ("PrometheusRule" in kinds) == enabled("prometheusRule", True)
    assert ("ConfigMap" in kinds) == enabled("dashboard", True)


def test_service_monitor_scrapes_the_headless_agent_service(tmp_path: Path) -> None:
    values = {"monitoring": {"serviceMonitor": {"additionalLabels": {"release": "kps"}}}}
    objects = render(tmp_path, values)
    monitor = one(objects, "ServiceMonitor")
    service = one(objects, "Service", "agent")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["ports"][0]["port"] == 9402
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert monitor["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]


def test_chart_crds_are_byte_copies_of_the_generated_crds() -> None:
    generated = {path.name: path.read_bytes() for path in (REPO / "crds").glob("*.yaml")}
    copied = {path.name: path.read_bytes() for path in (CHART / "crds").glob("*.yaml")}
    assert set(generated) >= EXPECTED_CRDS, "run `triserve crds` to generate crds/"
    assert copied == generated, (
        "charts/triserve/crds/ differs from crds/: run "
        "`rm -f charts/triserve/crds/*.yaml && cp crds/*.yaml charts/triserve/crds/`"
    )


def test_dashboard_configmap_is_the_repository_dashboard(tmp_path: Path) -> None:
    configmap = one(render(tmp_path, {}), "ConfigMap", "monitoring")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    copy = CHART / "files" / "dashboards" / "triserve.json"
    assert copy.read_bytes() == DASHBOARD.read_bytes(), (
        "the chart's dashboard differs from dashboards/triserve.json: run "
        "`cp dashboards/triserve.json charts/triserve/files/dashboards/triserve.json`"
    )
    assert json.loads(configmap["data"]["triserve.json"]) == json.loads(DASHBOARD.read_text())


def test_readme_documents_every_value() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text()
    missing = [path for path in leaf_paths(values) if f"`{path}`" not in readme]
    assert not missing, f"charts/triserve/README.md does not document: {missing}"


def _schema_properties(schema: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    found = []
    for key, child in schema.get("properties", {}).items():
        path = f"{prefix}.{key}" if prefix else key
        found.append((path, child))
        found += _schema_properties(child, path)
    return found


def test_values_schema_is_strict_and_describes_every_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.Draft7Validator(schema).validate(values)
    properties = _schema_properties(schema)
    undescribed = [path for path, child in properties if not child.get("description")]
    assert not undescribed, f"values.schema.json properties without description: {undescribed}"
    loose = [
        path
        for path, child in [("", schema), *properties]
        if child.get("type") == "object"
        and "properties" in child
        and child.get("additionalProperties") is not False
    ]
    assert not loose, f"objects in values.schema.json that accept unknown keys: {loose}"
    schema_by_path = dict(properties)

    # Entries of free-form maps (resources, labels) are typed by the map's additionalProperties;
    # their keys may hold dots themselves (nvidia.com/gpu.present), so try every ancestor.
    def free_form(path: str) -> bool:
        parts = path.split(".")
        return any(
            isinstance(
                schema_by_path.get(".".join(parts[:i]), {}).get("additionalProperties"), dict
            )
            for i in range(1, len(parts))
        )

    untyped = [
        path for path in leaf_paths(values) if path not in schema_by_path and not free_form(path)
    ]
    assert not untyped, f"values.yaml keys missing from values.schema.json: {untyped}"


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"agent": {"privilegd": True}}, "privilegd"),
        ({"operator": {"replicaCount": 2}}, "replicaCount"),
        ({"monitoring": {"serviceMonitor": {"interval": "fast"}}}, "interval"),
    ],
)
def test_values_schema_rejects_mistakes(tmp_path: Path, values: Any, complaint: str) -> None:
    import subprocess

    values_file = tmp_path / "values.json"
    values_file.write_text(json.dumps(values))
    argv = [tool("helm"), "template", "t", str(CHART), "--values", str(values_file)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0
    assert complaint in proc.stderr


def test_a_render_without_admission_policies_fails_instead_of_dropping_the_report_guard(
    tmp_path: Path,
) -> None:
    # Plain `helm template` (GitOps) announces no ValidatingAdmissionPolicy: the guard that
    # keeps each agent to its own node's report must not vanish without a word.
    argv = [tool("helm"), "template", "t", str(CHART), "--namespace", "triserve-system"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0
    assert "Admission=Require" in proc.stderr and "--api-versions" in proc.stderr
    (tmp_path / "on").mkdir()
    (tmp_path / "off").mkdir()
    guarded = render(tmp_path / "on", {})
    policies = {o["metadata"]["name"] for o in guarded if o["kind"] == "ValidatingAdmissionPolicy"}
    assert policies == {"triserve-agent-own-report", "triserve-operator-node-label-only"}
    off_values = {"agent": {"reportAdmission": "Off"}, "operator": {"nodeAdmission": "Off"}}
    off = render(tmp_path / "off", off_values, cluster_apis=False)
    assert "ValidatingAdmissionPolicy" not in {o["kind"] for o in off}
