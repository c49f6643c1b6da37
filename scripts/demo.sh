#!/usr/bin/env bash
# `make demo`: prune the real multilingual model (Gemma 3 270M, built once from the package index) to 2:4 on the
# built-in translation demonstrations, then show what a user came for: per-language perplexity dense vs pruned on
# held-out sentences no calibration set contains, the saved checkpoint, and decode tokens/s dense vs 2:4 here.
# Where the real model cannot be built (no package index), the built-in toy model stands in, with one line why.
#   usage: scripts/demo.sh VENV REAL_MODEL_DIR    (the Makefile passes both)
set -euo pipefail
VENV=${1:?usage: demo.sh VENV REAL_MODEL_DIR}
REAL=${2:?usage: demo.sh VENV REAL_MODEL_DIR}
TFPRUNE="$VENV/bin/tfprune"
if [ -f "$REAL/model.safetensors" ] && [ -f "$REAL/tokenizer.json" ]; then
  MODEL=$REAL
else
  echo "demo: the real model is not at $REAL and could not be built (no package index?): using the built-in toy model builtin:llama instead"
  MODEL=builtin:llama
fi
echo "== 1/3 prune $MODEL to 2:4 (wanda on translation demonstrations, then block-wise reconstruction: 16 steps"
echo "   of 2 prompts per block, and 8 steps of end-to-end distillation, to stay within minutes; the defaults, 256"
echo "   steps of 8 prompts per block and 30 distillation steps, are better and take ~1.5 hours on 2 cores)"
"$TFPRUNE" prune "$MODEL" --out demo-out --overwrite --pattern 2:4 --nsamples 32 --seqlen 256 \
  --reconstruct 16 --distill 8 --batch-size 2
"$TFPRUNE" inspect demo-out | tail -1
echo "== 2/3 perplexity per language on held-out sentences, 2:4 vs dense"
"$TFPRUNE" eval demo-out --baseline "$MODEL" --tasks "" --ppl heldout --ppl-n 24 --out demo-out-eval.json --overwrite
echo "== 3/3 decode tokens/s on this machine, dense vs 2:4 (tfprune.sparsify), bfloat16"
"$TFPRUNE" bench --device cpu --no-linear --no-crossover --no-store --e2e-model demo-out --dtypes bfloat16 \
  --prefill-tokens 64 --decode-tokens 16 --e2e-reps 2 --out demo-bench --overwrite
echo "demo: the pruned checkpoint is demo-out/ (AutoModelForCausalLM.from_pretrained loads it)"
