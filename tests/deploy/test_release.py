"""The release workflow publishes what the chart installs by default, and refuses a bad tag.

.github/workflows/release.yml pushes, on a tag v<version>, the image
ghcr.io/<owner>/triserve:<version> (linux/amd64 and linux/arm64) and the chart to
oci://ghcr.io/<owner>/charts. These tests read the workflow as GitHub would, run its version
check as its runner would (bash), and hold the chart's default image and the chart README's
`helm pull` to what it publishes. actionlint, where installed, checks the workflow as a whole.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from .support import CHART, REPO, by_kind, render, run, tool

WORKFLOW = REPO / ".github" / "workflows" / "release.yml"


def _workflow() -> dict[Any, Any]:
    workflow: dict[Any, Any] = yaml.safe_load(WORKFLOW.read_text())
    return workflow


def _chart() -> dict[str, Any]:
    chart: dict[str, Any] = yaml.safe_load((CHART / "Chart.yaml").read_text())
    return chart


def _owner() -> str:
    """The GitHub owner the chart's sources name: the owner a release runs under."""
    match = re.fullmatch(r"https://github\.com/([^/]+)/[^/]+", _chart()["sources"][0])
    assert match, "Chart.yaml sources[0] is the project's GitHub repository"
    return match.group(1).lower()


def _step(job: str, uses: str | None = None, name: str | None = None) -> dict[str, Any]:
    steps = _workflow()["jobs"][job]["steps"]
    (step,) = [
        s
        for s in steps
        if (uses and s.get("uses", "").startswith(uses)) or (name and s.get("name") == name)
    ]
    found: dict[str, Any] = step
    return found


def _expand(text: str, version: str) -> str:
    """Substitute the workflow's `${{ ... }}` expressions and `$VAR`s as the release run would."""
    values = {
        **_workflow()["env"],
        "needs.version.outputs.owner": _owner(),
        "needs.version.outputs.version": version,
        "OWNER": _owner(),
        "VERSION": version,
    }
    for key, value in values.items():
        text = text.replace(f"${{{{ env.{key} }}}}", value).replace(f"${{{{ {key} }}}}", value)
        text = re.sub(rf"\$\{{?{re.escape(key)}\}}?(?![A-Za-z0-9_])", value, text)
    return text


def test_release_runs_on_version_tags_and_builds_both_architectures() -> None:
    workflow = _workflow()
    # YAML 1.1 reads the bare key `on` as True; GitHub reads it as "on".
    trigger = workflow.get("on", workflow.get(True))
    assert trigger == {"push": {"tags": ["v*"]}}
    build = _step("image", uses="docker/build-push-action")["with"]
    assert build["file"] == "Dockerfile" and build["push"] is True
    assert set(build["platforms"].split(",")) == {"linux/amd64", "linux/arm64"}
    assert _step("image", uses="docker/setup-qemu-action")
    assert _workflow()["jobs"]["image"]["permissions"]["packages"] == "write"


def test_chart_default_image_is_the_image_the_release_pushes(tmp_path: Path) -> None:
    version = _chart()["version"]
    pushed = _expand(_step("image", uses="docker/build-push-action")["with"]["tags"], version)
    objects = render(tmp_path, {}, include_crds=False)
    images = {
        container["image"]
        for kind in ("Deployment", "DaemonSet", "Job")
        for obj in by_kind(objects, kind)
        for container in obj["spec"]["template"]["spec"]["containers"]
    }
    assert images == {pushed}, f"the release pushes {pushed}; the chart runs {images}"


def test_chart_readme_pulls_the_chart_from_where_the_release_pushes_it() -> None:
    script = _step("chart", name="Package and push the chart")["run"]
    (push,) = [line for line in script.splitlines() if line.strip().startswith("helm push")]
    destination = _expand(push.split()[-1].strip('"'), _chart()["version"])
    readme = (CHART / "README.md").read_text()
    assert f"helm pull {destination}/{_chart()['name']} --version" in readme


def _check_versions(tmp_path: Path, tag: str) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run the workflow's version check for `tag` as the runner would; its outputs file."""
    step = _step("version", name="Tag, chart and package versions agree")
    outputs = tmp_path / "outputs"
    outputs.touch()
    env = {
        **os.environ,
        **_workflow()["env"],
        "GITHUB_REF_NAME": tag,
        "GITHUB_OUTPUT": str(outputs),
        "GITHUB_REPOSITORY_OWNER": _owner().capitalize(),
    }
    proc = subprocess.run(
        ["bash", "-e", "-c", step["run"]],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return proc, outputs.read_text()


def test_release_of_the_chart_version_publishes_under_the_lower_case_owner(
    tmp_path: Path,
) -> None:
    version = _chart()["version"]
    proc, outputs = _check_versions(tmp_path, f"v{version}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert outputs.splitlines() == [f"version={version}", f"owner={_owner()}"]


def test_release_refuses_a_tag_the_chart_and_package_do_not_carry(tmp_path: Path) -> None:
    proc, outputs = _check_versions(tmp_path, "v9.9.9")
    assert proc.returncode == 1
    assert "tag v9.9.9 wants 9.9.9, but the chart version=" in proc.stdout
    assert outputs == ""


def test_actionlint_accepts_the_release_workflow() -> None:
    run([tool("actionlint"), "-no-color", str(WORKFLOW)])
