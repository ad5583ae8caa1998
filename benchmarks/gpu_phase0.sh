# The GPU run behind "Phase 0: a mixed step against the separate calls" in BENCHMARKS.md.
# Run on the GPU machine from the project root, after the mlx-cuda wheels are installed
# (../shared/gpu/README.md) and with the demo's tokenizer files in $TOK (default .gputok/);
# writes JSON and a log under $OUT.
set -e
export PYTHONPATH=/tmp/site:$PWD
[ -d /root/m8b ] || python3 benchmarks/make_model.py /root/m8b --preset gpu-8b --tokenizer "${TOK:-.gputok}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 benchmarks/mixed_step.py /root/m8b --batch 1 8 64 --chunk 96 256 512 --context 200 \
  --repeat 10 --json "$OUT/mixed-default.json"
MLX_MAX_OPS_PER_BUFFER=400 MLX_MAX_MB_PER_BUFFER=1000 python3 benchmarks/mixed_step.py /root/m8b \
  --batch 1 64 --chunk 96 512 --context 200 --repeat 10 --json "$OUT/mixed-buffers.json"
# mlx_lm.generate's single stream, with the default command buffers and with larger ones.
for env in "" "MLX_MAX_OPS_PER_BUFFER=400 MLX_MAX_MB_PER_BUFFER=1000" \
           "MLX_MAX_OPS_PER_BUFFER=800 MLX_MAX_MB_PER_BUFFER=2000"; do
  echo "== generate ${env:-defaults}"
  env $env python3 -m mlx_lm generate --model /root/m8b --prompt "Tell me a story." \
    --max-tokens 256 --ignore-chat-template 2>&1 | grep -E "tokens-per-sec|Peak"
done | tee "$OUT/generate.txt"
