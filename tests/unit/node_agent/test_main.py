"""`triserve agent` refuses bad starts with one clear line and exit code 2, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from triserve import cli

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(["agent", *argv])
    return code, capsys.readouterr().err


def test_cluster_mode_without_node_name_says_how_to_set_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("NODE_NAME", raising=False)
    code, err = _run(["--sim", "reference"], capsys)
    assert code == 2
    assert "NODE_NAME is not set" in err and "--node-name" in err


def test_a_node_without_nvml_gets_guidance_instead_of_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("pynvml")
    from triserve.gpu import nvml
    from triserve.gpu.backend import GpuUnavailableError

    def _no_driver(self: object) -> None:
        raise GpuUnavailableError("nvmlInit: NVML Shared Library Not Found")

    monkeypatch.setattr(nvml.NvmlBackend, "__init__", _no_driver)
    code, err = _run(
        ["--standalone", "--policy", str(EXAMPLES / "energypolicy-minimal.yaml")], capsys
    )
    assert code == 2
    assert "cannot manage this node's GPUs" in err and "--sim reference" in err


def test_invalid_policy_file_names_the_file_and_the_field(
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = EXAMPLES / "invalid" / "clock-limits-inverted.yaml"
    code, err = _run(["--standalone", "--policy", str(bad), "--sim", "reference"], capsys)
    assert code == 2
    assert str(bad) in err and "spec.clockLimits.minMHz" in err


def test_unknown_scenario_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    policy = EXAMPLES / "energypolicy-minimal.yaml"
    code, err = _run(["--standalone", "--policy", str(policy), "--sim", "nosuch"], capsys)
    assert code == 2
    assert "'nosuch' not found" in err


def test_dcgm_discovery_searches_only_the_namespace_the_flag_names() -> None:
    from triserve.node_agent import main as agent_main
    from triserve.simnode import open_node

    policy = str(EXAMPLES / "energypolicy-minimal.yaml")
    base = ["--standalone", "--policy", policy, "--sim", "reference", "--dcgm-discover", "app=x"]
    parser = agent_main.build_parser()

    def options(*extra: str) -> str:
        args = parser.parse_args([*base, *extra])
        opts = agent_main.options_from_args(args, lambda name, seed: open_node(name, seed=seed))
        return opts.dcgm_namespace

    assert options() == "gpu-operator"  # the GPU Operator's namespace by default
    assert options("--dcgm-namespace", "monitoring") == "monitoring"
