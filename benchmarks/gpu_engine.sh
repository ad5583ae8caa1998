# The GPU runs behind "An engine of its own" in BENCHMARKS.md, after gpu_phase0.sh made /root/m8b
# on the same machine: the generation loop in-process (single stream against mlx-lm's, decode
# steps, the rate with arrivals), then through HTTP beside mlx_lm.server. Writes under $OUT.
#   bash benchmarks/gpu_engine.sh steps   # in-process, ~3 minutes
#   bash benchmarks/gpu_engine.sh http    # mlxdeploy bench --compare, ~6 minutes
set -e
export PYTHONPATH=/tmp/site:$PWD
case "$1" in
steps)
  python3 benchmarks/engine_steps.py /root/m8b --batch 1 64 128 --churn 64 128 \
    2>&1 | tee "$OUT/engine-steps.txt"
  MLX_MAX_OPS_PER_BUFFER=400 MLX_MAX_MB_PER_BUFFER=1000 python3 benchmarks/engine_steps.py \
    /root/m8b --batch 1 64 2>&1 | tee "$OUT/engine-steps-buffers.txt"
  ;;
http)
  python3 -m mlxdeploy bench --spec benchmarks/gpu-8b.yaml --compare --concurrency 1,64,128 \
    --max-tokens 128 --prompt-tokens 128 --requests-per-client 2 --out "$OUT/bench" \
    2>&1 | tail -40 | tee "$OUT/bench.txt"
  ;;
esac
