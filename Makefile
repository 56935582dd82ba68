# Semi-supervised COVID-19 lung-lesion segmentation on nnU-Net v1: every user-facing step.
# `make help` lists the targets and variables; README.md explains them.

SHELL := /bin/bash
.DEFAULT_GOAL := help

# ---------------------------------------------------------------- environment
PYTHON ?= python3
VENV ?= .venv
ifeq ($(strip $(VENV)),)
  # VENV= : use the environment PYTHON belongs to (it must satisfy env/requirements.txt)
  PY := $(PYTHON)
  STAMPS := .make/system
else
  VENV_DIR := $(abspath $(VENV))
  PY := $(VENV_DIR)/bin/python
  STAMPS := $(VENV_DIR)/.make
  export PATH := $(VENV_DIR)/bin:$(PATH)
  export VIRTUAL_ENV := $(VENV_DIR)
endif

# nnU-Net's own variables; set them in the environment to use other folders
export nnUNet_raw_data_base ?= $(CURDIR)/data/nnUNet_raw
export nnUNet_preprocessed ?= $(CURDIR)/data/nnUNet_preprocessed
export RESULTS_FOLDER ?= $(CURDIR)/data/nnUNet_trained_models

# ---------------------------------------------------------------- workflow settings
DATA ?=
TASK ?= 200
TASK_NAME ?= COVID_19_20
FOLD ?= 4
LABELED_FRACTION ?= 0.5
SEED ?= 0
EXTRA_UNLABELED ?=
FORCE ?=
PLANNER3D ?= ExperimentPlanner3D_v21
PLANS ?= nnUNetPlansv2.1
TRAINER ?= nnUNetTrainerV2
# empty: the trainer's own (nnUNetTrainerV2: 1000 epochs x 250 iterations, 50 validation iterations)
EPOCHS ?=
ITERS ?=
VAL_ITERS ?=
# processes: preprocessing (low/full resolution) and data augmentation during training
TL ?= 8
TF ?= 8
NPROC_DA ?=

export nnUNet_max_num_epochs := $(EPOCHS)
export nnUNet_num_batches_per_epoch := $(ITERS)
export nnUNet_num_val_batches_per_epoch := $(VAL_ITERS)
# tqdm progress bar over each epoch's iterations (nnU-Net's own switch)
export nnunet_use_progress_bar ?= 1
ifneq ($(strip $(NPROC_DA)),)
  export nnUNet_n_proc_DA := $(NPROC_DA)
endif

WORKFLOW_ARGS := --task $(TASK) --fold $(FOLD) --plans $(PLANS) --trainer $(TRAINER) $(if $(FORCE),--force)

# demo: a synthetic download, CPU-sized, in its own folder (never touches data/)
DEMO_DIR ?= $(CURDIR)/demo
DEMO_CASES ?= 20
DEMO_EPOCHS ?= 25
DEMO_ITERS ?= 25
DEMO_VAL_ITERS ?= 4

.PHONY: help setup convert preprocess baseline demo test clean-demo

help:
	@sed -n 's/^## \{0,1\}//p' $(MAKEFILE_LIST)

## Targets (variables in brackets, defaults in the Makefile):
##   setup       venv [VENV=.venv], nnUNet/ (submodule or PyPI sdist), patches, overlay, editable install
##   convert     DATA=<COVID-19-20 download> [TASK=200 TASK_NAME LABELED_FRACTION=0.5 SEED=0 EXTRA_UNLABELED= FORCE=]
##   preprocess  nnUNet_plan_and_preprocess [TASK PLANNER3D TL=8 TF=8 FORCE=]
##   baseline    3d_fullres + 3d_lowres (--npz), nnUNet_ensemble, Dice table [FOLD=4 TRAINER PLANS EPOCHS ITERS VAL_ITERS NPROC_DA]
##   demo        synthetic download -> convert -> preprocess -> baseline on the CPU [DEMO_DIR=demo]
##   test        pytest

# ---------------------------------------------------------------- setup
$(STAMPS)/requirements: env/requirements.txt env/constraints.txt
ifneq ($(strip $(VENV)),)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV_DIR)
endif
	$(PY) -m pip install --quiet -r env/requirements.txt -c env/constraints.txt
	@mkdir -p $(@D) && touch $@

nnUNet/setup.py:
	bash scripts/fetch_nnunet.sh $(PY)

$(STAMPS)/nnunet-installed: nnUNet/setup.py $(STAMPS)/requirements
	$(PY) -m pip install --quiet --no-deps -e nnUNet
	@mkdir -p $(@D) && touch $@

# the patches and the overlay are checked on every run: cheap, and stale copies never run
setup: $(STAMPS)/requirements nnUNet/setup.py
	@bash scripts/apply_patches.sh
	@$(PY) scripts/sync_overlay.py
	@$(MAKE) --no-print-directory $(STAMPS)/nnunet-installed
	@$(PY) -c "import nnunet, torch; print('setup ok: nnunet from', nnunet.__path__[0], '| torch', torch.__version__, '| CUDA' if torch.cuda.is_available() else '| CPU only')"

# ---------------------------------------------------------------- workflow
convert: setup
	@test -n "$(DATA)" || { echo "ERROR: set DATA=<folder of the COVID-19-20 download> (or run 'make demo')" >&2; exit 1; }
	$(PY) scripts/COVID_19_20.py "$(DATA)" --task-id $(TASK) --task-name $(TASK_NAME) \
		--labeled-fraction $(LABELED_FRACTION) --seed $(SEED) \
		$(if $(EXTRA_UNLABELED),--extra-unlabeled "$(EXTRA_UNLABELED)") $(if $(FORCE),--force)

preprocess: setup
	$(PY) scripts/preprocess.py --task $(TASK) --planner3d $(PLANNER3D) --plans $(PLANS) --tl $(TL) --tf $(TF) $(if $(FORCE),--force)

baseline: setup
	$(PY) scripts/baseline.py $(WORKFLOW_ARGS)

# ---------------------------------------------------------------- demo
DEMO_ENV := nnUNet_raw_data_base=$(DEMO_DIR)/nnUNet_raw nnUNet_preprocessed=$(DEMO_DIR)/nnUNet_preprocessed \
	RESULTS_FOLDER=$(DEMO_DIR)/nnUNet_trained_models
DEMO_MAKE := $(DEMO_ENV) $(MAKE) --no-print-directory PLANNER3D=ExperimentPlanner3D_v21_CPUDemo \
	PLANS=nnUNetPlans_CPUDemo EPOCHS=$(DEMO_EPOCHS) ITERS=$(DEMO_ITERS) VAL_ITERS=$(DEMO_VAL_ITERS) \
	NPROC_DA=2 TL=2 TF=2
# time one demo stage: $(call demo_stage,name,command)
demo_stage = @s=$$(date +%s); $(2) || exit 1; echo "$(1): $$(( $$(date +%s) - s )) s" | tee -a $(DEMO_DIR)/timings.txt

clean-demo:
	@if [ -d "$(DEMO_DIR)" ] && [ ! -f "$(DEMO_DIR)/.made-by-make-demo" ]; then \
		echo "ERROR: $(DEMO_DIR) was not made by 'make demo'; not deleting it" >&2; exit 1; fi
	rm -rf "$(DEMO_DIR)"

demo: setup clean-demo
	@mkdir -p $(DEMO_DIR) && touch $(DEMO_DIR)/.made-by-make-demo
	$(call demo_stage,synthetic download,$(PY) scripts/make_synthetic_covid.py $(DEMO_DIR)/download --n-train $(DEMO_CASES) --n-validation 2)
	$(call demo_stage,convert,$(DEMO_MAKE) convert DATA=$(DEMO_DIR)/download)
	$(call demo_stage,preprocess,$(DEMO_MAKE) preprocess)
	$(call demo_stage,baseline,$(DEMO_MAKE) baseline)
	@echo; echo "demo finished; stage wall times:"; cat $(DEMO_DIR)/timings.txt
	@echo "outputs: download $(DEMO_DIR)/download | raw task $(DEMO_DIR)/nnUNet_raw/nnUNet_raw_data"
	@echo "         preprocessed $(DEMO_DIR)/nnUNet_preprocessed | models, validation and ensemble $(DEMO_DIR)/nnUNet_trained_models/nnUNet"

# ---------------------------------------------------------------- tests
test: setup
	$(PY) -m pytest tests $(PYTEST_ARGS)
