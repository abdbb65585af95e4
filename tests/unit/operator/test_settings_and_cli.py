"""Operator settings travel through the environment; the CLI builds the `kopf run` command."""

from __future__ import annotations

import pytest

from triserve.operator.cli import kopf_args, parser
from triserve.operator.settings import OperatorSettings


def test_settings_round_trip_through_the_environment() -> None:
    settings = OperatorSettings(status_interval_s=2.5, release_timeout_s=7, max_event_nodes=3)
    assert OperatorSettings.from_env(settings.to_env()) == settings
    assert OperatorSettings.from_env({}) == OperatorSettings()


def test_bad_environment_values_name_the_variable() -> None:
    with pytest.raises(ValueError, match="TRISERVE_OPERATOR_RELEASE_TIMEOUT_S"):
        OperatorSettings.from_env({"TRISERVE_OPERATOR_RELEASE_TIMEOUT_S": "soon"})


def test_cli_runs_the_main_module_cluster_wide() -> None:
    args = kopf_args(parser().parse_args([]))
    assert args[:4] == ["run", "-m", "triserve.operator.main", "--all-namespaces"]
    assert "--standalone" in args and "--liveness" in args
    quiet = kopf_args(parser().parse_args(["--liveness", ""]))
    assert "--standalone" in quiet and "--liveness" not in quiet


def test_no_cluster_credentials_end_with_guidance_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    from triserve.operator import cli

    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
        monkeypatch.delenv(var, raising=False)
    assert cli.main(["--standalone"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the Kubernetes API" in err and "KUBECONFIG" in err
