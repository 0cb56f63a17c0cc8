#!/usr/bin/env python3
"""How fleetform scales with fleet size, side by side with check-jsonschema.

Generates a fleet of N deployments (default 1,000) from the bundled examples, then times, as
whole commands (start-up included, best of --repeat runs):

  fleetform validate DIR          schema + semantic rules + fleet-wide uniqueness, with positions
  check-jsonschema FILES...       the schema alone, the same files, the same schema file
  fleetform plan DIR              validate + resolve + render every module + cost table
  fleetform validate ONE.yaml     start-up cost of the common single-file case

Goals, each printed as a ratio of times (lower is faster):
  fleetform validate <= 0.5x check-jsonschema on the same files (while doing more),
  fleetform plan <= 2x fleetform validate,
  fleetform validate of one file < 0.2 s (median).
Exit status: 1 if a timed command failed (its figures would mean nothing), 2 if a goal is missed.

    python benchmarks/fleet_scale.py [--count 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def make_fleet(dest: Path, count: int) -> list[Path]:
    examples = sorted(p for p in (REPO / "deployments").glob("*.yaml") if p.name != "fleet.yaml")
    shutil.copy(REPO / "deployments" / "fleet.yaml", dest / "fleet.yaml")
    files = []
    for i in range(count):
        src = examples[i % len(examples)]
        text = src.read_text()
        first_name = next(line for line in text.splitlines() if line.startswith("name: ")).split(": ", 1)[1]
        text = text.replace(f"name: {first_name}", f"name: {first_name[:30]}-{i}")
        # served names must be unique across the fleet too
        text = text.replace("served_model_names: [", f"served_model_names: [m{i}-")
        text = text.replace(", llm]", f", llm{i}]")
        path = dest / f"d{i:05d}.yaml"
        path.write_text(text)
        files.append(path)
    return files


def timed(cmd: list[str], repeat: int, cwd: Path) -> tuple[float, int]:
    best, code = float("inf"), 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        best = min(best, time.perf_counter() - t0)
        code = proc.returncode
        if code not in (0,):
            sys.stderr.write(proc.stderr.decode()[-2000:])
    return best, code


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    fleetform = [sys.executable, "-m", "renderer"]
    checker = shutil.which("check-jsonschema") or str(Path(sys.executable).with_name("check-jsonschema"))
    with tempfile.TemporaryDirectory() as tmp:
        fleet_dir = Path(tmp)
        files = make_fleet(fleet_dir, args.count)
        rel = [str(f.relative_to(fleet_dir)) for f in files]
        runs = {
            "fleetform validate": fleetform + ["validate", "."],
            "check-jsonschema": [checker, "--schemafile", str(REPO / "schema/deployment.schema.json"), *rel],
            "fleetform plan": fleetform + ["plan", ".", "--format", "json"],
        }
        results = {name: timed(cmd, args.repeat, fleet_dir) for name, cmd in runs.items()}
        single = [timed(fleetform + ["validate", rel[0]], 1, fleet_dir)[0] for _ in range(max(5, args.repeat))]

    print(f"fleet of {args.count} deployments, best of {args.repeat} runs, whole commands:")
    print(f"  {'command':<22} {'seconds':>9} {'files/s':>9}  exit")
    for name, (secs, code) in results.items():
        print(f"  {name:<22} {secs:>9.2f} {args.count / secs:>9.0f}  {code}")
    one_file = statistics.median(single)
    print(
        f"  fleetform validate, one file: median {one_file * 1000:.0f} ms "
        f"(min {min(single) * 1000:.0f} ms) over {len(single)} runs"
    )
    failed = [name for name, (_, code) in results.items() if code != 0]
    if failed:
        print(f"FAILED: {', '.join(failed)} exited non-zero; the figures above mean nothing")
        return 1
    validate, plan = results["fleetform validate"][0], results["fleetform plan"][0]
    goals = [
        ("validate / check-jsonschema", validate / results["check-jsonschema"][0], 0.5),
        ("plan / validate", plan / validate, 2.0),
        ("one-file validate, seconds", one_file, 0.2),
    ]
    print("goals (lower is better):")
    for what, value, limit in goals:
        print(f"  {what:<28} {value:6.2f}  (goal <= {limit:g}: {'met' if value <= limit else 'NOT met'})")
    return 0 if all(value <= limit for _, value, limit in goals) else 2


if __name__ == "__main__":
    raise SystemExit(main())
