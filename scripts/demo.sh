#!/usr/bin/env bash
# The main job on the embedded model (run by `make demo`; expects .venv/bin on PATH).
set -euo pipefail
OUT="${OUT:-runs/demo}"
mkdir -p "$OUT"
echo "== generate with the embedded SmolLM2-135M-Instruct"
loralab generate "What is the capital of France?" "Give one tip for a beginner runner." --max-new-tokens 48
echo "== per-token log-probs of a few texts (the engine every stage uses)"
python - <<'PY'
from loralab import logprobs, models
m = models.load("smollm2-135m")
pairs = [
    ("The capital of France is", " Paris."),
    ("The capital of France is", " Berlin."),
    ("In the fourth quarter, the quarterback threw a", " touchdown pass."),
    ("In the fourth quarter, the quarterback threw a", " recipe for soup."),
]
for (c, x), r in zip(pairs, logprobs.score_texts(m, pairs, top_k=1)):
    print(f"{c!r:52} {x!r:22} sum log p = {r.sum:7.2f}  mean = {r.mean:6.2f}")
PY
