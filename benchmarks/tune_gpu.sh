#!/usr/bin/env bash
# `fleetform tune` on real vLLM: does the search find what a full sweep finds, for fewer requests?
# The reference deployment, served by `fleetform serve --local` with dummy weights of Llama-3.1-8B's
# shape (512 tokens in, 128 out, --ignore-eos):
#   search: `fleetform tune` against the running server, then in the same run, on the same server, a
#           sweep of `fleetform bench` at concurrency 1, 2, 4, ... 256, each level as many requests as
#           tune's rule gives it (max(ceil(K / 0.1), 2 x c) for a p90 SLO, capped by MAX_REQUESTS), every
#           level judged with tune's own judge; summary.md says whether the goal is met: tune's
#           max_concurrency within one sweep step of the sweep's best passing level, with at most half
#           the requests and half the wall time;
#   engine: `fleetform tune --local --engine max_num_seqs=...` (three values): tune starts vLLM itself
#           for each setting, searches each, names the best per GPU-dollar.
# Run from the repository root with vLLM importable; PHASE=search|engine|all (default all; each phase
# fits one 10-minute call: see benchmarks/README.md for the times). PHASE=tune runs search's tune without
# its sweep; PHASE=summary then writes summary.md from OUT's files (a tune.json and walls.tsv beside the
# sweep-*.json and sweep-walls.tsv of an earlier search), without vLLM. Offline, the script's logic runs
# against the test suite's fake vLLM:
#   VLLM="python3 tests/fake_vllm.py" FAKE_VLLM_DEFAULT_SEQS=24 FAKE_VLLM_QUEUE_MS=200 \
#     SLO="ttft_p90<=100ms" OUT=/tmp/t bash benchmarks/tune_gpu.sh
#
#   OUT=results/ PHASE=search bash benchmarks/tune_gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
. benchmarks/gpu_lib.sh
OUT=${OUT:-$(mktemp -d)}
PHASE=${PHASE:-all}
NAME=llama-3-1-8b-fp8
SLO=${SLO:-"ttft_p90<=1000ms,tpot_p90<=15ms"}  # binds between 16 and 128 in flight on one H100/H200 (512 in, 128 out)
TAIL=${TAIL:-5}                   # tune --tail-samples: p90 on 50 requests a level (10: 100, tune's default)
MAX_REQUESTS=${MAX_REQUESTS:-512}  # cap on one level's requests, tune's and the sweep's alike
LIMIT=${LIMIT:-256}               # the highest level, tune's and the sweep's
ENGINE=${ENGINE:-"max_num_seqs=32,64,128"}
RESOLUTION=${RESOLUTION:-0.1}     # tune --resolution (below 1): bisect until the levels are this share of the answer apart
START=${START:-32}                # tune's first level: the reference deployment's target_concurrency (a re-tune
                                  # from where it is; below the bound tune grows, above it shrinks); 1 is tune's
                                  # default, and levels 1 and 2 cost the most time (one or two workers in series)
ENGINE_START=${ENGINE_START:-$START}
FAST_BOOT=${FAST_BOOT:-0}         # 1: eager (engine.fast_boot: true): a few seconds less boot, half the throughput
WORKLOAD=(--input-len 512 --output-len 128 --ignore-eos)
mkdir -p "$OUT"
# The charts: HTML always; PNG too where matplotlib is importable (the device has none: draw it back here
# from the JSON with benchmarks/tune_plot.py).
plots() { echo "--plot $OUT/$1.html"; python3 -c "import matplotlib" 2>/dev/null && echo "--plot $OUT/$1.png"; }
trap stop_server EXIT
url="http://127.0.0.1:$PORT"
now() { date +%s.%N; }
since() { python3 -c "print(round($(now) - $1, 1))"; }  # seconds since a now()

paths=deployments
if [[ $FAST_BOOT == 1 ]]; then
  variant "$OUT/fleet" fast_boot true
  paths="$OUT/fleet"
fi
if [[ $PHASE != summary ]]; then
  python3 -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__, torch.cuda.get_device_name(0))" \
    >"$OUT/device.txt" 2>&1 || echo "(vLLM or torch not importable here)" >"$OUT/device.txt"
  cat "$OUT/device.txt"
  printf 'SLO\t%s\nworkload\t%s\ntail_samples\t%s\nmax_requests\t%s\nlimit\t%s\nstart\t%s\nfast_boot\t%s\nresolution\t%s\n' \
    "$SLO" "${WORKLOAD[*]}" "$TAIL" "$MAX_REQUESTS" "$LIMIT" "$START" "$FAST_BOOT" "$RESOLUTION" >"$OUT/settings.tsv"
fi

search_phase() {  # tune, then the sweep on the same server
  tune_part || return 1
  sweep_part
  stop_server
  summary
}

tune_phase() {
  tune_part || return 1
  stop_server
}

tune_part() {
  start_server "$OUT/serve.log" "$NAME" "$paths"
  boot=$(wait_serving "$OUT/serve.log") || return 1
  echo "boot to healthy: ${boot} s" | tee "$OUT/boot.txt"

  t0=$(now)
  ff tune "$url" "$paths" --deployment "$NAME" --auth none --slo "$SLO" "${WORKLOAD[@]}" --tail-samples "$TAIL" \
     --max-requests "$MAX_REQUESTS" --limit "$LIMIT" --start "$START" --resolution "$RESOLUTION" $(plots tune) \
     --format json \
     >"$OUT/tune.json" 2>"$OUT/tune.log"
  echo "tune exit: $?" | tee -a "$OUT/boot.txt"
  printf 'tune_wall_s\t%s\n' "$(since "$t0")" >"$OUT/walls.tsv"
}

sweep_part() {
  printf 'concurrency\trequests\twall_s\n' >"$OUT/sweep-walls.tsv"
  c=1
  while ((c <= LIMIT)); do
    n=$(python3 -c "from renderer.endpoint.tune import SearchConfig, parse_slo as p
print(SearchConfig(tail_samples=$TAIL, max_requests=$MAX_REQUESTS).requests_for($c, p('''$SLO''')))")
    s0=$(now)
    ff bench "$url" --model llm --concurrency "$c" --num-requests "$n" "${WORKLOAD[@]}" --seed "$c" \
       --output "$OUT/sweep-c$c.json" --format json >/dev/null 2>"$OUT/sweep-c$c.log"
    printf '%s\t%s\t%s\n' "$c" "$n" "$(since "$s0")" | tee -a "$OUT/sweep-walls.tsv"
    c=$((c * 2))
  done
}

summary() {
  python3 - "$OUT" "$SLO" <<'PY' | tee "$OUT/summary.md"
import csv, json, sys

sys.path.insert(0, "benchmarks")
from renderer.endpoint.tune import judge, parse_slo
from tune_plot import result_of

out, slo = sys.argv[1], parse_slo(sys.argv[2])
tune = json.load(open(f"{out}/tune.json"))
tune_wall = float(dict(csv.reader(open(f"{out}/walls.tsv"), delimiter="\t"))["tune_wall_s"])
rows, sweep_requests, sweep_wall, best = [], 0, 0.0, None
for line in csv.DictReader(open(f"{out}/sweep-walls.tsv"), delimiter="\t"):
    c = int(line["concurrency"])
    r = json.load(open(f"{out}/sweep-c{c}.json"))["results"][0]
    values, violations = judge(result_of(r), slo)
    issued = r["completed"] + r["failed"]
    sweep_requests += issued
    sweep_wall += float(line["wall_s"])
    if not violations:
        best = c
    rows.append((c, issued, float(line["wall_s"]), r["output_throughput"], values, violations))
with open(f"{out}/sweep.tsv", "w") as fh:
    names = [t.name for t in slo]
    fh.write("\t".join(["concurrency", "requests", "wall_s", "output_tok_s", *names, "passed"]) + "\n")
    for c, n, wall, tps, values, violations in rows:
        shown = ["" if values[k] is None else f"{values[k]:.4g}" for k in names]
        fh.write("\t".join(map(str, [c, n, f"{wall:.1f}", f"{tps:.1f}", *shown, not violations])) + "\n")
got = tune["max_concurrency"]
within = best is not None and got is not None and best / 2 <= got <= best * 2
cheaper = tune["requests"] <= 0.5 * sweep_requests
quicker = tune_wall <= 0.5 * sweep_wall
print(f"# fleetform tune against a sweep\n\nSLO `{', '.join(t['term'] for t in tune['slo'])}`, 512 in / 128 out.\n")
print("| | answer | requests | wall s |\n|---|---|---|---|")
print(f"| tune | max_concurrency {got}, target {tune['target_concurrency']}"
      f"{' (capped)' if tune['capped'] else ''}{', stopped: ' + tune['stopped'] if tune['stopped'] else ''} "
      f"| {tune['requests']} | {tune_wall:.1f} |")
print(f"| sweep 1..{rows[-1][0]} | best passing level {best} | {sweep_requests} | {sweep_wall:.1f} |\n")
print("tune's levels: " + ", ".join(f"{lv['concurrency']}{'' if lv['passed'] else ' (fail)'}" for lv in tune["levels"]))
print("sweep: " + ", ".join(f"{c}{'' if not v else ' (fail)'}" for c, _, _, _, _, v in rows) + "\n")
print(f"- within one sweep step of the sweep's best ({best}/2 <= {got} <= 2 x {best}): {'yes' if within else 'NO'}")
print(f"- at most half the requests ({tune['requests']} vs {sweep_requests}): {'yes' if cheaper else 'NO'}")
print(f"- at most half the wall time ({tune_wall:.1f} s vs {sweep_wall:.1f} s): {'yes' if quicker else 'NO'}")
print(f"- goal met: {'yes' if within and cheaper and quicker else 'NO'}")
PY
}

engine_phase() {
  t0=$(now)
  ff tune "$NAME" "$paths" --local --model-path "$MODEL_DIR" --load-format dummy --vllm "$VLLM" --port "$PORT" \
     --startup-timeout "$BOOT_TIMEOUT" --slo "$SLO" "${WORKLOAD[@]}" --tail-samples "$TAIL" \
     --max-requests "$MAX_REQUESTS" --limit "$LIMIT" --start "$ENGINE_START" --resolution "$RESOLUTION" --engine $ENGINE \
     --log-dir "$OUT/engine-logs" $(plots engine) --format json >"$OUT/engine.json" 2>"$OUT/engine.log"
  code=$?
  printf 'engine_exit\t%s\nengine_wall_s\t%s\n' "$code" "$(since "$t0")" | tee "$OUT/engine-walls.tsv"
  python3 - "$OUT" <<'PY' | tee "$OUT/engine-summary.md"
import json, sys

doc = json.load(open(f"{sys.argv[1]}/engine.json"))
if doc.get("engine") is None:
    sys.exit(f"no grid in engine.json: {doc}")
grid = doc["engine"]
print("| setting | boot s | max_concurrency | target | output tok/s at target | output tok/$ | requests | error |")
print("|---|---|---|---|---|---|---|---|")
for i, s in enumerate(grid["settings"]):
    a = s["answer"] or {}
    label = " ".join(f"{k}={v}" for k, v in s["values"].items()) + (" (best)" if i == grid["best"] else "")
    tps = (a.get("at_target") or {}).get("output_throughput")
    print(f"| {label} | {s['boot_s']} | {a.get('max_concurrency')} | {a.get('target_concurrency')} | "
          f"{'-' if tps is None else f'{tps:.1f}'} | {s['output_tokens_per_usd']} | {a.get('requests')} | {s['error'] or ''} |")
PY
}

case $PHASE in
  search) search_phase ;;
  engine) engine_phase ;;
  all) search_phase && engine_phase ;;
  tune) tune_phase ;;
  summary) summary ;;
  *) echo "PHASE is search, engine, all, tune or summary, not $PHASE" >&2; exit 2 ;;
esac
