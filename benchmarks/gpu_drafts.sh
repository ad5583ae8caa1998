# The GPU run behind "Speculative decoding with an early-exit draft" in BENCHMARKS.md: an
# 8B-shaped bf16 target and its early-exit draft (its first 4 of 32 layers, benchmarks/early_exit.py),
# the engine's loop without the draft and with it (fixed and adaptive depth) at 1, 8 and 64
# streams beside mlx_lm's single stream (in-process, then `mlx_lm generate` with and without
# --draft-model), and quantized keys and values on the 8B model at 1, 8 and 32 streams. Run on the GPU machine from the project root,
# after the mlx-cuda wheels are installed (../shared/gpu/README.md) and with the demo's tokenizer
# files in $TOK (default .gputok/); writes JSON and logs under $OUT, ~15 minutes in all. One
# command of the lent machine runs 10 minutes at most, so run it in parts, back to back (what
# they write under $ROOT stays while the machine does):
#   bash benchmarks/gpu_drafts.sh pair          # the pair, ~2 minutes
#   bash benchmarks/gpu_drafts.sh speculative   # the engine and mlx_lm, 1 / 8 / 64 streams
#   bash benchmarks/gpu_drafts.sh generate      # mlx_lm's CLI, without and with the draft
#   bash benchmarks/gpu_drafts.sh kv            # the plain 8B model, quantized keys and values
# (no argument: all four).
# The same steps on a small model, to check the script where there is no GPU (a few minutes):
#   PRESET=cpu-30m LAYERS=8 DRAFT_LAYERS=2 STREAMS="1 8" KV_STREAMS="1 8" TOKENS=32 ROOT=/tmp \
#     OUT=/tmp/drafts TOK= bash benchmarks/gpu_drafts.sh
set -e
export PYTHONPATH=/tmp/site:$PWD
PRESET=${PRESET:-gpu-8b}
ROOT=${ROOT:-/root}
PAIR=$ROOT/ee-$PRESET
TOKENS=${TOKENS:-128}
SCALES=${SCALES:-0 0.2}
TOKFLAG=${TOK-.gputok}
TOKFLAG=${TOKFLAG:+--tokenizer $TOKFLAG}
PARTS=${*:-pair speculative generate kv}
part() { case " $PARTS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | tee "$OUT/gpu.txt" || true
# The pair: targets at each tail scale (0: the tail adds nothing) and the draft.
if part pair; then
  python3 benchmarks/early_exit.py "$PAIR" --preset "$PRESET" ${LAYERS:+--layers $LAYERS} \
    --draft-layers "${DRAFT_LAYERS:-4}" --tail-scale $SCALES $TOKFLAG 2>&1 | tee "$OUT/pair.txt"
fi
if part speculative; then
  python3 benchmarks/speculative.py --early-exit "$PAIR" --tail-scale $SCALES \
    --streams ${STREAMS:-1 8 64} --tokens "$TOKENS" --draft-tokens 4 --rounds 3 --mlx-lm \
    --depths fixed adaptive \
    --json "$OUT/speculative.json" 2>&1 | tee "$OUT/speculative.txt"
fi
# mlx_lm.generate's own command, single stream, without and with the draft.
if part generate; then
  for draft in "" "--draft-model $PAIR/draft --num-draft-tokens 4"; do
    echo "== generate ${draft:-no draft}"
    python3 -m mlx_lm generate --model "$PAIR/target-0" $draft --prompt "Tell me a story." \
      --max-tokens "$TOKENS" --ignore-chat-template 2>&1 | grep -E "tokens-per-sec|Peak"
  done | tee "$OUT/generate.txt"
fi
# Quantized keys and values on the plain model of the same shape (no scaled tail).
if part kv; then
  MODEL=$ROOT/m-$PRESET
  [ -d "$MODEL" ] || python3 benchmarks/make_model.py "$MODEL" --preset "$PRESET" \
    ${LAYERS:+--layers $LAYERS} $TOKFLAG
  python3 benchmarks/kv_quantization.py "$MODEL" --bits 4 8 --streams ${KV_STREAMS:-1 8 32} \
    --tokens "$TOKENS" 2>&1 | tee "$OUT/kv-quantization.txt"
fi
