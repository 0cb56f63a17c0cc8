#!/usr/bin/env bash
# What the first request to a LoRA adapter costs, and what the warm-up before ready saves, on a GPU
# machine with dummy weights of Llama-3.1-8B's shape and a random rank-16 adapter on every attention
# and MLP projection:
#   before: vLLM started directly with the deployment's own command line (`serve --print-argv`) and
#           called as soon as /health answers, which is what a container did before the warm-up;
#   after:  `fleetform serve --local`, the start-up code the Modal app runs (warm-up included).
# Each: time to first token of the first adapter request, then of a second one; then output tok/s at
# concurrency 8 for the base model and for the adapter on the same server (what LoRA costs).
# MODE=graphs (the reference deployment: CUDA graphs) or eager (fast_boot). Run from the repository
# root with vLLM importable:
#
#   OUT=results/ MODE=eager bash benchmarks/lora_warmup.sh
set -uo pipefail
cd "$(dirname "$0")/.."
. benchmarks/gpu_lib.sh
OUT=${OUT:-$(mktemp -d)}
MODE=${MODE:-graphs}
NAME=llama-3-1-8b-fp8
REV=5a1e5a1e5a1e5a1e5a1e5a1e5a1e5a1e5a1e5a1e
LORA_DIR=$HOME/.cache/fleetform/lora  # where `serve --local` keeps adapters
N8=${N8:-64}
mkdir -p "$OUT"
trap 'stop_server; [[ -n ${DIRECT_PID:-} ]] && kill "$DIRECT_PID" 2>/dev/null; true' EXIT
url="http://127.0.0.1:$PORT"
results="$OUT/lora_warmup.tsv"
[[ -f $results ]] || printf 'run\tvalue\tunit\n' >"$results"
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" | tee -a "$results"; }

# The deployment: the reference one with an adapter `sql` (pinned; already in the local adapter
# folder with its revision marker, so nothing is fetched) and fast_boot per MODE.
dir=$(mktemp -d)
variant "$dir" fast_boot "$([[ $MODE == eager ]] && echo true || echo false)"
python3 - "$dir/$NAME.yaml" "$REV" <<'PY'
import sys, yaml
path, rev = sys.argv[1:]
data = yaml.safe_load(open(path))
data["model"]["lora_adapters"] = [{"name": "sql", "id": "org/sql-lora", "revision": rev}]
data["model"]["max_lora_rank"] = 16
open(path, "w").write(yaml.safe_dump(data, sort_keys=False))
PY
adapter="$LORA_DIR/sql-${REV:0:12}"
mkdir -p "$adapter"
python3 - "$adapter" "$MODEL_DIR/config.json" <<'PY'
import json, sys, torch
from safetensors.torch import save_file
out, config = sys.argv[1], json.load(open(sys.argv[2]))
h, inter, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
kv = h // config["num_attention_heads"] * config.get("num_key_value_heads", config["num_attention_heads"])
shapes = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
          "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}
r, g, tensors = 16, torch.Generator().manual_seed(0), {}
for i in range(layers):
    for module, (fan_in, fan_out) in shapes.items():
        block = "self_attn" if module.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
        base = f"base_model.model.model.layers.{i}.{block}.{module}"
        tensors[f"{base}.lora_A.weight"] = (torch.randn(r, fan_in, generator=g) * 0.01).to(torch.bfloat16)
        tensors[f"{base}.lora_B.weight"] = (torch.randn(fan_out, r, generator=g) * 0.01).to(torch.bfloat16)
save_file(tensors, f"{out}/adapter_model.safetensors")
json.dump({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 32, "lora_dropout": 0.0,
           "target_modules": list(shapes), "bias": "none", "base_model_name_or_path": "dummy",
           "fan_in_fan_out": False, "modules_to_save": None}, open(f"{out}/adapter_config.json", "w"))
PY
echo "$REV" >"$adapter/.fleetform-revision"

ttft() {  # ttft MODEL : seconds to the first streamed token of one short chat request
  python3 - "$url" "$1" <<'PY'
import json, sys, time, urllib.request
url, model = sys.argv[1:]
body = {"model": model, "stream": True, "max_tokens": 16, "messages": [{"role": "user", "content": "List three SQL joins."}]}
req = urllib.request.Request(url + "/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
t0 = time.monotonic()
with urllib.request.urlopen(req, timeout=600) as resp:
    for line in resp:
        if line.startswith(b"data: ") and b'"content"' in line:
            print(f"{time.monotonic() - t0:.3f}")
            break
PY
}

tok_s() {  # tok_s MODEL LABEL : output tok/s at concurrency 8 (512 in, 128 out)
  ff bench "$url" --model "$1" --concurrency 8 --num-requests "$N8" --input-len 512 --output-len 128 \
     --ignore-eos --output "$OUT/$2.json" --format json >/dev/null 2>"$OUT/$2.log"
  python3 -c "import json,sys; print(f\"{json.load(open(sys.argv[1]))['results'][0]['output_throughput']:.0f}\")" \
    "$OUT/$2.json"
}

# before: the bare command line, called once /health answers
read -ra argv < <(ff serve "$NAME" "$dir" --local --print-argv --model-path "$MODEL_DIR" --load-format dummy \
  --port "$PORT" --vllm "$VLLM")
"${argv[@]}" >"$OUT/before-$MODE.log" 2>&1 &
DIRECT_PID=$!
t0=$SECONDS
until python3 -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" "$url/health" 2>/dev/null; do
  kill -0 "$DIRECT_PID" 2>/dev/null || { tail -30 "$OUT/before-$MODE.log"; exit 1; }
  ((SECONDS - t0 > BOOT_TIMEOUT)) && { echo "no health" >&2; exit 1; }
  sleep 0.5
done
record "$MODE before: first adapter request TTFT" "$(ttft sql)" s
record "$MODE before: second adapter request TTFT" "$(ttft sql)" s
grep -i "jit compilation" "$OUT/before-$MODE.log" | head -3 | cut -c1-300
kill -INT "$DIRECT_PID"; wait "$DIRECT_PID" 2>/dev/null; DIRECT_PID=

# after: fleetform's start-up (boot, then one short request per served name and adapter)
start_server "$OUT/after-$MODE.log" "$NAME" "$dir"
if boot=$(wait_serving "$OUT/after-$MODE.log"); then
  record "$MODE after: healthy" "$boot" s
  grep -o "warmed up .* in [0-9.]* s" "$OUT/after-$MODE.log" | tail -1
  record "$MODE after: first adapter request TTFT" "$(ttft sql)" s
  record "$MODE after: first base request TTFT" "$(ttft llm)" s
  record "$MODE output tok/s at concurrency 8, base model" "$(tok_s llm "base-$MODE")" tok/s
  record "$MODE output tok/s at concurrency 8, adapter" "$(tok_s sql "adapter-$MODE")" tok/s
  grep -i "jit compilation" "$OUT/after-$MODE.log" | head -3 | cut -c1-300
else
  record "$MODE after: healthy" failed -
fi
stop_server
