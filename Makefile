# kubedistill: `make demo` runs the training pipeline end to end on the built-in demo data; `make test` runs the suite.
# Both create .venv and install what they need (CPU torch first, then the package with its extras).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
KD := $(VENV)/bin/kubedistill
STAMP := $(VENV)/.installed-stamp
TORCH_VERSION ?= 2.13.0
# KServe's published API models, to check the chart's InferenceService against (tests/kserve_schema.py): the
# wheel alone, without its model-server dependencies, outside site-packages
KSERVE_VERSION ?= 0.21.0
DEMO_OUT ?= runs/pipeline

.PHONY: test-hostile test-processes test-learning install lint test test-fast test-container demo demo-docker benchmark images clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps --upgrade --target $(VENV)/kserve-models kserve==$(KSERVE_VERSION)
	touch $(STAMP)

lint: install
	$(VENV)/bin/ruff check src tests docker
	$(VENV)/bin/ruff format --check src tests docker

test: install lint
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow and not container"

# Several training processes at once: torchrun "nodes" on loopback (multi-node, a killed node's restart) and kills
# at each write point of a run folder. Kept out of `make test` to hold it under 15 minutes; CI runs it as a stage.
test-processes: install
	$(PY) -m pytest -m processes tests/integration -q

# The learning test: a model trained from scratch must reach val mAP50 0.5 (about 80 s). Kept out of `make test`
# to hold it under 15 minutes; CI runs it in its second stage.
test-learning: install
	$(PY) -m pytest -m learning tests/integration -q

# The hostile-input suite alone (also part of `make test`): its table of cases tried, refused and survived
# (docs/reliability.md)
test-hostile: install
	$(PY) -m pytest tests/hostile -q

# The container tests (needs a docker engine; builds the images first, or reuses them): the serve image run as
# the chart runs it, the pipeline's steps in the train image, /dev/shm fallback (docs/deploy.md).
test-container: install
	$(PY) -m pytest -m container tests/container

# The whole pipeline on the built-in demo data, run here through kfp.local (docs/pipeline.md):
# data -> teacher (yolo-s) -> distilled student (yolo-n) -> evaluate -> register in MLflow -> promotion gate.
demo: install
	$(KD) run --out $(DEMO_OUT)

# The same demo with every step in the train image, as a cluster runs it (needs docker; builds the images).
demo-docker: images
	$(KD) run --runner docker --out $(DEMO_OUT)-docker

benchmark: install
	$(KD) benchmark train --scales n,s,m,l --imgsz 320,640

# Container images from Debian packages and PyPI only (needs a docker engine, and root or user namespaces for
# mmdebstrap): the base (docker/base-image.sh), then serve and train, tagged as charts/kubedistill/values.yaml
# says. Unchanged sources reuse the images. TORCH_INDEX=<index URL> picks where the train image's torch wheel
# comes from (docs/deploy.md).
images: install
	TORCH_VERSION=$(TORCH_VERSION) $(PY) docker/build.py

clean:
	rm -rf runs .pytest_cache
