"""Regenerate the reliability table of docs/restore.md: run the fault suites, print the table.

Run by hand (``python tools/reliability_table.py``, or ``make reliability``) after changing
the agent's restore paths or the fault suites; paste its output into docs/restore.md's
"Reliability" section. It runs ``pytest tests/faults`` (the chaos state machine and the
one-fault-per-test rows, about a minute on two cores) and prints, as Markdown, each fault
class with how often it was tried, survived (every GPU back at defaults and never reported
Released while locked) and left a GPU locked. Exits with pytest's status.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    """Run the fault suites and print their table; pytest's exit status."""
    with tempfile.TemporaryDirectory(prefix="triserve-faults-") as tmp:
        table = Path(tmp) / "faults.md"
        env = {**os.environ, "TRISERVE_FAULTS_TABLE": str(table)}
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-cov",
                   "tests/faults"]  # fmt: skip
        done = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, check=False)
        if not table.exists():
            print(f"no table: pytest exited {done.returncode} before the fault tests ran")
            return done.returncode or 1
        print(table.read_text(), end="")
        if done.returncode:
            print(f"\npytest exited {done.returncode}: some fault tests failed", file=sys.stderr)
        return done.returncode


if __name__ == "__main__":
    sys.exit(main())
