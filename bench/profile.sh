#!/usr/bin/env bash
# Where the Q4_K_M time goes, for q35's pass and llama.cpp's quantize step (Linux `perf`, sampled):
# CPU share per shared library and the top functions. Run `make bench` first (it makes the checkpoint
# and shows the BF16 GGUF route); this needs a BF16 GGUF of the same checkpoint as llama.cpp's input.
#   bench/profile.sh [BF16.gguf]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
CKPT=.cache/bench/bench-moe
BF16=${1:-.cache/bench/bench-moe-BF16.gguf}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
command -v perf >/dev/null || { echo "profile.sh: needs Linux perf" >&2; exit 1; }
[ -f "$BF16" ] || $PY -m q35local.cli quantize "$CKPT" -o "$BF16" --quant BF16 --no-mmproj >/dev/null

report() {  # $1 label, $2 perf data
  echo "== $1"
  # (head closes the pipe early: not a failure)
  perf report -i "$2" --sort dso --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -6 || true
  perf report -i "$2" --sort dso,sym --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -4 || true
}
perf record -q -F 199 -o "$OUT/q35.data" $PY -m q35local.cli quantize "$CKPT" -o "$OUT/q35.gguf" \
  --quant Q4_K_M >/dev/null 2>&1
report "q35 quantize --quant Q4_K_M" "$OUT/q35.data"
perf record -q -F 199 -o "$OUT/llama.data" $PY -c \
  "import sys; from bench.llamaquant import llama_quantize as q; q(sys.argv[1], sys.argv[2], 'Q4_K_M')" \
  "$BF16" "$OUT/llama.gguf" >/dev/null 2>&1
report "llama_model_quantize BF16 -> Q4_K_M" "$OUT/llama.data"
