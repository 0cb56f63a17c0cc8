#!/usr/bin/env bash
# The start-up code every rendered module runs, proven on a GPU machine with the pinned vLLM:
#   1. every example's vLLM command line (and one with every optional flag) parses with vLLM's
#      own `serve` parser (benchmarks/check_vllm_argv.py);
#   2. standard mode: `fleetform serve --local` boots the reference deployment (eager, dummy
#      weights of Llama-3.1-8B's shape) and `fleetform test` passes against it;
#   3. snapshot mode: boot with sleep mode, warm-up, sleep, wake, `fleetform test`, and the
#      development routes stay closed to every path trick (each must not answer 200).
# Run from the repository root with vLLM importable; PART=argv|standard|snapshot|all (default all).
#
#   OUT=results/ PART=all bash benchmarks/gpu_runtime_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
. benchmarks/gpu_lib.sh
OUT=${OUT:-$(mktemp -d)}
PART=${PART:-all}
NAME=llama-3-1-8b-fp8
mkdir -p "$OUT"
trap stop_server EXIT
url="http://127.0.0.1:$PORT"
results="$OUT/runtime_check.tsv"
[[ -f $results ]] || printf 'check\tresult\n' >"$results"
record() { printf '%s\t%s\n' "$1" "$2" | tee -a "$results"; }
failures=0

if [[ $PART == argv || $PART == all ]]; then
  if python3 benchmarks/check_vllm_argv.py "$OUT" >"$OUT/argv.log" 2>&1; then
    record "vLLM's parser accepts every command line" "$(grep -c '^accepted' "$OUT/argv.log") accepted"
  else
    record "vLLM's parser accepts every command line" "FAILED: $(grep -c '^REJECTED' "$OUT/argv.log") rejected"
    failures=$((failures + 1))
  fi
fi

if [[ $PART == standard || $PART == all ]]; then
  dir=$(mktemp -d); variant "$dir" fast_boot true
  start_server "$OUT/standard.log" "$NAME" "$dir"
  if boot=$(wait_serving "$OUT/standard.log"); then
    record "standard: boot to healthy (s)" "$boot"
    if ff test "$url" "$dir" --deployment "$NAME" --auth none --max-tokens 16 --format json >"$OUT/standard-test.json"; then
      record "standard: fleetform test" passed
    else
      record "standard: fleetform test" FAILED; failures=$((failures + 1))
    fi
  else
    record "standard: boot" FAILED; failures=$((failures + 1))
  fi
  stop_server
fi

if [[ $PART == snapshot || $PART == all ]]; then
  dir=$(mktemp -d); variant "$dir" cold_start snapshot
  log=$OUT/snapshot.log
  start_server "$log" "$NAME" "$dir"
  if wait_serving "$log" >/dev/null; then
    record "snapshot: $(grep -o 'boot [0-9.]* s, warm-up [0-9.]* s, sleep [0-9.]* s' "$log")" ok
    record "snapshot: $(grep -o 'awake after [0-9.]* s' "$log")" ok
    if ff test "$url" "$dir" --deployment "$NAME" --auth none --max-tokens 16 --format json >"$OUT/snapshot-test.json"; then
      record "snapshot: fleetform test after wake" passed
    else
      record "snapshot: fleetform test after wake" FAILED; failures=$((failures + 1))
    fi
    record "snapshot: GET /v1/models" "$(curl -s -o /dev/null -w '%{http_code}' "$url/v1/models")"
    for path in /sleep?level=1 /wake_up //sleep /./sleep /v1/../sleep /v1/%2e%2e/sleep /%73leep /sleep/ \
                /collective_rpc /v1/..%2fsleep /health/../sleep; do
      code=$(curl -s -o /dev/null -w '%{http_code}' --path-as-is -X POST "$url$path")
      record "snapshot: POST $path from outside" "$code"
      [[ $code == 200 ]] && failures=$((failures + 1))
    done
    record "snapshot: still serving after the probes" "$(curl -s -o /dev/null -w '%{http_code}' "$url/v1/models")"
  else
    record "snapshot: boot" FAILED; failures=$((failures + 1))
  fi
  stop_server
fi

record "failures" "$failures"
exit $((failures > 0))
