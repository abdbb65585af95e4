"""`triserve explain-metrics`: the JSON a user scripts against, and the exits they rely on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from triserve import cli

from ...support.httpserver import http_server

CORPUS = Path(__file__).parents[2] / "fixtures" / "exporters"


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, object]]:
    rc = cli.main(["explain-metrics", *argv, "--json"])
    return rc, json.loads(capsys.readouterr().out)


def test_json_has_the_documented_shape_with_unknowns_as_null(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rc, out = _json(capsys, str(CORPUS / "sglang-dp-attention-aibrix.prom"))
    assert rc == 0
    assert set(out) == {"engine", "units", "gpus", "ignored_families", "errors"}
    assert out["engine"] == "sglang" and out["errors"] == [] and out["gpus"] == []
    units = out["units"]
    assert isinstance(units, list)
    assert [(u["id"], u["phase"], u["running"], u["waiting"]) for u in units] == [
        ("dp_rank=1", "idle", None, 0),
        ("dp_rank=3", "idle", None, 0),
    ]
    assert out["ignored_families"] == ["sglang:gen_throughput"]


def test_two_bodies_give_token_rates_per_unit(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    first = (CORPUS / "pytrtllm-pr5560.prom").read_text()
    later = first.replace("201121.0", "203121.0").replace("81896.0", "82896.0")
    (tmp_path / "b.prom").write_text(later)
    rc, out = _json(
        capsys, str(CORPUS / "pytrtllm-pr5560.prom"), "--then", str(tmp_path / "b.prom"),
        "--interval", "2",
    )  # fmt: skip
    assert rc == 0
    unit = out["units"][0]  # type: ignore[index]
    assert unit["prompt_tokens_per_s"] == 1000.0 and unit["generation_tokens_per_s"] == 500.0
    assert unit["phase"] == "prefill"  # 2000 prompt vs 1000 generated tokens in the window


def test_a_dcgm_body_lists_gpus_with_uuid_pods_and_activity(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rc, out = _json(capsys, str(CORPUS / "dcgm-v100-no-hostname.prom"))
    assert rc == 0 and out["engine"] is None
    gpus = out["gpus"]
    assert isinstance(gpus, list) and gpus
    gpu = next(g for g in gpus if g["uuid"] == "GPU-45984919-9e67-f2ec-9b84-a96fefa525ff")
    assert gpu["dram_active"] == 0.0 and gpu["pods"] == []


def test_a_url_is_read_like_a_file(capsys: pytest.CaptureFixture[str]) -> None:
    body = (CORPUS / "tgi-format-ibm-vllm-tgis.prom").read_text()
    with http_server(lambda path: body if path == "/metrics" else None) as port:
        rc, out = _json(capsys, f"http://127.0.0.1:{port}/metrics")
    assert rc == 0 and out["engine"] == "tgi"


@pytest.mark.parametrize("source", ["/no/such/file.prom", "http://127.0.0.1:9/metrics"])
def test_an_unreadable_file_or_url_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], source: str
) -> None:
    assert cli.main(["explain-metrics", source]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and source in err


def test_a_body_of_no_known_engine_exits_1_and_says_why(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "x.prom").write_text("node_cpu_seconds_total 3\n")
    rc, out = _json(capsys, str(tmp_path / "x.prom"))
    assert rc == 1 and out["errors"] and out["ignored_families"] == ["node_cpu_seconds_total"]
