#!/usr/bin/env bash
# End to end on a GPU machine: serve the reference deployment with its own vLLM command line
# (`fleetform serve --local`, dummy weights of Llama-3.1-8B's shape), smoke-test it with
# `fleetform test`, then load-test it with `fleetform bench` and with vLLM's `vllm bench serve`
# at the same settings (random prompts, 512 tokens in, 128 out, concurrency 1 and 64) and print
# both side by side. Run from the repository root with vLLM importable; see benchmarks/README.md.
#
#   OUT=results/ bash benchmarks/gpu_e2e.sh
set -uo pipefail
cd "$(dirname "$0")/.."
. benchmarks/gpu_lib.sh
OUT=${OUT:-$(mktemp -d)}
NAME=llama-3-1-8b-fp8
N1=${N1:-24}     # requests at concurrency 1
N64=${N64:-256}  # requests at concurrency 64
mkdir -p "$OUT"
trap stop_server EXIT

python3 -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__, torch.cuda.get_device_name(0))" \
  | tee "$OUT/device.txt"

start_server "$OUT/serve.log" "$NAME" deployments
boot=$(wait_serving "$OUT/serve.log") || exit 1
echo "boot to healthy: ${boot} s (bare machine: kernels compiled on first boot)" | tee "$OUT/boot.txt"

ff test "http://127.0.0.1:$PORT" --deployment "$NAME" --auth none --max-tokens 64 --format json >"$OUT/test.json"
echo "fleetform test exit: $?" | tee -a "$OUT/boot.txt"

url="http://127.0.0.1:$PORT"
for c in 1 64; do
  n=$([[ $c == 1 ]] && echo "$N1" || echo "$N64")
  ff bench "$url" --model llm --concurrency "$c" --num-requests "$n" --input-len 512 --output-len 128 \
     --ignore-eos --seed "$c" --output "$OUT/fleetform-c$c.json" --format json >/dev/null 2>"$OUT/fleetform-c$c.log"
  $VLLM bench serve --backend openai-chat --base-url "$url" --endpoint /v1/chat/completions --model llm \
     --tokenizer "$MODEL_DIR" --dataset-name random --random-input-len 512 --random-output-len 128 \
     --num-prompts "$n" --max-concurrency "$c" --ignore-eos --seed "$c" \
     --save-result --result-dir "$OUT" --result-filename "vllm-c$c.json" >"$OUT/vllm-c$c.log" 2>&1
done
stop_server
python3 benchmarks/compare_bench.py "$OUT" | tee "$OUT/summary.md"
