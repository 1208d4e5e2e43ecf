#!/usr/bin/env python3
"""Summarizes the RESULT lines of bench/*.cc and bench/python_bench.py (read
from standard input) over one or more runs: one row per measure with its
median, min and max over the runs, the target, and whether the median meets
it. Writes every sample to --out as JSON; with --check, exits with 1 when a
target is missed.

    bench/summarize.py [--out FILE] [--cores N] [--check] < log
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys


def meets(value: float, target: str) -> bool | None:
    """None when the measure has no target ("-")."""
    parts = target.split()
    if len(parts) != 2:
        return None
    op, limit = parts[0], float(parts[1])
    if op == ">=":
        return value >= limit
    if op == "<=":
        return value <= limit
    raise ValueError(f"unknown target operator in {target!r}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench-results.json")
    ap.add_argument("--cores", type=int, default=0)
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()

    rows: dict[tuple[str, str], dict] = {}
    for line in sys.stdin:
        if not line.startswith("RESULT "):
            continue
        r = json.loads(line[len("RESULT ") :])
        key = (r["bench"], r["measure"])
        row = rows.setdefault(
            key, {"bench": r["bench"], "measure": r["measure"], "target": r["target"], "values": []}
        )
        row["values"].append(float(r["value"]))

    missed = []
    print(f"{'bench':<10} {'measure':<62} {'median':>9} {'min':>9} {'max':>9} {'target':>10} met")
    for row in rows.values():
        v = row["values"]
        row["median"] = statistics.median(v)
        row["min"], row["max"] = min(v), max(v)
        row["met"] = meets(row["median"], row["target"])
        met = "-" if row["met"] is None else ("yes" if row["met"] else "NO")
        if row["met"] is False:
            missed.append(row)
        print(
            f"{row['bench']:<10} {row['measure'][:62]:<62} {row['median']:>9.4g} {row['min']:>9.4g} "
            f"{row['max']:>9.4g} {row['target']:>10} {met}"
        )
    runs = max((len(r["values"]) for r in rows.values()), default=0)
    with open(a.out, "w") as f:
        json.dump({"machine": {"cores": a.cores}, "runs": runs, "results": list(rows.values())}, f, indent=1)
    print(f"results of {runs} run(s) written to {a.out}")
    if a.check and missed:
        print(f"{len(missed)} target(s) missed:", file=sys.stderr)
        for row in missed:
            print(
                f"  {row['bench']}: {row['measure']} = {row['median']:.4g} (target {row['target']})",
                file=sys.stderr,
            )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
