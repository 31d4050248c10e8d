# One command per job, each doing its own set-up (a virtual environment in .venv).
#   make demo   train -> export (FP32, FP16, INT8) -> translate with the fastest verified model
#   make test   the test suite (what CI runs)
#   make bench  the throughput suite (benchmarks/, never part of `make test`)
VENV    ?= .venv
PY      := $(VENV)/bin/python
BIN     := $(VENV)/bin
P2P_DATA ?= $(abspath ../shared/datasets)
export P2P_DATA

.PHONY: setup chromium demo demo-full test bench clean

setup: $(VENV)/.installed

# torch is pinned to the CPU wheel that lies on this machine's disk: an unpinned `torch`
# would pull a multi-GB CUDA build. onnxruntime comes from exactly one extra (cpu here).
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[train,cpu,dev,process,serve,openvino,int8,tiff,video,geo,bench]'
	touch $@

# The browser test drives Debian's chromium (never a downloaded browser); install it when
# this machine can (root + apt), else that one test skips and says why.
chromium:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		(apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || \
		echo "chromium not installed: the browser test will skip"; }

test: setup chromium
	$(BIN)/pytest -q

bench: setup
	mkdir -p .benchmarks
	$(BIN)/pytest benchmarks/ --benchmark-only --benchmark-json=.benchmarks/latest.json
	$(PY) benchmarks/report.py .benchmarks/latest.json

DEMO_STEPS ?= 1000
demo: setup
	$(BIN)/p2p-train --data facades --direction BtoA --max-steps $(DEMO_STEPS) \
		--sample-every 250 --save-every 500 --snapshot-every 0 --output runs/facades-demo --overwrite
	$(BIN)/p2p-export runs/facades-demo --fp16 --int8
	# --model <run folder>: the fastest verified export (INT8 where it runs natively), said out
	# loud on the first lines, with the precision chosen (auto) and why.
	$(BIN)/p2p-translate $(P2P_DATA)/facades/val --model runs/facades-demo \
		--output runs/facades-demo/val-translated --html --overwrite
	$(BIN)/p2p-eval runs/facades-demo/val-translated --targets-from $(P2P_DATA)/facades/val \
		--direction BtoA --json runs/facades-demo/val-metrics.json

# The paper's schedule: 200 epochs of 400 images (80,000 steps; about 12 h on this CPU).
demo-full: setup
	$(BIN)/p2p-train --data facades --direction BtoA --epochs 100 --epochs-decay 100 \
		--output runs/facades
	$(BIN)/p2p-export runs/facades --fp16 --int8
	$(BIN)/p2p-translate $(P2P_DATA)/facades/val --model runs/facades \
		--output runs/facades/val-translated --html --overwrite

clean:
	rm -rf runs .benchmarks .pytest_cache
