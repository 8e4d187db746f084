# imagenet-kit: every target calls the `imagenet-kit` CLI inside .venv (created by `make setup`).
# Variables: DATA=/path/to/root (ImageFolder root with train/ and val/), NPROC=GPUs per node,
# NNODES=machines, MASTER_ADDR=node 0's address and MASTER_PORT (several nodes), MAX_RESTARTS=worker group restarts,
# RECIPE=<recipe for make full> (default full; full-24 .. full-88 for longer schedules), GPU=<profile>,
# RUN=runs/<name>, MODEL=<export folder>,
# ARGS="extra CLI flags".
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
KIT := $(VENV)/bin/imagenet-kit
PY := $(VENV)/bin/python
NPROC ?= 1
RECIPE ?= full
# Several nodes: the same `make full NNODES=2 MASTER_ADDR=<node 0's address>` on each (torchrun's c10d rendezvous).
NNODES ?= 1
MASTER_ADDR ?=
MASTER_PORT ?= 29500
# torchrun restarts the worker group this many times after a worker dies (each start resumes from the newest
# checkpoint); a stop signal is not a failure and is not restarted.
MAX_RESTARTS ?= 3
RDZV := $(if $(filter-out 1,$(NNODES)),--rdzv_backend=c10d --rdzv_endpoint=$(MASTER_ADDR):$(MASTER_PORT) --rdzv_id=$(RECIPE),--standalone)
# GPU=t4|a10g|l4|l40s|a100|h100: the GPU profile (recipes/profiles/), e.g. make full RECIPE=full-24 GPU=a10g
GPU_FLAG := $(if $(GPU),--gpu $(GPU))
# Real images the benchmarks read: BENCH_IMAGES=a folder of original ImageNet JPEGs (make bench), IMAGENETTE=the
# Imagenette 2 root (make gpu-bundle). No default: they are wherever your copies are.
BENCH_IMAGES ?=
IMAGENETTE ?=
APT_PACKAGES := libturbojpeg0-dev libopencv-dev pkg-config
STAMP := $(VENV)/.installed

.PHONY: help setup system-deps browser-deps mini full preflight demo space test test-fast lint bench gpu-evidence gpu-bundle image-check screenshots clean

help:
	@echo "make setup   create .venv and install the kit (+ FFCV's system libraries)"
	@echo "make mini    whole workflow on the embedded sample (or DATA=root with train/ val/: mini recipe)"
	@echo "make full    ImageNet recipe: DATA=/path/to/imagenet [NPROC=8] [RECIPE=full-24] [GPU=a10g]"
	@echo "             several nodes, on each: ... NNODES=2 MASTER_ADDR=<node 0> [MASTER_PORT=29500] [MAX_RESTARTS=3]"
	@echo "make preflight  the long run's settings tried on this host first: DATA=... [RECIPE=...] [GPU=...] [NPROC=N]"
	@echo "make demo    Gradio demo of the newest run's export [MODEL=runs/<name>/export]"
	@echo "make space   Hugging Face Space folder of a run's export in RUN/space [RUN=runs/<name>, default: newest]"
	@echo "make test    lint (ruff) and the test suite, one worker per core"
	@echo "make test-fast  the unit tests only (no processes started), for the edit loop"
	@echo "make image-check  build the Docker image with podman and run the demo, a recipe and a stop in it"

setup: $(STAMP)

# Re-installs only when pyproject.toml changes, so a second `make setup` takes a second.
$(STAMP): pyproject.toml | system-deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# FFCV compiles against libturbojpeg and OpenCV; pkg-config must find both.
system-deps:
	@if pkg-config --exists libturbojpeg opencv4 2>/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo"; else \
	  echo "FFCV needs system libraries. Run: sudo apt-get update && sudo apt-get install -y $(APT_PACKAGES)"; exit 1; fi; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(APT_PACKAGES)

# Without DATA: the embedded sample (sample recipe). With DATA: the 100-class mini recipe on that root.
mini: setup
	$(KIT) run --recipe $(if $(DATA),mini --data "$(DATA)",sample) $(ARGS)

# Conversion runs once, outside torchrun (it can take hours on ImageNet, longer than a collective's timeout).
# ARGS=--dry-run prints the resolved config (recipe, GPU profile, flags) and converts and trains nothing.
full: setup
	@if [ -z "$(DATA)" ]; then \
	  echo "make full needs DATA=/path/to/imagenet. ImageNet-1K (ILSVRC2012) comes from image-net.org"; \
	  echo "(registration) or Kaggle's imagenet-object-localization-challenge. DATA is read in place, one of:"; \
	  echo "  a folder with ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar and"; \
	  echo "    ILSVRC2012_validation_ground_truth.txt (devkit) or LOC_val_solution.csv (Kaggle);"; \
	  echo "  a folder with Kaggle's imagenet-object-localization-challenge.zip, or its extracted ILSVRC/ folder;"; \
	  echo "  a folder with Hugging Face's imagenet-1k shards: train_images_*.tar.gz and val_images.tar.gz;"; \
	  echo "  an ImageFolder: DATA/train/<wnid>/*.JPEG and DATA/val/<wnid>/*.JPEG"; \
	  exit 2; fi
	@if [ "$(NNODES)" != 1 ] && [ -z "$(MASTER_ADDR)" ]; then \
	  echo "make full NNODES=$(NNODES) needs MASTER_ADDR=<the address of node 0, reachable from every node>"; exit 2; fi
	@echo "make full: a long run; make preflight (same variables, a few minutes) checks first that it fits this host"
	$(if $(findstring --dry-run,$(ARGS)),,$(KIT) prepare --recipe $(RECIPE) --data "$(DATA)" $(GPU_FLAG) $(ARGS))
ifeq ($(NPROC)$(NNODES),11)
	$(KIT) run --recipe $(RECIPE) --data "$(DATA)" $(GPU_FLAG) $(ARGS)
else
	$(KIT) launch --nnodes=$(NNODES) --nproc_per_node=$(NPROC) $(RDZV) --max-restarts=$(MAX_RESTARTS) \
	  -m imagenet_kit run --recipe $(RECIPE) --data "$(DATA)" $(GPU_FLAG) $(ARGS)
endif

# The long run's settings tried on this host first (memory, data speed, page cache, disk, resume, the estimate): the
# same variables as make full; it converts the data first as make full does. Go, or exit 2 with what to change.
preflight: setup
	@if [ -z "$(DATA)" ]; then echo "make preflight needs DATA=/path/to/imagenet, as make full does"; exit 2; fi
	$(KIT) preflight --recipe $(RECIPE) --data "$(DATA)" $(GPU_FLAG) --nproc $$(( $(NPROC) )) $(ARGS)

demo: setup
	$(KIT) demo $(if $(MODEL),--model "$(MODEL)") $(ARGS)

# Without RUN the CLI takes the newest runs/*/ with export/model.json, and says what to run if there is none.
space: setup
	$(KIT) space $(if $(RUN),--run "$(RUN)") $(ARGS)

# One pytest worker per core, plus one (TEST_WORKERS=1: one process): many tests wait on the processes they start,
# on servers and on stops, and a third worker on 2 cores kept both busy (194% CPU: 7.5 min instead of 8.7; 92 s for
# test-fast instead of 111). --dist loadscope sends each test module to one worker, so that a module's shared
# fixtures (a torchrun launch, the installed kit's sample run) are built once;
# --no-loadscope-reorder keeps the modules in conftest's longest-first order (xdist would sort them by their number
# of tests, and a long module of few tests, the two-node one, then ran alone at the end).
TEST_WORKERS ?= $(shell echo $$(( $$(nproc 2>/dev/null || echo 2) + 1 )))
test: lint browser-deps
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder $(ARGS)

# The unit tier for the edit loop: no test marked slow (those start processes, build venvs or run torchrun).
test-fast: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not slow" $(ARGS)

# The demo's three tabs photographed by its browser test into docs/images/ (shown in docs/deploying.md).
screenshots: browser-deps setup
	DEMO_SCREENSHOTS=docs/images $(PY) -m pytest -q tests/test_app.py -k "browser_top_k"

# pyflakes, import order, bugbear, lines of at most 120 characters and a statement limit per function
# (pyproject.toml's [tool.ruff]).
lint: setup
	$(PY) -m ruff check imagenet_kit tests tools

# The demo's browser test drives Debian's chromium (Playwright never downloads a browser here); without it
# that one test is skipped with its reason.
browser-deps:
	@command -v chromium >/dev/null && exit 0; \
	if [ "$$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo"; else \
	  echo "chromium not installed: the browser test will be skipped (sudo apt-get install chromium)"; exit 0; fi; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium || \
	  echo "chromium could not be installed: the browser test will be skipped"

# On a GPU, bench train times the full recipe's network (resnet50 + BlurPool), the rows `plan` looks for.
bench: setup
	@if [ -z "$(BENCH_IMAGES)" ]; then echo "make bench needs BENCH_IMAGES=<a folder of original ImageNet JPEGs>"; exit 2; fi
	$(KIT) bench data --src $(BENCH_IMAGES)
	$(KIT) bench train $(if $(filter 0,$(shell $(PY) -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null)),--arch resnet50 --res 128 --batch 16,--arch resnet50 --set model.blurpool=true)
	$(KIT) bench demo
	$(KIT) bench report

# The GPU rows of the README, in about 5 minutes on one GPU. Runs with the host's own torch when there is no .venv
# (a bare GPU host: python3 -m imagenet_kit from this folder), with gpu-bundle/ when it is there (FFCV's rows).
EVIDENCE_PY := $(if $(wildcard $(PY)),$(PY),python3)
gpu-evidence:
	$(if $(wildcard gpu-bundle/manifest.json),$(EVIDENCE_PY) tools/gpu_bundle.py run gpu-bundle \
	  bench gpu-evidence --bundle gpu-bundle,$(EVIDENCE_PY) -m imagenet_kit bench gpu-evidence) $(ARGS)

# FFCV, its shared libraries and 2,600 real Imagenette images in gpu-bundle/ (ignored), for gpu-evidence on a host
# without FFCV, refused when it and the working tree are over what a device run carries (BUNDLE_MAX_MIB, 64).
BUNDLE_MAX_MIB ?= 64
gpu-bundle: setup
	@if [ -z "$(IMAGENETTE)" ]; then echo "make gpu-bundle needs IMAGENETTE=<the Imagenette 2 root (train/ val/)>"; exit 2; fi
	$(PY) tools/gpu_bundle.py build --src $(IMAGENETTE)/train --max-mib $(BUNDLE_MAX_MIB) $(ARGS)

# Builds the Dockerfile with podman on a local Debian base and runs the image for real: the import check, the
# compose train service on the embedded sample, the demo service answering from the host, a stop mid-epoch and
# the resume (tools/image_check.py). Needs root the first time (apt-get install podman runc debootstrap).
# ARGS=--no-cache times a build from scratch for the row it records in bench/results/image.jsonl.
image-check: setup
	$(PY) tools/image_check.py $(ARGS)

clean:
	rm -rf runs betons test-artifacts .pytest_cache gpu-bundle
