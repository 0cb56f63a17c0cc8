#!/usr/bin/env bash
# Cold starts of the reference deployment on a GPU machine, measured through fleetform's own
# start-up code (`fleetform serve --local`, dummy weights of Llama-3.1-8B's shape):
#   (a) boot to the first healthy response, eager (fast_boot) and CUDA graphs, each with an empty
#       and with a warm vLLM cache directory (what the `vllm-cache` Volume keeps between containers;
#       torch inductor and triton caches start empty each boot, as in a fresh container);
#   (b) cold_start: snapshot's sequence: boot with sleep mode, warm up, sleep (level 1), wake,
#       and the time to first token after waking;
#   (c) output tokens/s at concurrency 1 and 64 for eager and for graphs (512 in, 128 out).
# Run from the repository root with vLLM importable; PART=eager|graphs|snapshot|all (default all).
#
#   OUT=results/ PART=all bash benchmarks/cold_start.sh
set -uo pipefail
cd "$(dirname "$0")/.."
. benchmarks/gpu_lib.sh
OUT=${OUT:-$(mktemp -d)}
PART=${PART:-all}
NAME=llama-3-1-8b-fp8
N1=${N1:-16}
N64=${N64:-192}
mkdir -p "$OUT"
trap stop_server EXIT
url="http://127.0.0.1:$PORT"
results="$OUT/cold_start.tsv"
[[ -f $results ]] || printf 'run\tvalue\tunit\n' >"$results"
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" | tee -a "$results"; }

fresh_compile_caches() {  # what a new container starts with, besides the Volume
  export TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) TRITON_CACHE_DIR=$(mktemp -d)
}

tok_s() {  # tok_s CONCURRENCY N LABEL
  ff bench "$url" --model llm --concurrency "$1" --num-requests "$2" --input-len 512 --output-len 128 \
     --ignore-eos --output "$OUT/$3-c$1.json" --format json >/dev/null 2>"$OUT/$3-c$1.log"
  python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['results'][0]; print(f\"{r['output_throughput']:.0f}\")" \
    "$OUT/$3-c$1.json"
}

boots() {  # boots MODE FAST_BOOT
  local mode=$1 fast=$2 dir cache
  dir=$(mktemp -d); variant "$dir" fast_boot "$fast"
  cache=$(mktemp -d)  # the vLLM cache directory: empty for the first boot, kept for the second
  for state in empty warm; do
    fresh_compile_caches
    VLLM_CACHE_ROOT=$cache start_server "$OUT/$mode-$state.log" "$NAME" "$dir"
    if boot=$(wait_serving "$OUT/$mode-$state.log"); then
      record "boot $mode, $state vLLM cache" "$boot" s
      if [[ $state == warm ]]; then
        record "output tok/s $mode, concurrency 1" "$(tok_s 1 "$N1" "$mode")" tok/s
        record "output tok/s $mode, concurrency 64" "$(tok_s 64 "$N64" "$mode")" tok/s
      fi
    else
      record "boot $mode, $state vLLM cache" failed -
    fi
    stop_server
  done
}

snapshot() {
  local dir cache log=$OUT/snapshot.log
  dir=$(mktemp -d); variant "$dir" cold_start snapshot
  cache=$(mktemp -d)
  fresh_compile_caches
  VLLM_CACHE_ROOT=$cache start_server "$log" "$NAME" "$dir"
  if ! wait_serving "$log" >/dev/null; then record "snapshot boot" failed -; stop_server; return; fi
  record "snapshot: boot with sleep mode to healthy" "$(grep -o 'healthy after [0-9.]*' "$log" | grep -o '[0-9.]*$')" s
  local line; line=$(grep -o 'boot [0-9.]* s, warm-up [0-9.]* s, sleep [0-9.]* s' "$log")
  record "snapshot: warm-up (3 requests)" "$(sed -E 's/.*warm-up ([0-9.]+) s.*/\1/' <<<"$line")" s
  record "snapshot: sleep level 1" "$(sed -E 's/.*sleep ([0-9.]+) s.*/\1/' <<<"$line")" s
  record "snapshot: wake_up" "$(grep -o 'awake after [0-9.]*' "$log" | grep -o '[0-9.]*$')" s
  ff test "$url" "$dir" --deployment "$NAME" --auth none --max-tokens 16 --format json >"$OUT/snapshot-test.json"
  record "snapshot: TTFT of first streamed chat after wake" "$(python3 -c "
import json,sys; steps=json.load(open(sys.argv[1]))['steps']
s=[x for x in steps if x['name'].startswith('stream')][0]; print(round(s['ttft_s']*1000,1) if s.get('ttft_s') is not None else s)
" "$OUT/snapshot-test.json")" ms
  # the dev routes sleep mode opens must be closed to callers without the container's token
  record "snapshot: POST /sleep from outside" "$(curl -s -o /dev/null -w '%{http_code}' -X POST "$url/sleep?level=1")" http
  record "snapshot: POST /collective_rpc from outside" "$(curl -s -o /dev/null -w '%{http_code}' -X POST "$url/collective_rpc")" http
  stop_server
}

case $PART in
  eager) boots eager true ;;
  graphs) boots graphs false ;;
  snapshot) snapshot ;;
  all) boots eager true; boots graphs false; snapshot ;;
esac
(command -v column >/dev/null && column -t -s $'\t' "$results") || cat "$results"
