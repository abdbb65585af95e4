"""`triserve operator` turns its flags into settings and starts `main.operate`, as tests do."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import kopf
import pytest

from triserve.operator import cli
from triserve.operator import main as operator_main
from triserve.operator.cli import DEFAULT_LIVENESS, parser, settings_from_args
from triserve.operator.settings import OperatorSettings


def test_flags_become_operator_settings() -> None:
    args = parser().parse_args(["--status-interval", "2.5", "--release-timeout", "7"])
    assert settings_from_args(args) == OperatorSettings(status_interval_s=2.5, release_timeout_s=7)
    assert settings_from_args(parser().parse_args([])) == OperatorSettings()


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """Each start of `main.operate` by the CLI, recorded instead of run (credentials faked)."""
    calls: list[dict[str, Any]] = []

    async def operate(registry: kopf.OperatorRegistry, **kwargs: Any) -> None:
        calls.append({"registry": registry, **kwargs})

    monkeypatch.setattr(cli, "_credentials_problem", lambda: None)
    monkeypatch.setattr(operator_main, "operate", operate)
    root = logging.getLogger()
    level, handlers = root.level, root.handlers[:]
    yield calls
    root.setLevel(level)
    root.handlers[:] = handlers


def test_cli_starts_the_shared_operator_with_its_liveness_endpoint(
    started: list[dict[str, Any]],
) -> None:
    assert cli.main(["--standalone"]) == 0
    assert cli.main(["--liveness", ""]) == 0
    first, second = started
    assert first["liveness_endpoint"] == DEFAULT_LIVENESS
    assert second["liveness_endpoint"] is None
    # The registry holds triserve's handlers (the start-up settings among them).
    handler_ids = {h.id for h in first["registry"]._activities.get_all_handlers()}
    assert {"configure", "login", "close"} <= handler_ids


def test_verbose_is_kopf_debug_logging(started: list[dict[str, Any]]) -> None:
    assert cli.main(["--verbose"]) == 0
    assert logging.getLogger().level == logging.DEBUG
    assert cli.main(["--log-level", "ERROR"]) == 0
    assert logging.getLogger().level == logging.WARNING


async def test_operate_runs_kopf_cluster_wide_and_standalone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, Any] = {}

    async def fake_operator(**kwargs: Any) -> None:
        seen.update(kwargs)

    monkeypatch.setattr(kopf, "operator", fake_operator)
    registry = operator_main.registered(OperatorSettings()).registry
    stop = asyncio.Event()
    await operator_main.operate(registry, liveness_endpoint="http://x/healthz", stop_flag=stop)
    assert seen == {
        "registry": registry,
        "clusterwide": True,
        "standalone": True,
        "liveness_endpoint": "http://x/healthz",
        "stop_flag": stop,
    }


def test_no_cluster_credentials_end_with_guidance_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
        monkeypatch.delenv(var, raising=False)
    assert cli.main(["--standalone"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the Kubernetes API" in err and "KUBECONFIG" in err
