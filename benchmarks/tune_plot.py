"""Draw a saved `fleetform tune --format json` run with fleetform's own charts.

The GPU device has no matplotlib, so `tune_gpu.sh` writes the HTML chart there and this draws the PNG of
benchmarks/README.md here, from the JSON that came back: the top-level answer, which for an `--engine`
grid is the best setting's.

    python3 benchmarks/tune_plot.py tune.json tune.png "fleetform tune: H100, 512 in / 128 out"
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

from renderer.cli.charts import chart
from renderer.endpoint.tune import METRICS, SloTerm


def result_of(r: dict) -> SimpleNamespace:
    """What the SLO's judge and the charts read of a BenchResult, from its JSON (`bench --output`, or a
    level of tune's)."""
    stats = {f"{m}_ms": SimpleNamespace(**r[f"{m}_ms"]) for m in METRICS}
    return SimpleNamespace(
        completed=r["completed"], failed=r["failed"], output_throughput=r["output_throughput"], **stats
    )


def answer_of(doc: dict) -> SimpleNamespace:
    """What the charts read of a TuneAnswer (levels, verdicts, figures, SLO, answer), from its JSON."""
    return SimpleNamespace(
        slo=[SloTerm(t["metric"], t["stat"], t["bound"]) for t in doc["slo"]],
        levels=[
            SimpleNamespace(
                concurrency=lv["concurrency"],
                passed=lv["passed"],
                values=lv["slo_values"],
                result=result_of(lv["result"]),
            )
            for lv in doc["levels"]
        ],
        max_concurrency=doc["max_concurrency"],
        target_concurrency=doc["target_concurrency"],
    )


def main(argv: list[str]) -> None:
    source, target, title = argv[0], argv[1], argv[2] if len(argv) > 2 else "fleetform tune"
    drawn = chart(target, answer_of(json.loads(Path(source).read_text())), title)
    Path(target).write_bytes(drawn if isinstance(drawn, bytes) else drawn.encode())
    print(f"wrote {target}")


if __name__ == "__main__":
    main(sys.argv[1:])
