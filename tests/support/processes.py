"""Stopping a helper process a test started: SIGTERM, a grace period, then SIGKILL.

Used by the real API-server control plane (tests/apiserver) and the Prometheus and exporter
processes of tests/deploy, so none is left running after its test.
"""

from __future__ import annotations

import subprocess

__all__ = ["stop"]


def stop(proc: subprocess.Popen[bytes], grace_s: float) -> int:
    """Terminate `proc`, kill it if it is still running after `grace_s`; its exit status."""
    proc.terminate()
    try:
        return proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
