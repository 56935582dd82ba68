# Semi-supervised COVID-19 lung-lesion segmentation on nnU-Net v1: every user-facing step.
# `make help` lists the targets and variables; docs/reference.md explains them.

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
# the download's layout: auto (recognised by its files), covid19_20 or mosmed (MosMed-1110)
SOURCE ?= auto
# make synthetic (DATA: the folder to write)
CASES ?= 20
VALIDATION_CASES ?= 4
SYNTHETIC_SEED ?= 0
# in-plane size and slice count ranges of the phantoms (voxels)
SYNTHETIC_XY ?= 96 128
SYNTHETIC_Z ?= 28 40
# scanner sites of the phantoms (above 1: sites.csv, per-site noise, calibration, blur, lesion contrast)
SITES ?= 1
TASK ?= 200
TASK_NAME ?= COVID_19_20
FOLD ?= 4
LABELED_FRACTION ?= 0.5
TEST_FRACTION ?= 0
SEED ?= 0
EXTRA_UNLABELED ?=
# labelled cases mostly from one site of <DATA>/sites.csv (empty: no site bias)
LABELED_SITE ?=
LABELED_SITE_SHARE ?= 0.8
FORCE ?=
PLANNER3D ?= ExperimentPlanner3D_v21
PLANS ?= nnUNetPlansv2.1
TRAINER ?= nnUNetTrainerV2
# empty: the trainer's own (nnUNetTrainerV2: 1000 epochs x 250 iterations, 50 validation iterations)
EPOCHS ?=
ITERS ?=
VAL_ITERS ?=
# epochs between model_latest checkpoints, which a re-run after a kill resumes from; empty: 5 (patch 0007)
SAVE_EVERY ?=
# training on several processes through torchrun (baseline, control, semi): processes per node (GPUs), nodes,
# this node's rank, node 0's address and port (one node: a free port when empty)
NPROC_PER_NODE ?= 1
NNODES ?= 1
NODE_RANK ?= 0
MASTER_ADDR ?= 127.0.0.1
MASTER_PORT ?=
# fine-tuning from the baseline: the MoE (make semi) and its same-budget control (make control); empty: 1e-2
FINETUNE_LR ?=
CONTROL_TRAINER ?= nnUNetTrainerV2_finetune
# the mixture of experts (make weights / semi; empty: the trainer's defaults, see docs/reference.md)
# ROUTING=site: the site oracle, nnUNetTrainerV2_moe_site (each training case to its site's expert; needs sites.csv)
ROUTING ?= gate
MOE_TRAINER ?= $(if $(filter site,$(ROUTING)),nnUNetTrainerV2_moe_site,nnUNetTrainerV2_moe)
EXPERTS ?=
TOP_K ?=
INFERENCE_TOP_K ?=
LAMBDA_MAX ?=
# the unlabelled term (empty: 0.95, the default strengths; see docs/reference.md); its kind is the trainer's
# (MOE_TRAINER=nnUNetTrainerV2_moe_cps for cross pseudo-supervision; CONSISTENCY is only checked against it)
CONSISTENCY ?=
CONFIDENCE_THRESHOLD ?=
PERTURBATION ?=
WARMUP_EPOCHS ?=
RAMPUP_EPOCHS ?=
BALANCE_ALPHA ?=
# the gate (empty: stem, 0.05; see docs/reference.md), the usage it is balanced over (decay 0.9) and the supervised loss
GATE_FEATURES ?=
GATE_NOISE ?=
BALANCE_DECAY ?=
SUPERVISED_LOSS ?=
TRANSFER_NOISE ?=
TRANSFER_REINIT ?=
# make selftrain (empty: 1 round, drop cases below 0.8 confidence) and make meanteacher (empty: decay 0.99)
SELFTRAIN_ROUNDS ?=
SELFTRAIN_THRESHOLD ?=
EMA_DECAY ?=
# make predict
INPUT ?=
OUTPUT ?=
MODEL ?= moe
# make export / make import: the model's zip file
ZIP ?=
# make gradcam (LAYER empty: the documented default)
LAYER ?=
BACKEND ?= gcam
# make experiment (TEST_FRACTION=0 means its default, 0.2; empty budgets: SIZE's)
LABELED_FRACTIONS ?= 0.1 0.25 0.5
SEEDS ?= 0 1
EXPERIMENT_DIR ?= experiment
METHODS ?= fullres control selftrain meanteacher moe
# PRESET=multisite: labelled cases mostly from site A, unlabelled pool and test set from all sites
PRESET ?=
SIZE ?= gpu
# GPU ids: make experiment runs independent runs in parallel, one per GPU; make predict splits its inputs over them
GPUS ?=
FINETUNE_EPOCHS ?=
# make experiment SCHEDULER=slurm: one sbatch job per run and method (docs/cluster.md); WAIT=1 waits for them.
# Empty SLURM_* options: the cluster's defaults (SLURM_GPUS_PER_JOB empty: 1 for SIZE=gpu, 0 for SIZE=cpu);
# SLURM_OPTIONS: any other sbatch options, e.g. SLURM_OPTIONS="--qos=long --mem=64G"
SCHEDULER ?= local
WAIT ?=
SLURM_PARTITION ?=
SLURM_GPUS_PER_JOB ?=
SLURM_TIME ?=
SLURM_ACCOUNT ?=
SLURM_OPTIONS ?=
# make evaluate EXTERNAL=<folder>: an external labelled test set, its name (empty: the folder's) and, for an
# images/ + labels/ folder, the label values that are lesion
EXTERNAL ?=
EXTERNAL_NAME ?=
LESION_LABELS ?= 1
# make report
REPORT_DIR ?= report
NSD_TOLERANCE_MM ?= 1.0
# test-time augmentation by mirroring (nnU-Net's default); TTA=0 is 8x faster in 3D
TTA ?= 1
# processes: preprocessing (low/full resolution) and data augmentation during training
TL ?= 8
TF ?= 8
NPROC_DA ?=

export nnUNet_max_num_epochs := $(EPOCHS)
export nnUNet_num_batches_per_epoch := $(ITERS)
export nnUNet_num_val_batches_per_epoch := $(VAL_ITERS)
export nnUNet_save_every := $(SAVE_EVERY)
# tqdm progress bar over each epoch's iterations (nnU-Net's own switch)
export nnunet_use_progress_bar ?= 1
ifneq ($(strip $(NPROC_DA)),)
  export nnUNet_n_proc_DA := $(NPROC_DA)
endif

# the trainers' settings (nnunet/training/settings.py reads them; each model records them in its settings.json)
export FINETUNE_LR := $(FINETUNE_LR)
export MOE_NUM_EXPERTS := $(EXPERTS)
export MOE_TOP_K := $(TOP_K)
export MOE_INFERENCE_TOP_K := $(INFERENCE_TOP_K)
export MOE_BALANCE_ALPHA := $(BALANCE_ALPHA)
export MOE_BALANCE_DECAY := $(BALANCE_DECAY)
export MOE_GATE_FEATURES := $(GATE_FEATURES)
export MOE_GATE_NOISE := $(GATE_NOISE)
export MOE_SUPERVISED_LOSS := $(SUPERVISED_LOSS)
export MOE_TRANSFER_NOISE := $(TRANSFER_NOISE)
export MOE_TRANSFER_REINIT := $(TRANSFER_REINIT)
export CONSISTENCY_LAMBDA_MAX := $(LAMBDA_MAX)
export CONSISTENCY_WARMUP_EPOCHS := $(WARMUP_EPOCHS)
export CONSISTENCY_RAMPUP_EPOCHS := $(RAMPUP_EPOCHS)
export CONSISTENCY_THRESHOLD := $(CONFIDENCE_THRESHOLD)
export PERTURBATION := $(PERTURBATION)
export SELFTRAIN_ROUNDS := $(SELFTRAIN_ROUNDS)
export SELFTRAIN_THRESHOLD := $(SELFTRAIN_THRESHOLD)
export MT_EMA_DECAY := $(EMA_DECAY)
ifneq ($(strip $(CONSISTENCY)),)
  export CONSISTENCY := $(CONSISTENCY)
endif

WORKFLOW_ARGS := --task $(TASK) --fold $(FOLD) --plans $(PLANS) --trainer $(TRAINER) $(if $(FORCE),--force)

# extra arguments of pytest for make test / test-fast (CI: -v --durations=15)
PYTEST_ARGS ?=

# demo: a synthetic download, CPU-sized, in its own folder (never touches data/)
DEMO_DIR ?= $(CURDIR)/demo
# 40 smaller phantoms, 30% of them held out: at least 8 test cases with a lesion
DEMO_CASES ?= 40
DEMO_TEST_FRACTION ?= 0.3
DEMO_EPOCHS ?= 25
DEMO_ITERS ?= 25
DEMO_VAL_ITERS ?= 4
DEMO_SEMI_EPOCHS ?= 10
DEMO_WARMUP_EPOCHS ?= 2
DEMO_RAMPUP_EPOCHS ?= 5

.PHONY: help setup synthetic convert preprocess baseline control selftrain meanteacher weights semi evaluate predict \
	gradcam report export import \
	experiment slurm-local slurm-local-stop demo test test-fast lint clean-demo

help:
	@sed -n 's/^## \{0,1\}//p' $(MAKEFILE_LIST)

## Targets (variables in brackets, defaults in the Makefile):
##   setup       venv [VENV=.venv], the covidseg package, nnUNet/ (submodule or PyPI sdist), patches, overlay
##   synthetic   DATA=<folder to write> a synthetic download in the challenge's layout [CASES=20 VALIDATION_CASES=4
##               SYNTHETIC_SEED=0 SYNTHETIC_XY="96 128" SYNTHETIC_Z="28 40" SITES=1 FORCE=]
##   convert     DATA=<COVID-19-20 or MosMed-1110 download> [SOURCE=auto TASK=200 TASK_NAME LABELED_FRACTION=0.5
##               TEST_FRACTION=0 SEED=0 EXTRA_UNLABELED= LABELED_SITE= LABELED_SITE_SHARE=0.8 FORCE=]
##   preprocess  nnUNet_plan_and_preprocess [TASK PLANNER3D TL=8 TF=8 FORCE=]
##   baseline    3d_fullres + 3d_lowres (--npz), nnUNet_ensemble, Dice table [FOLD=4 TRAINER PLANS EPOCHS ITERS VAL_ITERS
##               SAVE_EVERY=5 NPROC_DA NPROC_PER_NODE=1 NNODES=1 NODE_RANK=0 MASTER_ADDR MASTER_PORT];
##               re-run after a kill: resumes from the last checkpoint
##   control     the MoE's same-budget control: nnUNetTrainerV2_finetune continues the 3d_fullres baseline on the
##               labelled cases [CONTROL_TRAINER FINETUNE_LR EPOCHS ITERS VAL_ITERS SAVE_EVERY NPROC_PER_NODE FORCE=]
##   selftrain   nnU-Net self-training from the baseline on the MoE's budget: pseudo-labels of the unlabelled pool,
##               student on labelled + confident ones, then fine-tuned on the labelled [SELFTRAIN_ROUNDS=1
##               SELFTRAIN_THRESHOLD=0.8 FINETUNE_LR EPOCHS ITERS VAL_ITERS FORCE=]
##   meanteacher 3d_fullres + EMA teacher, the MoE's weak-to-strong consistency without experts [EMA_DECAY=0.99
##               CONFIDENCE_THRESHOLD PERTURBATION LAMBDA_MAX WARMUP_EPOCHS RAMPUP_EPOCHS FINETUNE_LR EPOCHS NPROC_PER_NODE FORCE=]
##   weights     baseline 3d_fullres checkpoint -> MoE initialisation [FOLD TRANSFER_NOISE=0.001 TRANSFER_REINIT=0.25
##               EXPERTS=3 TOP_K=2 FORCE=]
##   semi        train MOE_TRAINER (nnUNetTrainerV2_moe; nnUNetTrainerV2_moe_cps: cps; ROUTING=site: the site
##               oracle nnUNetTrainerV2_moe_site) from it, validate, Dice vs
##               baseline [EXPERTS TOP_K CONFIDENCE_THRESHOLD PERTURBATION LAMBDA_MAX WARMUP_EPOCHS RAMPUP_EPOCHS BALANCE_ALPHA FINETUNE_LR
##               GATE_FEATURES GATE_NOISE BALANCE_DECAY SUPERVISED_LOSS EPOCHS ITERS VAL_ITERS SAVE_EVERY NPROC_PER_NODE NNODES FORCE=]
##   evaluate    every trained model segments the held-out test set (imagesTs/) into its folder; resumable
##               [FOLD TTA=1]; EXTERNAL=<folder>: an external labelled set instead (MedSeg, MosMed, COVID-19-20
##               Train/, images/ + labels/) [EXTERNAL_NAME LESION_LABELS=1 FORCE=]
##   predict     INPUT=<dir|file> OUTPUT=<dir> [MODEL=moe|moe_cps|control|selftrain|meanteacher|fullres|lowres|ensemble
##               FOLD INFERENCE_TOP_K TTA=1 GPUS= FORCE=]
##   gradcam     INPUT=<dir|file> OUTPUT=<dir> [MODEL=moe|fullres FOLD LAYER BACKEND=gcam|gcampp TTA=1 FORCE=]
##   report      every trained model (baselines, ensemble, control, selftrain, meanteacher, MoE variants) compared
##               from disk, on the test set (95% CIs, paired differences) and the validation fold: Markdown, CSV, plots [FOLD REPORT_DIR=report NSD_TOLERANCE_MM=1.0]
##   export      ZIP=<file to write> a trained model, all its trained folds, as one zip with a manifest (sha256 of
##               every file, nnU-Net pin and patches, workspace commit, torch version) [MODEL=moe FORCE=]
##   import      ZIP=<file> check a model zip (unsafe paths, manifest, safe loading) and install it into
##               RESULTS_FOLDER [FORCE= (replaces trained folds)]
##   experiment  DATA=<download> (or PRESET=multisite) the whole protocol per labelled fraction x seed: convert (test
##               set held out), preprocess, train METHODS, segment the test set; results.csv/.md and a plot
##               [LABELED_FRACTIONS SEEDS TEST_FRACTION=0.2 EXPERIMENT_DIR=experiment
##               METHODS="fullres control selftrain meanteacher moe" (also moe_cps, moe_site)
##               PRESET= SIZE=gpu|cpu GPUS= EPOCHS FINETUNE_EPOCHS ITERS VAL_ITERS WARMUP_EPOCHS RAMPUP_EPOCHS
##               FORCE= (retrains the models trained with other settings)
##               SCHEDULER=local|slurm (slurm: one sbatch job per run and method, a collect job; a re-run submits only
##               what is not finished or queued) WAIT= SLURM_PARTITION SLURM_GPUS_PER_JOB SLURM_TIME SLURM_ACCOUNT
##               SLURM_OPTIONS]
##   slurm-local a one-node SLURM cluster on this machine (Debian's slurm-wlm + munge, one job at a time), to try
##               SCHEDULER=slurm; idempotent
##   slurm-local-stop  stop it
##   demo        synthetic download -> convert (test set held out) -> preprocess -> baseline -> control -> weights -> semi
##               -> evaluate -> predict -> gradcam -> report, on the CPU [DEMO_DIR=demo DEMO_CASES=40 DEMO_TEST_FRACTION=0.3]
##   test        every test: tests/unit, then tests/workflow (trained fixtures, subprocess runs); what CI runs
##               [PYTEST_ARGS]
##   test-fast   lint, then tests/unit only (no training): under 3 minutes on 2 cores [PYTEST_ARGS]
##   lint        ruff check of covidseg/, semi_supervised/, scripts/, tests/, bench/ (rules in pyproject.toml)

# ---------------------------------------------------------------- setup
$(STAMPS)/requirements: env/requirements.txt env/constraints.txt
ifneq ($(strip $(VENV)),)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV_DIR)
endif
	$(PY) -m pip install --quiet -r env/requirements.txt -c env/constraints.txt
	@mkdir -p $(@D) && touch $@

# the workspace's own package (covidseg), editable: every command is `python -m covidseg.<target>`
$(STAMPS)/workspace-installed: pyproject.toml $(STAMPS)/requirements
	$(PY) -m pip install --quiet --no-deps -e .
	@mkdir -p $(@D) && touch $@

nnUNet/setup.py:
	bash scripts/fetch_nnunet.sh $(PY)

$(STAMPS)/nnunet-installed: nnUNet/setup.py $(STAMPS)/requirements
	$(PY) -m pip install --quiet --no-deps -e nnUNet
	@mkdir -p $(@D) && touch $@

# the patches and the overlay are checked on every run: cheap, and stale copies never run
setup: $(STAMPS)/requirements $(STAMPS)/workspace-installed nnUNet/setup.py
	@bash scripts/apply_patches.sh
	@$(PY) scripts/sync_overlay.py
	@$(MAKE) --no-print-directory $(STAMPS)/nnunet-installed
	@$(PY) -c "import nnunet, torch; print('setup ok: nnunet from', nnunet.__path__[0], '| torch', torch.__version__, '| CUDA' if torch.cuda.is_available() else '| CPU only')"

# ---------------------------------------------------------------- workflow
synthetic: setup
	@test -n "$(DATA)" || { echo "ERROR: set DATA=<folder to write the synthetic download into>" >&2; exit 1; }
	$(PY) -m covidseg.synthetic "$(DATA)" --n-train $(CASES) --n-validation $(VALIDATION_CASES) \
		--seed $(SYNTHETIC_SEED) --xy $(SYNTHETIC_XY) --z $(SYNTHETIC_Z) --sites $(SITES) $(if $(FORCE),--force)

convert: setup
	@test -n "$(DATA)" || { echo "ERROR: set DATA=<folder of the COVID-19-20 or MosMed-1110 download> (or run 'make demo')" >&2; exit 1; }
	$(PY) -m covidseg.convert "$(DATA)" --source $(SOURCE) --task-id $(TASK) --task-name $(TASK_NAME) \
		--labeled-fraction $(LABELED_FRACTION) --test-fraction $(TEST_FRACTION) --seed $(SEED) \
		$(if $(EXTRA_UNLABELED),--extra-unlabeled "$(EXTRA_UNLABELED)") \
		$(if $(LABELED_SITE),--labeled-site "$(LABELED_SITE)" --labeled-site-share $(LABELED_SITE_SHARE)) $(if $(FORCE),--force)

preprocess: setup
	$(PY) -m covidseg.preprocess --task $(TASK) --planner3d $(PLANNER3D) --plans $(PLANS) --tl $(TL) --tf $(TF) $(if $(FORCE),--force)

baseline: setup
	$(PY) -m covidseg.baseline $(WORKFLOW_ARGS) $(LAUNCH_ARGS)

LAUNCH_ARGS := --nproc-per-node $(NPROC_PER_NODE) --nnodes $(NNODES) --node-rank $(NODE_RANK) \
	--master-addr $(MASTER_ADDR) $(if $(MASTER_PORT),--master-port $(MASTER_PORT))
MOE_ARGS := --task $(TASK) --fold $(FOLD) --plans $(PLANS) --trainer $(TRAINER) --moe-trainer $(MOE_TRAINER) \
	--control-trainer $(CONTROL_TRAINER) $(if $(FORCE),--force)

control: setup
	$(PY) -m covidseg.control $(MOE_ARGS) $(LAUNCH_ARGS)

selftrain: setup
	$(PY) -m covidseg.selftrain $(MOE_ARGS)

meanteacher: setup
	$(PY) -m covidseg.meanteacher $(MOE_ARGS) $(LAUNCH_ARGS)

weights: setup
	$(PY) -m covidseg.weights $(MOE_ARGS)

semi: setup
	$(PY) -m covidseg.semi $(MOE_ARGS) $(LAUNCH_ARGS)

evaluate: setup
	$(PY) -m covidseg.evaluate --task $(TASK) --fold $(FOLD) --plans $(PLANS) --trainer $(TRAINER) \
		--moe-trainer $(MOE_TRAINER) --control-trainer $(CONTROL_TRAINER) $(if $(filter 0,$(TTA)),--disable-tta) \
		$(if $(EXTERNAL),--external "$(EXTERNAL)" $(if $(EXTERNAL_NAME),--external-name "$(EXTERNAL_NAME)") \
		--lesion-labels $(LESION_LABELS) $(if $(FORCE),--force))

predict: setup
	@test -n "$(INPUT)" -a -n "$(OUTPUT)" || { echo "ERROR: set INPUT=<CT file or folder> and OUTPUT=<folder>" >&2; exit 1; }
	$(PY) -m covidseg.predict --input "$(INPUT)" --output "$(OUTPUT)" --model $(MODEL) $(MOE_ARGS) $(if $(filter 0,$(TTA)),--disable-tta) \
		$(if $(GPUS),--gpus $(GPUS))

gradcam: setup
	@test -n "$(INPUT)" -a -n "$(OUTPUT)" || { echo "ERROR: set INPUT=<CT file or folder> and OUTPUT=<folder>" >&2; exit 1; }
	$(PY) -m covidseg.gradcam --input "$(INPUT)" --output "$(OUTPUT)" --model $(MODEL) \
		--backend $(BACKEND) $(if $(LAYER),--layer $(LAYER)) $(MOE_ARGS) $(if $(filter 0,$(TTA)),--disable-tta)

report: setup
	$(PY) -m covidseg.report --task $(TASK) --fold $(FOLD) --plans $(PLANS) --trainer $(TRAINER) \
		--moe-trainer $(MOE_TRAINER) --control-trainer $(CONTROL_TRAINER) --output "$(REPORT_DIR)" \
		--tolerance-mm $(NSD_TOLERANCE_MM)

export: setup
	@test -n "$(ZIP)" || { echo "ERROR: set ZIP=<zip file to write>" >&2; exit 1; }
	$(PY) -m covidseg.export --zip "$(ZIP)" --model $(MODEL) $(MOE_ARGS)

import: setup
	@test -n "$(ZIP)" || { echo "ERROR: set ZIP=<zip file made by make export>" >&2; exit 1; }
	$(PY) -m covidseg.import --zip "$(ZIP)" $(if $(FORCE),--force)

experiment: setup
	@test -n "$(DATA)$(PRESET)" || { echo "ERROR: set DATA=<folder of the COVID-19-20 download> (or a synthetic one), or PRESET=multisite" >&2; exit 1; }
	$(PY) -m covidseg.experiment $(if $(DATA),"$(DATA)") $(if $(PRESET),--preset $(PRESET)) --dir "$(EXPERIMENT_DIR)" --labeled-fractions $(LABELED_FRACTIONS) \
		--seeds $(SEEDS) --methods $(METHODS) --size $(SIZE) $(if $(filter-out 0,$(TEST_FRACTION)),--test-fraction $(TEST_FRACTION)) \
		$(if $(GPUS),--gpus $(GPUS)) $(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(FINETUNE_EPOCHS),--finetune-epochs $(FINETUNE_EPOCHS)) \
		$(if $(ITERS),--iterations $(ITERS)) $(if $(VAL_ITERS),--val-iterations $(VAL_ITERS)) \
		$(if $(WARMUP_EPOCHS),--warmup-epochs $(WARMUP_EPOCHS)) $(if $(RAMPUP_EPOCHS),--rampup-epochs $(RAMPUP_EPOCHS)) \
		$(if $(FORCE),--force) --scheduler $(or $(SCHEDULER),local) $(if $(filter-out 0,$(WAIT)),--wait) \
		$(if $(SLURM_PARTITION),--slurm-partition "$(SLURM_PARTITION)") $(if $(SLURM_GPUS_PER_JOB),--slurm-gpus-per-job $(SLURM_GPUS_PER_JOB)) \
		$(if $(SLURM_TIME),--slurm-time "$(SLURM_TIME)") $(if $(SLURM_ACCOUNT),--slurm-account "$(SLURM_ACCOUNT)") \
		$(if $(SLURM_OPTIONS),--slurm-options='$(SLURM_OPTIONS)')

slurm-local:
	scripts/slurm_local.sh start

slurm-local-stop:
	scripts/slurm_local.sh stop

# ---------------------------------------------------------------- demo
DEMO_ENV := nnUNet_raw_data_base=$(DEMO_DIR)/nnUNet_raw nnUNet_preprocessed=$(DEMO_DIR)/nnUNet_preprocessed \
	RESULTS_FOLDER=$(DEMO_DIR)/nnUNet_trained_models
DEMO_MAKE := $(DEMO_ENV) $(MAKE) --no-print-directory PLANNER3D=ExperimentPlanner3D_v21_CPUDemo \
	PLANS=nnUNetPlans_CPUDemo EPOCHS=$(DEMO_EPOCHS) ITERS=$(DEMO_ITERS) VAL_ITERS=$(DEMO_VAL_ITERS) \
	NPROC_DA=2 TL=2 TF=2 WARMUP_EPOCHS=$(DEMO_WARMUP_EPOCHS) RAMPUP_EPOCHS=$(DEMO_RAMPUP_EPOCHS)
# time one demo stage: $(call demo_stage,name,command)
demo_stage = @s=$$(date +%s); $(2) || exit 1; echo "$(1): $$(( $$(date +%s) - s )) s" | tee -a $(DEMO_DIR)/timings.txt

clean-demo:
	@if [ -d "$(DEMO_DIR)" ] && [ ! -f "$(DEMO_DIR)/.made-by-make-demo" ]; then \
		echo "ERROR: $(DEMO_DIR) was not made by 'make demo'; not deleting it" >&2; exit 1; fi
	rm -rf "$(DEMO_DIR)"

demo: setup clean-demo
	@mkdir -p $(DEMO_DIR) && touch $(DEMO_DIR)/.made-by-make-demo
	$(call demo_stage,synthetic download,$(DEMO_MAKE) synthetic DATA=$(DEMO_DIR)/download CASES=$(DEMO_CASES) \
		VALIDATION_CASES=2 SYNTHETIC_XY="100 112" SYNTHETIC_Z="28 36")
	$(call demo_stage,convert,$(DEMO_MAKE) convert DATA=$(DEMO_DIR)/download TEST_FRACTION=$(DEMO_TEST_FRACTION))
	$(call demo_stage,preprocess,$(DEMO_MAKE) preprocess)
	$(call demo_stage,baseline,$(DEMO_MAKE) baseline)
	$(call demo_stage,control,$(DEMO_MAKE) control EPOCHS=$(DEMO_SEMI_EPOCHS))
	$(call demo_stage,weights,$(DEMO_MAKE) weights)
	$(call demo_stage,semi,$(DEMO_MAKE) semi EPOCHS=$(DEMO_SEMI_EPOCHS))
	$(call demo_stage,evaluate,$(DEMO_MAKE) evaluate TTA=0)
	$(call demo_stage,predict,$(DEMO_MAKE) predict TTA=0 INPUT=$(DEMO_DIR)/download/Validation OUTPUT=$(DEMO_DIR)/predictions)
	@mkdir -p $(DEMO_DIR)/gradcam_input && ln -sf $$(ls $(DEMO_DIR)/download/Validation/*_ct.nii.gz | head -1) $(DEMO_DIR)/gradcam_input/
	$(call demo_stage,gradcam,$(DEMO_MAKE) gradcam TTA=0 INPUT=$(DEMO_DIR)/gradcam_input OUTPUT=$(DEMO_DIR)/gradcam)
	$(call demo_stage,report,$(DEMO_MAKE) report REPORT_DIR=$(DEMO_DIR)/report > $(DEMO_DIR)/report.log)
	@echo; sed -n '/^## Test set/,$$p' $(DEMO_DIR)/report/report.md | sed '/^!\[/d'
	@echo; echo "demo finished; stage wall times:"; cat $(DEMO_DIR)/timings.txt
	@echo "outputs: download $(DEMO_DIR)/download | raw task $(DEMO_DIR)/nnUNet_raw/nnUNet_raw_data"
	@echo "         preprocessed $(DEMO_DIR)/nnUNet_preprocessed | models, validation and ensemble $(DEMO_DIR)/nnUNet_trained_models/nnUNet"
	@echo "         MoE predictions for the validation CTs $(DEMO_DIR)/predictions | report $(DEMO_DIR)/report/report.md"
	@echo "         Grad-CAM overlays: $$(ls $(DEMO_DIR)/gradcam/*_overlay.png)"

# ---------------------------------------------------------------- tests
test: setup
	$(PY) -m pytest tests $(PYTEST_ARGS)

test-fast: setup lint
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check covidseg semi_supervised scripts tests bench
