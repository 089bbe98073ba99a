# kubedistill: `make demo` runs the engine end to end on the built-in demo data; `make test` runs the suite.
# Both create .venv and install what they need (CPU torch first, then the package with its extras).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
KD := $(VENV)/bin/kubedistill
STAMP := $(VENV)/.installed-stamp
TORCH_VERSION ?= 2.13.0
DEMO_DIR ?= datasets/demo
DEMO_EPOCHS ?= 25

.PHONY: install lint test test-fast demo benchmark clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

lint: install
	$(VENV)/bin/ruff check src tests

test: install lint
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow"

demo: install
	$(KD) data synth $(DEMO_DIR) --train 240 --val 60 --imgsz 160 --classes 3 --min-size 8 --seed 0
	$(KD) train data=$(DEMO_DIR)/data.yaml model=yolo-n epochs=$(DEMO_EPOCHS) imgsz=160 batch=16 nbs=16 \
		optimizer=AdamW lr0=0.004 warmup_epochs=1 close_mosaic=5 workers=2 project=runs name=demo exist_ok=True
	$(KD) val --weights runs/demo/weights/best.pt --data $(DEMO_DIR)/data.yaml --out runs/demo/val_metrics.json
	$(KD) predict --weights runs/demo/weights/best.pt --source $(DEMO_DIR)/images/val --out runs/demo/preds.json --save-images
	$(KD) export --weights runs/demo/weights/best.pt --format onnx --out runs/demo/weights/best.onnx

benchmark: install
	$(KD) benchmark train --scales n,s,m,l --imgsz 320,640

clean:
	rm -rf runs $(DEMO_DIR) .pytest_cache
