# Shared by gpu_e2e.sh and cold_start.sh: start `fleetform serve --local` and wait for it.
# Needs: vLLM importable by python3 (PYTHONPATH), run from the repository root.

VLLM=${VLLM:-"python3 -m vllm.entrypoints.cli.main"}
MODEL_DIR=${MODEL_DIR:-/tmp/dummy-llama-8b}
PORT=${PORT:-8000}
BOOT_TIMEOUT=${BOOT_TIMEOUT:-420}

ff() { python3 -m renderer "$@"; }

# start_server LOG NAME PATHS... : serve deployment NAME from PATHS in the background; sets SERVER_PID
start_server() {
  local log=$1 name=$2; shift 2
  python3 -m renderer serve "$name" "$@" --local --model-path "$MODEL_DIR" --load-format dummy --port "$PORT" \
     --vllm "$VLLM" --startup-timeout "$BOOT_TIMEOUT" >"$log" 2>&1 &
  SERVER_PID=$!
}

# wait_serving LOG : wait until fleetform says it is serving; prints the boot seconds (or fails)
wait_serving() {
  local log=$1 deadline=$((SECONDS + BOOT_TIMEOUT + 30))
  while ((SECONDS < deadline)); do
    if grep -q "serving .* at http" "$log"; then
      grep -o "healthy after [0-9.]* s" "$log" | tail -1 | grep -o "[0-9.]*"
      return 0
    fi
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "server exited; last lines:" >&2; tail -30 "$log" >&2; return 1; }
    sleep 1
  done
  echo "server did not become healthy in time" >&2
  return 1
}

stop_server() {
  if [[ -n "${SERVER_PID:-}" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -INT "$SERVER_PID"
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=
}

# variant DIR KEY VALUE... : a copy of the reference deployment with engine settings changed
variant() {
  local dir=$1; shift
  mkdir -p "$dir"
  cp deployments/fleet.yaml "$dir/"
  python3 - "$dir" "$@" <<'PY'
import sys, yaml
dest, pairs = sys.argv[1], sys.argv[2:]
data = yaml.safe_load(open("deployments/llama-3-1-8b-fp8.yaml"))
data.pop("environments", None)
for key, value in zip(pairs[::2], pairs[1::2]):
    data["engine"][key] = yaml.safe_load(value)
open(f"{dest}/llama-3-1-8b-fp8.yaml", "w").write(yaml.safe_dump(data, sort_keys=False))
PY
}
