"""The test-time OCI image: built by tools/image/build.sh, unpacked by umoci, run by runc.

No container engine or registry is needed: tools/image/build.sh writes an OCI image layout
under .cache/image/ (reused while its inputs are unchanged), `umoci unpack` turns it into a
runtime bundle (a root filesystem and the runtime spec umoci derives from the image config),
and runc runs a copy of that spec with the arguments, user and mounts a test asks for. The
bundle's root filesystem is read-only with a tmpfs on /tmp, as the chart's pods run it.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import processes

from .support import REPO, run, tool

BUILD_SCRIPT = REPO / "tools" / "image" / "build.sh"
#: A cold build on 2 shared cores takes under a minute; allow for a slow mirror.
BUILD_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class Image:
    """An OCI image layout directory and the tag of the image in it."""

    layout: Path
    tag: str

    def _blob(self, descriptor: dict[str, Any]) -> dict[str, Any]:
        algorithm, digest = descriptor["digest"].split(":", 1)
        blob: dict[str, Any] = json.loads((self.layout / "blobs" / algorithm / digest).read_text())
        return blob

    def manifest(self) -> dict[str, Any]:
        """The image manifest the tag names."""
        index = json.loads((self.layout / "index.json").read_text())
        (descriptor,) = [
            m
            for m in index["manifests"]
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == self.tag
        ]
        return self._blob(descriptor)

    def config(self) -> dict[str, Any]:
        """The image configuration (os, architecture, and `config`: user, entrypoint, ...)."""
        return self._blob(self.manifest()["config"])

    def compressed_size_bytes(self) -> int:
        """What a pull transfers: the config and the compressed layers."""
        manifest = self.manifest()
        layers = sum(int(layer["size"]) for layer in manifest["layers"])
        return int(manifest["config"]["size"]) + layers


def require_tools() -> None:
    """Skip (or fail under CI=true) unless the build and run tools are here and usable."""
    for name in ("mmdebstrap", "umoci", "runc"):
        tool(name)
    if os.geteuid() != 0:
        pytest.skip("the image build and runc need root here (rootless mode is not tested)")


def build() -> Image:
    """Build (or reuse) the image; tools/image/build.sh prints `<layout>:<tag>` last."""
    require_tools()
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
        env=env,
    )
    if proc.returncode != 0:
        pytest.fail(f"tools/image/build.sh exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    layout, _, tag = proc.stdout.strip().splitlines()[-1].rpartition(":")
    return Image(Path(layout), tag)


@dataclass(frozen=True)
class Container:
    """A running `runc run` of the image, and the file its output goes to."""

    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        """What the container printed so far (stdout and stderr together)."""
        return self.log.read_text(errors="replace")


@dataclass(frozen=True)
class Bundle:
    """An unpacked image: a root filesystem plus the runtime spec umoci derived for it."""

    path: Path

    @classmethod
    def unpack(cls, image: Image, dest: Path) -> Bundle:
        """`umoci unpack` the image into `dest`."""
        run([tool("umoci"), "unpack", "--image", f"{image.layout}:{image.tag}", str(dest)])
        return cls(dest)

    def image_spec(self) -> dict[str, Any]:
        """The runtime spec as umoci wrote it from the image config."""
        spec: dict[str, Any] = json.loads((self.path / "config.json").read_text())
        return spec

    def spec(
        self,
        args: Sequence[str] | None,
        *,
        uid: int | None,
        host_network: bool,
        mounts: Sequence[tuple[Path, str]],
    ) -> dict[str, Any]:
        """The image's runtime spec with these changes: what a pod spec would override."""
        spec = copy.deepcopy(self.image_spec())
        process = spec["process"]
        process["terminal"] = False
        if args is not None:
            process["args"] = list(args)
        if uid is not None:
            process["user"] = {"uid": uid, "gid": uid}
        spec["root"] = {"path": str(self.path / "rootfs"), "readonly": True}
        spec["mounts"].append(
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]}
        )
        for source, destination in mounts:
            spec["mounts"].append(
                {
                    "destination": destination,
                    "type": "bind",
                    "source": str(source),
                    "options": ["rbind", "ro"],
                }
            )
        if host_network:
            # Share the test's network namespace, so the test reaches the exporter on 127.0.0.1.
            spec["linux"]["namespaces"] = [
                ns for ns in spec["linux"]["namespaces"] if ns["type"] != "network"
            ]
        return spec

    @contextmanager
    def start(
        self,
        tmp_path: Path,
        args: Sequence[str] | None = None,
        *,
        uid: int | None = None,
        host_network: bool = False,
        mounts: Sequence[tuple[Path, str]] = (),
    ) -> Iterator[Container]:
        """Run the image's entrypoint under runc; stopped (SIGTERM, then SIGKILL) on exit."""
        name = f"triserve-test-{uuid.uuid4().hex[:12]}"
        config_dir = tmp_path / name
        config_dir.mkdir()
        spec = self.spec(args, uid=uid, host_network=host_network, mounts=mounts)
        (config_dir / "config.json").write_text(json.dumps(spec))
        state = tmp_path / "runc-state"
        argv = [tool("runc"), "--root", str(state), "run", "--bundle", str(config_dir), name]
        log_path = tmp_path / f"{name}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield Container(proc, log_path)
        finally:
            if proc.poll() is None:
                processes.stop(proc, grace_s=10.0)
            subprocess.run(
                [tool("runc"), "--root", str(state), "delete", "--force", name],
                capture_output=True,
                check=False,
            )

    def run(
        self, tmp_path: Path, args: Sequence[str] | None = None, *, uid: int | None = None
    ) -> tuple[int, str]:
        """Run the entrypoint to completion: its exit status and its output."""
        with self.start(tmp_path, args, uid=uid) as container:
            returncode = container.proc.wait(timeout=60)
            return returncode, container.output()
