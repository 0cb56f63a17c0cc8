#!/usr/bin/env python3
"""Load and fault test of the fleet gateway: direct vs through the gateway, in the same run.

Three kinds of process, all on 127.0.0.1:
- the upstream: an OpenAI-compatible stand-in with fixed timing (`--ttft` to the first event, then
  one event every `--interval`, `--chunks` events of about 250 bytes, as vLLM streams them); it never
  parses bodies, so a big body costs it nothing;
- the gateway: `GatewayApp` (the code the rendered module embeds) under uvicorn (`--http httptools
  --loop uvloop` unless `--server h11`), pinned with `taskset` to its own core (`--gateway-cpu`);
- the client: this process, pinned to the other cores together with the upstream.

Phases, each run direct and then through the gateway:
- sustained: N workers each stream back to back for `--seconds`; TTFT (request sent -> first event)
  of every stream that starts after a warm-up second, and the gateway's CPU per relayed event
  (its utime+stime from /proc over the events the client got);
- burst: `--burst` streams sent at once;
- big body: `--big-mb` MB of token ids (`model` last, as the OpenAI SDK writes it) sent through the
  gateway while 64 streams run through it; the streams' largest gap between two events must stay
  under 50 ms (the upstream sends one every `--interval`).
The gateway's RSS (and its peak) is printed after each phase.

    python benchmarks/gateway_load.py [--streams 64,256,1000] [--seconds 6] [--burst 256] [--big-mb 30]

A stream count may carry its own interval, `1000:0.2`, to scale a level down on a small machine.
Needs uvicorn (and httptools, uvloop for the default server): `pip install uvicorn httptools uvloop`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KEY = "bench-key"
MODEL = "bench-model"
BIG_MODEL = "bench-embed"  # served by a second upstream process, so a big body stalls neither the streams'
# upstream nor the client that reads the streams (it is sent from its own process too)
CLK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the upstream -----------------------------------------------------------------------------------------


def run_upstream(port: int, ttft: float, interval: float, chunks: int) -> None:
    from aiohttp import web

    delta = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": MODEL,
        "choices": [{"index": 0, "delta": {"content": " token"}, "logprobs": None, "finish_reason": None}],
    }
    event = b"data: " + json.dumps(delta).encode() + b"\n\n"
    event += b" " * max(0, 250 - len(event))

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        n = chunks
        if b'"chunks":' in body[:200]:  # a per-request count, near the start of small bodies only
            n = int(body.split(b'"chunks":', 1)[1].split(b",", 1)[0].split(b"}", 1)[0])
        if b'"stream": true' not in body[:200]:
            return web.json_response({"object": "list", "model": MODEL, "bytes": len(body)})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        start = time.monotonic()
        for i in range(n):
            due = start + ttft + i * interval  # fixed timing, not drifting with load
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            await resp.write(event)
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/embeddings", chat)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, backlog=2048)


# --- the gateway ------------------------------------------------------------------------------------------


def run_gateway(port: int, upstreams: str, server: str, source: str) -> None:
    import importlib.util

    import uvicorn

    spec = importlib.util.spec_from_file_location("gateway_app_under_test", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    GatewayApp, Upstream = module.GatewayApp, module.Upstream

    first, second = upstreams.split(",")
    gateway = GatewayApp(
        {MODEL: Upstream("bench", first, "none"), BIG_MODEL: Upstream("big", second, "none")},
        environ={"FLEETFORM_GATEWAY_API_KEY": KEY},
    )
    worst = 0.0

    async def watch_loop() -> None:  # the gateway's longest event-loop stall, read and reset at /bench/lag
        nonlocal worst
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            worst, last = max(worst, now - last - 0.005), now

    async def app(scope, receive, send):
        nonlocal worst
        if scope["type"] == "lifespan":
            asyncio.ensure_future(watch_loop())
        if scope["type"] == "http" and scope["path"] == "/bench/lag":
            body, worst = json.dumps({"max_stall": worst}).encode(), 0.0
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
            )
            await send({"type": "http.response.body", "body": body})
            return
        await gateway(scope, receive, send)

    http, loop = ("httptools", "uvloop") if server == "httptools" else ("h11", "asyncio")
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        http=http,
        loop=loop,
        log_level="warning",
        access_log=False,
        backlog=2048,
        timeout_keep_alive=30,
    )


def run_big_client(url: str, mb: int) -> None:
    """Send one body of `mb` MB of token ids (model last) when told to; print status and seconds."""
    import urllib.request

    ids = b", ".join(str(10000 + i % 90000).encode() for i in range(mb * 1024 * 1024 // 7))
    big = b'{"input": [' + ids + b'], "model": "' + BIG_MODEL.encode() + b'"}'
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.readline()  # go
    started = time.monotonic()
    request = urllib.request.Request(
        url + "/v1/embeddings", data=big, headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as r:
        r.read()
        print(json.dumps({"status": r.status, "took": time.monotonic() - started, "bytes": len(big)}), flush=True)


# --- the client -------------------------------------------------------------------------------------------


class Proc:
    def __init__(self, pid: int):
        self.pid = pid

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK

    def waited(self) -> float:
        """Seconds its threads spent runnable but waiting for a core (other processes on it)."""
        return (
            sum(int(Path(t, "schedstat").read_text().split()[1]) for t in Path(f"/proc/{self.pid}/task").iterdir())
            / 1e9
        )

    def rss_mb(self) -> tuple[float, float]:
        status = dict(line.split(":", 1) for line in Path(f"/proc/{self.pid}/status").read_text().splitlines())
        return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


async def stream_once(session, url: str, chunks: int | None = None, pad: bytes = b"") -> tuple[float, list[float], int]:
    """One streamed chat: (TTFT, arrival times of events, events)."""
    extra = f', "chunks": {chunks}' if chunks else ""
    body = b'{"stream": true' + extra.encode() + b', "messages": [{"role": "user", "content": "hi"}]' + pad
    body += b', "model": "' + MODEL.encode() + b'"}'
    sent = time.monotonic()
    async with session.post(
        url + "/v1/chat/completions",
        data=body,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    ) as r:
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {(await r.read())[:200]!r}")
        arrivals, events, ttft = [], 0, None
        async for data in r.content.iter_any():
            now = time.monotonic()
            n = data.count(b"data: ")
            if n:
                ttft = now - sent if ttft is None else ttft
                events += n
                arrivals.append(now)
    return ttft, arrivals, events


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else float("nan")


async def sustained(url: str, workers: int, seconds: float, chunks: int, warmup: float = 1.0) -> dict:
    import aiohttp

    ttfts, events, errors = [], 0, 0
    start = time.monotonic()
    stop = start + seconds
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def worker(i: int) -> None:
            nonlocal events, errors
            await asyncio.sleep(i * warmup / workers)  # ramp up over the warm-up second
            while time.monotonic() < stop:
                begun = time.monotonic()
                try:
                    ttft, _, n = await stream_once(session, url, chunks=chunks)
                except Exception:  # noqa: BLE001 - counted, not fatal
                    errors += 1
                    continue
                events += n
                if begun > start + warmup:
                    ttfts.append(ttft)

        await asyncio.gather(*(worker(i) for i in range(workers)))
    return {"ttfts": ttfts, "events": events, "errors": errors, "elapsed": time.monotonic() - start}


async def burst(url: str, n: int) -> dict:
    import aiohttp

    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=120)
    ) as session:
        results = await asyncio.gather(*(stream_once(session, url, chunks=5) for _ in range(n)), return_exceptions=True)
    ttfts = [r[0] for r in results if not isinstance(r, BaseException)]
    return {
        "ttfts": ttfts,
        "errors": n - len(ttfts),
        "events": sum(r[2] for r in results if not isinstance(r, BaseException)),
    }


async def big_body(url: str, streams: int, mb: int, interval: float, cpus: list[int]) -> dict:
    """`streams` long streams; one second in, a `mb` MB body through the same gateway, from its own process."""
    import aiohttp

    sender = await asyncio.create_subprocess_exec(
        "taskset",
        "-c",
        ",".join(map(str, cpus)),
        sys.executable,
        __file__,
        "_big",
        url,
        str(mb),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    await sender.stdout.readline()  # the body is built
    chunks = int(3.0 / interval)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=120)
    ) as session:

        async def send_big() -> dict:
            await asyncio.sleep(1.0)
            async with session.get(url + "/bench/lag") as r:
                await r.read()  # reset the gateway's stall meter
            sender.stdin.write(b"go\n")
            await sender.stdin.drain()
            result = json.loads(await sender.stdout.readline())
            async with session.get(url + "/bench/lag") as r:
                result["stall"] = (await r.json())["max_stall"]
            return result

        tasks = [stream_once(session, url, chunks=chunks) for _ in range(streams)]
        *results, big = await asyncio.gather(*tasks, send_big())
    await sender.wait()
    gaps = [b - a for _, arrivals, _ in results for a, b in itertools.pairwise(arrivals[1:])]
    return {"max_gap": max(gaps), "p99_gap": pct(gaps, 99), **big}


def ms(x: float) -> str:
    return f"{x * 1000:.1f}"


async def main_async(args) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    gateway_cpu = args.gateway_cpu if args.gateway_cpu is not None else cpus[0]
    others = [c for c in cpus if c != gateway_cpu] or cpus
    os.sched_setaffinity(0, others)
    levels = []
    for item in args.streams.split(","):
        n, _, interval = item.partition(":")
        levels.append((int(n), float(interval or args.interval)))
    load = os.getloadavg()
    print(
        f"# {os.cpu_count()} cores; gateway on core {gateway_cpu} ({args.server}), upstream + client on "
        f"{others}; load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(f"# gateway code: {args.app}")
    print(f"# upstream: TTFT {ms(args.ttft)} ms, one ~250-byte event every {ms(args.interval)} ms")
    procs = []
    try:
        for interval in sorted({i for _, i in levels} | {args.interval}):
            up_port, big_port, gw_port = free_port(), free_port(), free_port()
            me = [sys.executable, __file__]
            up = subprocess.Popen(
                [
                    "taskset",
                    "-c",
                    ",".join(map(str, others)),
                    *me,
                    "_upstream",
                    str(up_port),
                    str(args.ttft),
                    str(interval),
                    str(args.chunks),
                ]
            )
            big = subprocess.Popen(
                [
                    "taskset",
                    "-c",
                    ",".join(map(str, others)),
                    *me,
                    "_upstream",
                    str(big_port),
                    str(args.ttft),
                    str(interval),
                    str(args.chunks),
                ]
            )
            gw = subprocess.Popen(
                [
                    "taskset",
                    "-c",
                    str(gateway_cpu),
                    *me,
                    "_gateway",
                    str(gw_port),
                    f"http://127.0.0.1:{up_port},http://127.0.0.1:{big_port}",
                    args.server,
                    args.app,
                ]
            )
            procs += [up, big, gw]
            direct, gateway = f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{gw_port}"
            await wait_listening(up_port)
            await wait_listening(big_port)
            await wait_listening(gw_port)
            g = Proc(gw.pid)
            print(f"\n## interval {ms(interval)} ms; gateway RSS at start {g.rss_mb()[0]:.0f} MB")
            print(
                "| phase | streams | events/s | direct TTFT p50 / p99 ms | gateway TTFT p50 / p99 ms | "
                "added p50 / p99 ms | gateway CPU | waited for its core | CPU us/event | errors d/g |"
            )
            print("|---|---|---|---|---|---|---|---|---|---|")
            for n, level_interval in levels:
                if level_interval != interval:
                    continue
                # Every level's streams last as long (`--chunks` x `--interval`): a slower level has fewer events.
                chunks = max(1, round(args.chunks * args.interval / interval))
                d = await sustained(direct, n, args.seconds, chunks)
                c0, w0, t0 = g.cpu(), g.waited(), time.monotonic()
                v = await sustained(gateway, n, args.seconds, chunks)
                used, wall = g.cpu() - c0, time.monotonic() - t0
                report("sustained", n, d, v, used, wall, g.waited() - w0)
            if interval == args.interval:
                if args.burst:
                    d = await burst(direct, args.burst)
                    c0, w0, t0 = g.cpu(), g.waited(), time.monotonic()
                    v = await burst(gateway, args.burst)
                    report("burst", args.burst, d, v, g.cpu() - c0, time.monotonic() - t0, g.waited() - w0)
                if args.big_mb:
                    before = g.rss_mb()
                    r = await big_body(gateway, 64, args.big_mb, interval, others)
                    after = g.rss_mb()
                    print(
                        f"\nbig body: {r['bytes'] / 1e6:.1f} MB through the gateway (HTTP {r['status']}, "
                        f"{r['took']:.2f} s) during 64 streams: their largest gap {ms(r['max_gap'])} ms, "
                        f"p99 {ms(r['p99_gap'])} ms (limit 50 ms); gateway event loop's longest stall "
                        f"{ms(r['stall'])} ms; gateway RSS {before[0]:.0f} -> "
                        f"{after[0]:.0f} MB, peak {after[1]:.0f} MB"
                    )
            print(f"\ngateway RSS now {g.rss_mb()[0]:.0f} MB, peak {g.rss_mb()[1]:.0f} MB")
            for p in (gw, up, big):
                p.terminate()
                p.wait(10)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    load = os.getloadavg()
    print(f"\n# load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def report(phase: str, n: int, d: dict, v: dict, cpu: float, wall: float, waited: float) -> None:
    dp50, dp99, gp50, gp99 = pct(d["ttfts"], 50), pct(d["ttfts"], 99), pct(v["ttfts"], 50), pct(v["ttfts"], 99)
    rate = v["events"] / wall if wall else 0
    per = cpu / v["events"] * 1e6 if v["events"] else float("nan")
    print(
        f"| {phase} | {n} | {rate:,.0f} | {ms(dp50)} / {ms(dp99)} | {ms(gp50)} / {ms(gp99)} | "
        f"{ms(gp50 - dp50)} / {ms(gp99 - dp99)} | {cpu / wall * 100:.0f}% | {waited / wall * 100:.0f}% | {per:.1f} | "
        f"{d['errors']}/{v['errors']} |",
        flush=True,
    )


async def wait_listening(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_upstream":
        run_upstream(int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_big":
        run_big_client(sys.argv[2], int(sys.argv[3]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_gateway":
        run_gateway(int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="64,256,1000", help="concurrent streams per level, N or N:INTERVAL")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each sustained phase")
    parser.add_argument("--ttft", type=float, default=0.1, help="upstream seconds to the first event")
    parser.add_argument("--interval", type=float, default=0.02, help="upstream seconds between events")
    parser.add_argument("--chunks", type=int, default=50, help="events a stream")
    parser.add_argument("--burst", type=int, default=256, help="streams sent at once (0: skip)")
    parser.add_argument("--big-mb", type=int, default=30, help="MB of the big body (0: skip)")
    parser.add_argument("--server", choices=("httptools", "h11"), default="httptools")
    parser.add_argument("--gateway-cpu", type=int, default=None, help="core the gateway is pinned to")
    parser.add_argument(
        "--app",
        default=str(REPO / "renderer" / "codegen" / "gateway_app.py"),
        help="the gateway_app.py to load (to compare two versions)",
    )
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
