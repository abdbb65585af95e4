"""Every user error of `triserve demo|bench|agent|profile|operator` is one line and exit 2.

Each case is one the first-use review hit (a traceback, a hang, or a silent exit 0); the line
must name the flag or field and say what to do. Outputs are checked before any simulation.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from triserve import cli

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
MINIMAL = str(EXAMPLES / "energypolicy-minimal.yaml")


@pytest.fixture
def missing_trace(tmp_path: Path) -> Path:
    text = (EXAMPLES / "scenarios" / "trace.yaml").read_text()
    path = tmp_path / "trace.yaml"
    path.write_text(text.replace("trace-example.csv", "gone.csv"))
    return path


def _err(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = int(exc.code or 0)
    out = capsys.readouterr()
    assert code == 2, f"{argv}: exit {code}; {out.err}"
    lines = out.err.strip().splitlines()
    assert len(lines) == 1, f"{argv}: not one line:\n{out.err}"
    assert "Traceback" not in out.err
    return lines[0]


CASES: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "demo unknown scenario": (["demo", "--scenario", "nope"], ("--scenario", "'nope' not found")),
    "demo invalid policy": (
        ["demo", "--policy", str(EXAMPLES / "invalid" / "unknown-mode.yaml")],
        ("--policy", "spec.mode"),
    ),
    "demo speed 0": (["demo", "--speed", "0"], ("--speed", "above 0")),
    "demo speed -1": (["demo", "--speed", "-1"], ("--speed", "above 0")),
    "demo duration inside warm-up": (["demo", "--duration", "30"], ("--duration-s", "warm-up")),
    "demo negative duration": (["demo", "--duration", "-5"], ("--duration", "above 0")),
    "demo endless duration": (
        ["demo", "--duration-s", "1e308"],
        ("--duration-s", "one simulated day"),
    ),
    "demo log level": (["demo", "--log-level", "FOO"], ("--log-level", "DEBUG")),
    "bench json folder missing": (
        ["bench", "--json", "/nonexistent/dir/out.json"],
        ("--json", "does not exist"),
    ),
    "bench plots unwritable": (["bench", "--plots", "/proc/x"], ("--plots", "choose another")),
    "bench jobs 0": (["bench", "--jobs", "0"], ("--jobs", "1 or more")),
    "bench seeds 0": (["bench", "--seeds", "0"], ("--seeds", "1 or more")),
    "bench duration inside warm-up": (["bench", "--duration-s", "10"], ("--duration-s",)),
    "bench unknown strategy": (["bench", "--strategies", "nope"], ("--strategies", "choose")),
    "agent log level": (
        ["agent", "--standalone", "--policy", MINIMAL, "--sim", "reference", "--log-level", "FOO"],
        ("--log-level", "DEBUG"),
    ),
    "agent negative duration": (
        ["agent", "--standalone", "--policy", MINIMAL, "--sim", "reference", "--duration", "-5"],
        ("--duration", "above 0"),
    ),
    "profile unknown stage": (
        ["profile", "--sim", "reference", "--stage", "nosuch"],
        ("--stage", "thinker"),
    ),
    "profile output folder missing": (
        ["profile", "--sim", "reference", "--stage", "thinker", "--output", "/nonexistent/p.yaml"],
        ("--output", "does not exist"),
    ),
    "profile points": (
        ["profile", "--sim", "reference", "--stage", "thinker", "--points", "1"],
        ("--points", "2 or more"),
    ),
    "operator log level": (["operator", "--log-level", "loud"], ("--log-level",)),
    "bench absurd seed count": (["bench", "--seeds", "100000000000"], ("--seeds", "at most")),
    "crds unwritable out": (["crds", "--out", "/proc/x"], ("--out", "/proc/x", "writable")),
    "agent policy checked before NVML": (
        ["agent", "--standalone", "--policy", "/nonexistent/policy.yaml"],
        ("/nonexistent/policy.yaml",),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_user_error_is_one_line_naming_the_flag(
    case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, words = CASES[case]
    line = _err(argv, capsys)
    assert all(w in line for w in words), line


@pytest.mark.parametrize("command", ["demo", "bench", "profile"])
def test_missing_trace_csv_is_one_line_naming_the_field(
    command: str, missing_trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [command, "--scenario", str(missing_trace)]
    if command == "profile":
        argv += ["--stage", "thinker"]
    line = _err(argv, capsys)
    assert "workload.trace" in line and "gone.csv" in line


def test_operator_without_credentials_prints_no_kopf_traceback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "nothing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert cli.main(["operator"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "kopf" not in err
    assert "cannot reach the Kubernetes API" in err and "KUBECONFIG" in err


def test_bench_checks_outputs_before_running(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from triserve.bench import cli as bench_cli

    def _never(*args: object, **kwargs: object) -> None:
        raise AssertionError("a simulation ran before the output was checked")

    monkeypatch.setattr(bench_cli, "run_block", _never)
    err = _err(["bench", "--json", "/nonexistent/dir/out.json"], capsys)
    assert "--json" in err and "/nonexistent/dir does not exist" in err


@pytest.mark.parametrize("command", ["demo", "bench", "agent", "profile", "operator"])
def test_help_has_a_description_and_shows_defaults(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main([command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    description = out.split("\n\n")[1]
    assert len(description.split()) >= 12, description  # a sentence, not a module title
    assert "(default: " in out


@pytest.mark.parametrize(
    ("command", "old", "new"),
    [
        ("demo", "--duration", "--duration-s"),
        ("agent", "--duration", "--duration-s"),
        ("bench", "--duration", "--duration-s"),
        ("agent", "--scenario", "--sim"),
        ("profile", "--scenario", "--sim"),
        ("demo", "--sim", "--scenario"),
        ("operator", "--verbose", "--log-level"),
    ],
)
def test_the_same_thing_has_the_same_flag_names(
    command: str, old: str, new: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    out = capsys.readouterr().out
    assert old in out and new in out


def test_scenario_without_gpu_profile_is_refused(tmp_path: Path) -> None:
    from triserve.sim import ScenarioError, load_scenario

    text = (EXAMPLES / "scenarios" / "reference.yaml").read_text()
    path = tmp_path / "noprofile.yaml"
    path.write_text(text.replace("{profile: h100-sxm}", "{}", 1))
    with pytest.raises(ScenarioError, match=r"gpus\.0\.profile"):
        load_scenario(path)


def test_a_bad_upstream_names_the_value_not_a_template(tmp_path: Path) -> None:
    from triserve.sim import ScenarioError, load_scenario

    text = (EXAMPLES / "scenarios" / "reference.yaml").read_text()
    path = tmp_path / "upstream.yaml"
    path.write_text(text.replace("upstream: thinker", "upstream: nobody", 1))
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert "got 'nobody'" in str(info.value) and "{s.upstream" not in str(info.value)
