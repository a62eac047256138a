#!/usr/bin/env bash
# The main job on the embedded model (run by `make demo`; expects .venv/bin on PATH):
# the quickstart study, which ends by printing its results table, findings and report path.
set -euo pipefail
OUT="${OUT:-runs}"
echo "== the embedded SmolLM2-135M-Instruct answers"
loralab generate "What is the capital of France?" --max-new-tokens 24
echo "== quickstart study: sport data as raw text vs Q&A vs IFD-selected Q&A vs trigger-token Q&A"
loralab study studies/quickstart.yaml --out "$OUT"
