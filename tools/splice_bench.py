"""Replace some rows of bench JSON blocks with the same rows from a later run.

``python tools/splice_bench.py BASE.json NEW.json`` rewrites BASE.json: for every block of
NEW.json (same scenario, PMU variant and seeds as one of BASE's), each seed's rows named in
NEW replace BASE's rows of the same name. Used when only some rows' code changed (for
example the controller) and the other rows (the PMU default, the alternatives and their
offline searches) would be recomputed bit for bit: the two runs' ``default`` rows must be
identical on every seed, or nothing is written. `triserve bench --summary` recomputes every
aggregate from the per-seed rows, so the spliced file summarises like a fresh run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _key(block: dict[str, Any]) -> tuple[Any, ...]:
    return (
        block["scenario"],
        block.get("idle_hold_s"),
        block.get("parked_share"),
        block.get("decode_share"),
        tuple(block["seeds"]),
    )


def _blocks(path: Path) -> list[dict[str, Any]]:
    payload = json.loads(path.read_text())
    return payload if isinstance(payload, list) else [payload]


def splice(base_path: Path, new_path: Path) -> list[str]:
    """Splice NEW's rows into BASE (in place); returns what was replaced, or raises."""
    base = _blocks(base_path)
    by_key = {_key(b): b for b in base}
    done = []
    for block in _blocks(new_path):
        target = by_key.get(_key(block))
        if target is None:
            raise SystemExit(f"{new_path}: block {_key(block)} has no match in {base_path}")
        for old_seed, new_seed in zip(target["per_seed"], block["per_seed"], strict=True):
            old = {r["strategy"]: r for r in old_seed["results"]}
            new = {r["strategy"]: r for r in new_seed["results"]}
            if old["default"]["energy_j"] != new["default"]["energy_j"]:
                raise SystemExit(
                    f"seed {new_seed['seed']}: the default rows differ "
                    f"({old['default']['energy_j']} vs {new['default']['energy_j']}): "
                    "the runs are not comparable"
                )
            for name, row in new.items():
                if name != "default":
                    old[name] = row
                    done.append(f"{block['scenario']} seed {new_seed['seed']}: {name}")
            old_seed["results"] = list(old.values())
        target["results"] = target["per_seed"][0]["results"]
    base_path.write_text(json.dumps(base if len(base) > 1 else base[0], indent=2) + "\n")
    return done


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python tools/splice_bench.py BASE.json NEW.json")
    for line in splice(Path(sys.argv[1]), Path(sys.argv[2])):
        print(line)
