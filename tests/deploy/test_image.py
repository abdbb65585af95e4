"""The container image: the Dockerfile's shape, and an equivalent image built and run here.

No container engine or registry runs in CI, so the Dockerfile itself is not built here. What
is checked of it: hadolint, its shape, and that the build context the .dockerignore lets
through is enough for the builder stage's `pip wheel .`. Then tools/image/build.sh builds an
equivalent OCI image from Debian packages and the same hash-locked wheels (tests/deploy/images.py),
and the `slow` tests below run its entrypoint under runc: `--help`, the agent on the simulator,
and the operator as the image's non-root user.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.eventually import eventually_sync

from .images import BUILD_TIMEOUT_S, Bundle, Image, build
from .support import REPO, run, tool

DOCKERFILE = REPO / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_hadolint_passes() -> None:
    run([tool("hadolint"), "--failure-threshold", "info", str(DOCKERFILE)])


def test_image_is_multi_stage_wheel_only_and_non_root() -> None:
    instructions = _instructions()
    froms = [args for keyword, args in instructions if keyword == "FROM"]
    args = dict(
        arg.split("=", 1) for keyword, arg in instructions if keyword == "ARG" and "=" in arg
    )
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    _image, _, digest = args["PYTHON_IMAGE"].partition("@sha256:")
    assert len(digest) == 64 and int(digest, 16) >= 0, "the base image is pinned by digest"
    builder = instructions[: max(i for i, (k, _) in enumerate(instructions) if k == "FROM")]
    wheels = " ".join(a for k, a in builder if k == "RUN")
    assert "--require-hashes" in wheels and "requirements/runtime.lock" in wheels
    assert froms == ["${PYTHON_IMAGE} AS builder", "${PYTHON_IMAGE}"]
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    runtime = instructions[last_from:]
    runs = " ".join(args for keyword, args in runtime if keyword == "RUN")
    assert "pip install --no-index --find-links=/wheels" in runs, "runtime installs wheels only"
    assert not any(keyword == "COPY" for keyword, _ in runtime), "no sources in the runtime stage"
    assert ("USER", "65532:65532") in runtime
    assert ("ENTRYPOINT", '["triserve"]') in runtime
    labels = " ".join(args for keyword, args in runtime if keyword == "LABEL")
    for key in ("title", "description", "version", "revision", "created", "licenses", "source"):
        assert f"org.opencontainers.image.{key}=" in labels


def _build_context(dest: Path) -> None:
    """Copy what .dockerignore lets into the build context (its `*` then `!` patterns)."""
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for path in sorted(REPO.rglob("*")):
        rel = path.relative_to(REPO).as_posix()
        if not path.is_file() or rel.startswith((".venv/", ".git/")):
            continue
        included = False
        for pattern in patterns:
            negate = pattern.startswith("!")
            bare = pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(rel, bare) or rel.startswith(bare + "/"):
                included = negate
        if included:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest / rel)


def test_dockerignore_context_builds_the_wheel_with_its_data_files(tmp_path: Path) -> None:
    context = tmp_path / "context"
    _build_context(context)
    assert sorted(p.name for p in context.iterdir()) == [
        "README.md",
        "pyproject.toml",
        "requirements",
        "src",
    ]
    assert [p.name for p in (context / "requirements").iterdir()] == ["runtime.lock"]
    assert not list(context.rglob("__pycache__"))
    wheels = tmp_path / "wheels"
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    proc = subprocess.run(
        [*pip_wheel, "--wheel-dir", str(wheels), str(context)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = wheels.glob("triserve-0.1.0-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "triserve/cli.py" in names
    assert "triserve/py.typed" in names
    packaged_yaml = {n for n in names if n.endswith((".yaml", ".proto"))}
    source_yaml = {
        p.relative_to(REPO / "src").as_posix()
        for p in (REPO / "src" / "triserve").rglob("*")
        if p.suffix in {".yaml", ".proto"}
    }
    assert source_yaml <= packaged_yaml


# --- the image built from Debian packages, run under runc ---------------------------------

#: What a pull of the test-time image may transfer (measured 95 MiB; docs/install.md).
IMAGE_BUDGET_BYTES = 130 * 1024 * 1024
POLICY = REPO / "examples" / "energypolicy-minimal.yaml"


@pytest.fixture(scope="module")
def image() -> Image:
    return build()


@pytest.fixture(scope="module")
def bundle(image: Image, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bundle]:
    dest = tmp_path_factory.mktemp("image") / "bundle"
    yield Bundle.unpack(image, dest)
    shutil.rmtree(dest, ignore_errors=True)  # about 400 MB; pytest keeps old tmp dirs


def _runtime_stage() -> list[tuple[str, str]]:
    instructions = _instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def _assignments(keyword: str) -> dict[str, str]:
    """KEY=value pairs of every ENV or LABEL instruction of the Dockerfile's runtime stage."""
    pairs = [
        item.split("=", 1)
        for kw, args in _runtime_stage()
        if kw == keyword
        for item in shlex.split(args)
    ]
    return dict(pairs)


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S + 60)
def test_built_image_is_configured_as_the_dockerfile_says(image: Image) -> None:
    config = image.config()
    runtime = dict(_runtime_stage())
    container = config["config"]
    assert container["User"] == runtime["USER"]
    assert container["WorkingDir"] == runtime["WORKDIR"]
    # Exec form: a JSON array.
    assert container["Entrypoint"] == json.loads(runtime["ENTRYPOINT"])
    assert container["Cmd"] == json.loads(runtime["CMD"])
    assert set(container["ExposedPorts"]) == {f"{p}/tcp" for p in runtime["EXPOSE"].split()}
    env = dict(item.split("=", 1) for item in container["Env"])
    assert _assignments("ENV").items() <= env.items()
    labels = container["Labels"]
    assert set(labels) == set(_assignments("LABEL"))
    fixed = {k: v for k, v in _assignments("LABEL").items() if "$" not in v and "base" not in k}
    assert fixed.items() <= labels.items()
    assert config["os"] == "linux"


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S + 60)
def test_built_image_pulls_within_its_size_budget(image: Image) -> None:
    size = image.compressed_size_bytes()
    assert size <= IMAGE_BUDGET_BYTES, f"the image grew to {size / 2**20:.0f} MiB compressed"


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S + 60)
def test_image_entrypoint_prints_help_by_default(bundle: Bundle, tmp_path: Path) -> None:
    returncode, output = bundle.run(tmp_path)
    assert returncode == 0, output
    assert output.startswith("usage: triserve")
    assert "agent" in output and "operator" in output


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, ""


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S + 60)
def test_image_runs_the_agent_on_the_simulator(bundle: Bundle, tmp_path: Path) -> None:
    metrics_port, health_port = _free_port(), _free_port()
    args = ["triserve", "agent", "--standalone", "--policy", "/etc/triserve/policy.yaml"]
    args += ["--sim", "reference", "--duration-s", "8", "--metrics-host", "127.0.0.1"]
    args += ["--metrics-port", str(metrics_port), "--health-port", str(health_port)]
    args += ["--state-file", "/tmp/state.json"]
    mounts = [(POLICY, "/etc/triserve/policy.yaml")]
    # uid 0, as the chart's agent pod runs it (NVML needs it to lock clocks).
    with bundle.start(tmp_path, args, uid=0, host_network=True, mounts=mounts) as agent:

        def applied_clocks() -> str | None:
            assert agent.proc.poll() is None, agent.output()
            assert _get(f"http://127.0.0.1:{health_port}/readyz")[0] == 200, "not ready"
            _status, body = _get(f"http://127.0.0.1:{metrics_port}/metrics")
            clock = "triserve_gpu_sm_clock_applied_mhz{"
            return "\n".join(ln for ln in body.splitlines() if ln.startswith(clock)) or None

        clocks = eventually_sync(applied_clocks, "the agent in the image to be ready", 30)
        assert 'gpu="0"' in clocks
        assert agent.proc.wait(timeout=30) == 0, agent.output()


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S + 60)
def test_image_runs_the_operator_as_non_root_to_a_clear_error(
    bundle: Bundle, tmp_path: Path
) -> None:
    assert bundle.image_spec()["process"]["user"]["uid"] == 65532
    returncode, output = bundle.run(tmp_path, ["triserve", "operator"])
    assert returncode == 2, output
    assert "cannot reach the Kubernetes API" in output
    assert "KUBECONFIG" in output and "Traceback" not in output
