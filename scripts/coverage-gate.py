#!/usr/bin/env python3
"""Line coverage of the workspace, per crate, and the gate.

Reads `cargo llvm-cov report --json --summary-only` (the profiles of every
test, including the `shopfast` processes the integration tests start: they
inherit LLVM_PROFILE_FILE), prints a table per crate, and fails when the
workspace is under WORKSPACE_FLOOR or a crate under its floor in
.ci/coverage-floors ("crate percent" lines), so no crate hides behind the
others.

    cargo llvm-cov report --json --summary-only | scripts/coverage-gate.py
    scripts/coverage-gate.py report.json
    scripts/coverage-gate.py --only users report.json   # one crate's own run (a pipeline's):
                                                       # its floor alone, no workspace floor
"""
import json
import os
import sys

WORKSPACE_FLOOR = 80.0


def floors(path):
    out = {}
    if os.path.exists(path):
        for line in open(path):
            line = line.split("#", 1)[0].split()
            if len(line) == 2:
                out[line[0]] = float(line[1])
    return out


def main(argv):
    only = None
    if len(argv) > 2 and argv[1] == "--only":
        only = set(argv[2].split(","))
        argv = argv[:1] + argv[3:]
    report = json.load(open(argv[1]) if len(argv) > 1 else sys.stdin)
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
    crates = {}
    for data in report["data"]:
        for entry in data["files"]:
            path = os.path.relpath(entry["filename"], root)
            parts = path.split(os.sep)
            if len(parts) < 3 or parts[0] != "crates":
                continue
            if only is not None and parts[1] not in only:
                continue
            lines = entry["summary"]["lines"]
            count, covered = crates.get(parts[1], (0, 0))
            crates[parts[1]] = (count + lines["count"], covered + lines["covered"])
    if not crates:
        print("coverage-gate: no workspace files in the report", file=sys.stderr)
        return 2
    wanted = floors(os.path.join(root, ".ci", "coverage-floors"))
    if only is not None:
        wanted = {name: floor for name, floor in wanted.items() if name in only}
    failures = []
    print(f"{'crate':<14} {'lines':>7} {'covered':>8} {'%':>7} {'floor':>6}")
    total = total_covered = 0
    for name in sorted(crates):
        count, covered = crates[name]
        total += count
        total_covered += covered
        percent = 100.0 * covered / count if count else 100.0
        floor = wanted.get(name)
        mark = ""
        if floor is not None and percent < floor:
            failures.append(f"{name} {percent:.1f} % < {floor:.1f} %")
            mark = "  << under its floor"
        print(f"{name:<14} {count:>7} {covered:>8} {percent:>6.1f}% {'' if floor is None else f'{floor:.0f}':>6}{mark}")
    percent = 100.0 * total_covered / total
    print(f"{'workspace':<14} {total:>7} {total_covered:>8} {percent:>6.1f}% {WORKSPACE_FLOOR:>6.0f}")
    if only is None and percent < WORKSPACE_FLOOR:
        failures.append(f"workspace {percent:.1f} % < {WORKSPACE_FLOOR:.1f} %")
    for name in sorted(set(wanted) - set(crates)):
        failures.append(f"{name}: a floor is set but the crate has no coverage data")
    if failures:
        print("coverage-gate: FAILED: " + "; ".join(failures), file=sys.stderr)
        return 1
    print("coverage-gate: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
