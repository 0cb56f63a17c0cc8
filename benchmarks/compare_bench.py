#!/usr/bin/env python3
"""Print `fleetform bench` and `vllm bench serve` results side by side (written by gpu_e2e.sh).

python benchmarks/compare_bench.py RESULTS_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

METRICS = (  # (label, fleetform getter, vLLM key)
    ("output tok/s", lambda r: r["output_throughput"], "output_throughput"),
    ("request/s", lambda r: r["request_throughput"], "request_throughput"),
    ("median TTFT ms", lambda r: r["ttft_ms"]["median"], "median_ttft_ms"),
    ("median TPOT ms", lambda r: r["tpot_ms"]["median"], "median_tpot_ms"),
    ("median ITL ms", lambda r: r["itl_ms"]["median"], "median_itl_ms"),
    (
        "mean input tokens",
        lambda r: r["total_input_tokens"] / max(r["completed"], 1),
        lambda v: v["total_input_tokens"] / max(v["completed"], 1),
    ),
)
GATED = ("output tok/s", "median TTFT ms", "median TPOT ms")  # the 10% goal


def main(results: Path) -> int:
    worst = 0.0
    print("| concurrency | metric | fleetform bench | vllm bench serve | difference |")
    print("|---|---|---|---|---|")
    for c in (1, 64):
        ff_file, v_file = results / f"fleetform-c{c}.json", results / f"vllm-c{c}.json"
        if not ff_file.exists() or not v_file.exists():
            print(f"| {c} | (missing results) | | | |")
            worst = float("inf")
            continue
        ff = json.loads(ff_file.read_text())["results"][0]
        v = json.loads(v_file.read_text())
        for label, get_ff, key in METRICS:
            a = get_ff(ff)
            b = key(v) if callable(key) else v[key]
            diff = (a - b) / b * 100 if b else float("nan")
            if label in GATED:
                worst = max(worst, abs(diff))
            print(f"| {c} | {label} | {a:.2f} | {b:.2f} | {diff:+.1f}% |")
        print(f"| {c} | failed requests | {ff['failed']} | {v.get('failed', 0)} | |")
    print(f"\nlargest difference on output tok/s, median TTFT, median TPOT: {worst:.1f}% (goal: within 10%)")
    return 0 if worst <= 10 else 1


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1])))
