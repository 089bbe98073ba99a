# kubedistill: `make demo` runs the training pipeline end to end on the built-in demo data; `make test` runs the suite.
# Both create .venv and install what they need (CPU torch first, then the package with its extras).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
KD := $(VENV)/bin/kubedistill
STAMP := $(VENV)/.installed-stamp
TORCH_VERSION ?= 2.13.0
DEMO_OUT ?= runs/pipeline

.PHONY: install lint test test-fast demo benchmark images clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

lint: install
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

test: install lint
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow"

# The whole pipeline on the built-in demo data, run here through kfp.local (docs/pipeline.md):
# data -> teacher (yolo-s) -> distilled student (yolo-n) -> evaluate -> register in MLflow -> promotion gate.
demo: install
	$(KD) run --out $(DEMO_OUT)

benchmark: install
	$(KD) benchmark train --scales n,s,m,l --imgsz 320,640

# Container images (needs docker); their references come from charts/kubedistill/values.yaml (docs/deploy.md).
images: install
	docker build -f docker/Dockerfile.serve -t "$$($(PY) -m kubedistill.images serve)" .
	docker build -f docker/Dockerfile.train --build-arg TORCH_VERSION=$(TORCH_VERSION) --build-arg GIT_COMMIT="$$(git rev-parse HEAD)" -t "$$($(PY) -m kubedistill.images train)" .

clean:
	rm -rf runs .pytest_cache
