#!/usr/bin/env bash
# Reproduce the paper's appendix (Tables 7-12, plus the STS of Table 1) on Llama-2-7B: PromptEOL vs PromptEOL+TP.
# Needs a GPU, access to meta-llama/Llama-2-7b-hf and the MTEB datasets on the hub. Resumable: rerun after a stop.
set -euo pipefail
OUT=${OUT:-runs}
st-tp build meta-llama/Llama-2-7b-hf --config configs/llama2-7b-prompteol.yaml    --dtype float16 --device cuda --out "$OUT/llama2-7b-prompteol"
st-tp build meta-llama/Llama-2-7b-hf --config configs/llama2-7b-prompteol-tp.yaml --dtype float16 --device cuda --out "$OUT/llama2-7b-prompteol-tp"
st-tp mteb "$OUT/llama2-7b-prompteol" "$OUT/llama2-7b-prompteol-tp" --tasks appendix --batch-size 64 --device cuda \
  --output-folder "$OUT/mteb-appendix"
# summary: $OUT/mteb-appendix/summary.md (one table per category, paper numbers beside ours)
