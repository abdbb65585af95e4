#!/usr/bin/env python3
"""Regenerate tools/k8s/go.mod: pin k8s.io/kubernetes and every staging module it replaces.

k8s.io/kubernetes replaces its k8s.io/* staging modules with local directories
(``./staging/src/k8s.io/...``), which a module that depends on it cannot see. The documented way to
depend on it is to replace each of those modules with its published ``v0.<minor>.<patch>`` tag.
This script reads the replace list from the go.mod that the Go module proxy serves for the chosen
release, so the list is never written by hand, then runs ``go mod tidy``.

Usage: python3 tools/k8s/update_gomod.py v1.37.2
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
STAGING_RE = re.compile(r"^\s*(k8s\.io/[\w.-]+)\s+=>\s+\./staging/src/")


def staging_modules(kube_version: str) -> list[str]:
    """The k8s.io/* modules that k8s.io/kubernetes@kube_version replaces with staging dirs."""
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"k8s.io/kubernetes@{kube_version}"],
        cwd=HERE, check=True, capture_output=True, text=True,
    ).stdout
    gomod = Path(json.loads(out)["GoMod"]).read_text()
    return [m.group(1) for line in gomod.splitlines() if (m := STAGING_RE.match(line))]


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not re.fullmatch(r"v1\.\d+\.\d+", argv[1]):
        print("usage: update_gomod.py v1.MINOR.PATCH (a k8s.io/kubernetes release)", file=sys.stderr)
        return 2
    kube_version = argv[1]
    staging_version = "v0." + kube_version.removeprefix("v1.")
    edits = [f"-require=k8s.io/kubernetes@{kube_version}"]
    edits += [f"-replace={mod}={mod}@{staging_version}" for mod in staging_modules(kube_version)]
    subprocess.run(["go", "mod", "edit", *edits], cwd=HERE, check=True)
    subprocess.run(["go", "mod", "tidy"], cwd=HERE, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
