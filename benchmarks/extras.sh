# The runs behind "What structured outputs, tool-call constraints and logprobs cost" in BENCHMARKS.md.
set -e
cd /work/main
. .venv/bin/activate
LONG='{"response_format": {"type": "json_schema", "json_schema": {"name": "essay", "schema": {"type": "object", "required": ["text"], "properties": {"text": {"type": "string", "minLength": 2000}}}}}}'
RECORD='{"response_format": {"type": "json_schema", "json_schema": {"name": "record", "schema": {"type": "object", "additionalProperties": false, "required": ["name", "age", "tags"], "properties": {"name": {"type": "string", "maxLength": 40}, "age": {"type": "integer", "minimum": 0, "maximum": 120}, "tags": {"type": "array", "maxItems": 6, "items": {"type": "string", "maxLength": 12}}}}}}}'
COMMON="--spec benchmarks/cpu-30m.yaml --concurrency 32 --max-tokens 64 --prompt-tokens 16 --requests-per-client 3"
rm -rf benchmarks/results/cpu/json-schema-* benchmarks/results/cpu/logprobs-*
for share in 0 0.5 1; do
  mlxdeploy bench $COMMON --extra-body "$LONG" --extra-share $share --out benchmarks/results/cpu/json-schema-long-$share
done
for share in 0.5 1; do
  mlxdeploy bench $COMMON --extra-body "$RECORD" --extra-share $share --out benchmarks/results/cpu/json-schema-record-$share
done
LP='{"logprobs": true, "top_logprobs": 5}'
for share in 0.5 1; do
  mlxdeploy bench $COMMON --extra-body "$LP" --extra-share $share --out benchmarks/results/cpu/logprobs-top5-$share
done
