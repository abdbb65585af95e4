"""The container image definition: hadolint-clean, multi-stage, wheel-only, non-root.

No container engine runs in CI, so the image is not built here. What can be checked without
one is: hadolint, the Dockerfile's shape, and that the build context the .dockerignore lets
through is enough for the builder stage's `pip wheel .`.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

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
