#!/usr/bin/env python3
"""How many requests/s `fleetform bench` can drive, so we know it is never the bottleneck.

Starts the test server (tests/openai_server.py) in its own process with zero delays, so a
request costs only HTTP and SSE handling, then runs the real load generator
(renderer.endpoint.bench.run_bench, closed loop) against it for each concurrency level and prints
requests/s, streamed tokens/s and the client's CPU use. Client and server each get a core of a
two-core machine; if the client's CPU share is near 100% the client is the limit, otherwise the
server is and the figure is a lower bound on what the client can do.

    python benchmarks/client_throughput.py [--concurrency 1,16,64] [--duration 5] [--tokens 16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from renderer.endpoint.bench import BenchConfig, run_bench  # noqa: E402
from renderer.endpoint.client import Endpoint  # noqa: E402


def start_server(tokens: int) -> tuple[subprocess.Popen[str], str]:
    """The test server in a child process; it prints its URL, and exits when stdin closes."""
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "openai_server.py"), "--output-tokens", str(tokens)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http://127.0.0.1:"):
        proc.kill()
        raise SystemExit(f"test server did not start (said {url!r})")
    return proc, url


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) of another process, from /proc; None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(url: str, server_pid: int, levels: list[int], duration: float, tokens: int) -> None:
    endpoint = Endpoint(url)
    warmup = BenchConfig(concurrency=[max(levels)], num_requests=200, input_len=32, output_len=tokens)
    await run_bench(endpoint, None, warmup, progress=False)
    columns = (
        ("concurrency", 11),
        ("requests", 9),
        ("req/s", 8),
        ("tok/s", 8),
        ("client CPU", 11),
        ("server CPU", 11),
        ("failed", 7),
    )
    head = " ".join(f"{name:>{width}}" for name, width in columns)
    print(head)
    for level in levels:
        config = BenchConfig(concurrency=[level], duration=duration, input_len=32, output_len=tokens)
        cpu0, srv0, wall0 = time.process_time(), cpu_seconds(server_pid), time.perf_counter()
        (result,) = await run_bench(endpoint, None, config, progress=False)
        wall = time.perf_counter() - wall0
        cpu = (time.process_time() - cpu0) / wall
        srv1 = cpu_seconds(server_pid)
        srv = f"{(srv1 - srv0) / wall:.0%}" if srv0 is not None and srv1 is not None else "?"
        print(
            f"{level:>11} {result.completed:>9} {result.request_throughput:>8.0f} "
            f"{result.output_throughput:>8.0f} {cpu:>11.0%} {srv:>11} {result.failed:>7}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated levels")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per level")
    parser.add_argument("--tokens", type=int, default=16, help="streamed tokens per response")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    proc, url = start_server(args.tokens)
    try:
        print(f"test server at {url}: zero delays, {args.tokens} tokens per response, {args.duration:g} s per level")
        asyncio.run(measure(url, proc.pid, levels, args.duration, args.tokens))
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
