# AdaptFace — one-command setup. `make demo` runs the main job on the embedded benchmark (CPU);
# `make test` runs the test-suite (unit tests + notebook regression tests with nbval).
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard notebooks/0*.ipynb))
RUN_DIR := results/notebooks
# Where the shared data/weights live (read-only); override with `make demo AFR_SHARED=/path`.
export AFR_SHARED ?= $(abspath ../shared)
export PYTHONHASHSEED := 0

.PHONY: full venv demo test test-full test-timm test-timm-venv check browser-test bench notebooks clean-data help apt baseline-search dalora-results maml-results maml-inner1-results crossdomain-results ablations-results ablations-inner1-results ablations-inner1-meta60-results ablations-meta60-results ablations-rank-inner-meta60-results publish-adapters results

help:
	@echo "make demo   - create .venv, install, build the embedded benchmark, run the notebooks (CPU) into build/demo/"
	@echo "make test   - create .venv if needed; the quick tier: unit tests + every notebook with small parameters (<= 15 min)"
	@echo "make test-full - the regression tier: slow tests + the notebooks as shipped under nbval"
	@echo "make test-timm - create .venv-timm (torch 2.14.1 + torchvision 0.29.1 + timm, several GB) and run tests/timm"
	@echo "make check - make test, make test-full and make browser-test (what .ci/run runs)"
	@echo "make browser-test - run notebooks 02 and 07 in JupyterLab in headless Chromium (screenshots in build/browser/)"
	@echo "make bench  - run the benchmarks in bench/ (prints ratios measured side by side)"
	@echo "make results - the committed results that take long: notebook 02's validation search, notebooks 03-05's 3-seed grids"
	@echo "make apt    - install the Debian packages in apt.txt (LaTeX for the paper, Chromium for browser-test) when root and apt-get exist"
	@echo "make paper  - regenerate paper/generated/ from the committed results and build paper/main.pdf + supplementary.pdf"

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install -q -r requirements.txt 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import torch, transformers, peft, kornia, afr; print('environment ready: torch', torch.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__)"
	@touch $@

# The demo: every notebook runs with papermill (its shipped parameters) into $(DEMO_OUT)/notebooks/, in numbered
# order, and writes its results, figures and runs under $(DEMO_OUT)/ (git-ignored): the committed results/, figures/
# and paper/ are never touched. A second `make demo` reuses the demo's earlier runs (each notebook says so);
# `rm -rf $(DEMO_OUT)` first to train them again.
DEMO_OUT := build/demo
DEMO_ENV := AFR_RESULTS=$(abspath $(DEMO_OUT))/results AFR_FIGURES=$(abspath $(DEMO_OUT))/figures \
  AFR_RUNS=$(abspath $(DEMO_OUT))/runs
notebooks: $(STAMP)
	@mkdir -p $(DEMO_OUT)/notebooks
	@for nb in $(NOTEBOOKS); do \
	  case $$nb in *01_data*) extra="";; *) extra="-p progress False";; esac; \
	  echo "== papermill $$nb -> $(DEMO_OUT)/notebooks/ $$extra"; start=$$(date +%s); \
	  $(DEMO_ENV) $(VENV)/bin/papermill --cwd notebooks --log-level WARNING $$extra "$$nb" \
	    "$(DEMO_OUT)/notebooks/$$(basename $$nb)"; \
	  echo "   $$(basename $$nb): $$(( $$(date +%s) - start )) s"; \
	done

# The demo ends with the paper when LaTeX is installed (`make apt`): it is built from the committed results (the
# demo's one-seed runs are not the paper's 3-seed grids), which leaves paper/generated/ as it is.
demo: notebooks
	@if command -v latexmk >/dev/null; then $(MAKE) --no-print-directory paper; \
	else echo "paper: LaTeX not installed; \`make apt\` (as root) then \`make paper\` builds paper/main.pdf"; fi
	@echo "Done. The demo's executed notebooks: $(DEMO_OUT)/notebooks/; its records and tables: $(DEMO_OUT)/results/;"
	@echo "its figures: $(DEMO_OUT)/figures/; the paper (from the committed results): paper/main.pdf"

# Tests write results, figures and runs into a scratch folder (never over the committed ones), so the work tree
# stays as it was; each tier's scratch folder is emptied first (it holds nothing but that tier's previous run).
# `make test` is the quick tier (<= 15 min on 2 cores): the unit tests not marked slow, and every notebook run
# top to bottom by papermill with its small parameter file (tests/notebook_parameters/). `make test-full` is the
# regression tier: the slow tests, and the notebooks as shipped under nbval (their checked outputs compared with
# the committed ones). `make check` runs both and the real-browser test; `.ci/run` runs `make check`.
TEST_OUTPUT := build/test-output
test_env = AFR_RESULTS=$(abspath $(TEST_OUTPUT))/$(1)/results AFR_FIGURES=$(abspath $(TEST_OUTPUT))/$(1)/figures \
  AFR_RUNS=$(abspath $(TEST_OUTPUT))/$(1)/runs
test: $(STAMP)
	@rm -rf $(TEST_OUTPUT)/quick && mkdir -p $(TEST_OUTPUT)/quick
	$(call test_env,quick) $(PY) -m pytest tests -m "not slow" --durations=15

test-full: $(STAMP)
	@rm -rf $(TEST_OUTPUT)/full && mkdir -p $(TEST_OUTPUT)/full
	$(call test_env,full) $(PY) -m pytest tests -m slow --durations=5
	$(call test_env,full) $(PY) -m pytest notebooks --nbval-lax --durations=7

check: test test-full browser-test

# timm as an optional backbone source (`pip install .[timm]`, README "timm (optional)"). PyPI's torchvision does not
# load beside the CPU torch 2.13 of requirements.txt, so the timm tests run in a venv of their own, .venv-timm
# (git-ignored), with torch 2.14.1 + torchvision 0.29.1 from PyPI (a CUDA build, several GB; it runs on CPU too),
# the project's other requirements and `-e .[timm]`. The default venv and `make test` never see timm: tests/timm is
# collected only where timm imports (tests/conftest.py).
TIMM_VENV := .venv-timm
TIMM_PY := $(TIMM_VENV)/bin/python
TIMM_STAMP := $(TIMM_VENV)/.installed
TIMM_TORCH := torch==2.14.1 torchvision==0.29.1
test-timm-venv: $(TIMM_STAMP)

$(TIMM_STAMP): requirements.txt pyproject.toml
	@test -d $(TIMM_VENV) || $(PYTHON) -m venv $(TIMM_VENV)
	$(TIMM_PY) -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	grep -v -E '^torch(vision)?[=<>~ ]' requirements.txt > $(TIMM_VENV)/requirements-timm.txt
	$(TIMM_PY) -m pip install -q $(TIMM_TORCH) -r $(TIMM_VENV)/requirements-timm.txt 2>&1 | grep -v "^WARNING: Location" || true
	$(TIMM_PY) -m pip install -q $(TIMM_TORCH) -e '.[timm]' 2>&1 | grep -v "^WARNING: Location" || true
	$(TIMM_PY) -c "import torch, torchvision, timm, transformers, afr; print('timm environment ready: torch', torch.__version__, '| torchvision', torchvision.__version__, '| timm', timm.__version__)"
	@touch $@

test-timm: $(TIMM_STAMP)
	@rm -rf $(TEST_OUTPUT)/timm && mkdir -p $(TEST_OUTPUT)/timm
	$(call test_env,timm) $(TIMM_PY) -m pytest tests/timm -q

# Notebook 02's settings chosen on the validation packs (test packs not scored): on notebook 03's fitted recipe
# (centred embeddings, class-mean centres, no augmentation, 4 epochs; the settings' defaults) the LoRA learning rate
# among notebook 03's two, seeds 0 and 1; choice rule (fixed before the runs): the highest mean validation AUC of the
# last epoch over domains and seeds. Summarised by `python -m afr.experiments.search baseline`; README "Baseline".
# The first search (random or class-mean centres with RandAugment(4, 16), no centring: grid baseline-search) did not
# fit and is kept as records; BASELINE_SEARCH_FIRST=1 re-runs it too.
BASELINE_SEARCH := class-mean,1e-4 class-mean,3e-4
BASELINE_SEARCH_FIRST_CANDIDATES := random,1e-4 random,3e-4 class-mean,1e-4 class-mean,3e-4
SEARCH_SEEDS := 0 1
baseline-search: $(STAMP)
	@set -e; for seed in $(SEARCH_SEEDS); do for candidate in $(BASELINE_SEARCH); do init=$${candidate%,*}; lr=$${candidate#*,}; \
	  echo "== head_init $$init lr $$lr seed $$seed (an existing result is kept)"; \
	  $(PY) -m afr baseline --head-init $$init --lr $$lr --seed $$seed --no-score-test --no-progress \
	    --grid baseline-search-fitted > /dev/null; \
	done; done
	@set -e; if [ -n "$(BASELINE_SEARCH_FIRST)" ]; then for seed in $(SEARCH_SEEDS); do \
	  for candidate in $(BASELINE_SEARCH_FIRST_CANDIDATES); do init=$${candidate%,*}; lr=$${candidate#*,}; \
	  $(PY) -m afr baseline --head-init $$init --lr $$lr --seed $$seed --no-centre-embeddings --augment \
	    --no-score-test --no-progress --grid baseline-search > /dev/null; \
	done; done; $(PY) -m afr.experiments.search baseline --grid baseline-search; fi
	$(PY) -m afr.experiments.search baseline
	$(PY) -m afr baseline --no-progress --grid baseline-fitted > /dev/null  # the reported run: the chosen settings are the defaults

# The training recipe of notebooks 03 and 06, chosen on the validation packs (test packs not scored): centred
# embeddings + class-mean centres with FRoundation's augmentation, flip only, or none; LoRA, seeds 0 and 1, 4 epochs;
# rule fixed before the runs (afr/experiments/recipe_search.py): every run fitted (margin loss <= 0.5 x uniform),
# then the highest mean validation AUC. Chose none (README "Recipes that fit").
recipe-search: $(STAMP)
	$(PY) -m afr.experiments.recipe_search

# Notebook 03's committed grid: 5 seeds (a paired test decides its claim), 4 epochs, the fitted recipe (centred embeddings, class-mean centres, no
# augmentation: make recipe-search), the learning rate chosen on validation among the same two candidates for LoRA
# and DA-LoRA. Runs already recorded are reused (not retrained), so an interrupted grid resumes; the executed notebook
# shows the search and tables. The first grid (random centres, RandAugment(4, 16); none of its runs fitted) keeps its
# records and rows under the grid name `dalora`.
DALORA_RESULTS := {methods: [lora, lora-matched, lora-distill, dalora-classifier, dalora-oracle, dalora-uniform], \
  seeds: [0, 1, 2, 3, 4], epochs: 4, search_lrs: [0.0001, 0.0003], centre_embeddings: true, head_init: class-mean, \
  augment: false, progress: false, grid: dalora-fitted}
dalora-results: $(STAMP)
	@mkdir -p $(RUN_DIR)
	$(VENV)/bin/papermill --cwd notebooks --log-level WARNING -y '$(DALORA_RESULTS)' notebooks/03_dalora.ipynb \
	  $(RUN_DIR)/03_dalora_results.ipynb

# The adapters notebook 07 draws, copied from notebook 03's committed grid's run folders to
# results/adapters/dalora-fitted/<method>_seed<k>/ (LoRA and the DA-LoRA classifier, seed 0: afr/experiments/publish.py);
# an adapter another run published there is replaced only with `python -m afr.experiments.publish --overwrite`.
publish-adapters: $(STAMP)
	$(PY) -m afr.experiments.publish
	$(PY) -m afr.model_card --adapters-dir results/adapters/dalora-fitted --overwrite

# Notebook 04's committed grids: 3 seeds, 60 outer steps, the meta-gradient clipped to norm 1 (fixed in advance:
# python -m afr.experiments.maml_descent), validation curves to 25 adaptation steps on the held-out target's
# validation identities, its test pack scored once per run and k at the step count they choose (records reused,
# resumable). `maml-results`: three inner steps (grid maml-validated; two of its three second-order starts diverged);
# `maml-inner1-results`: one inner step for every start (grid maml-inner1, the reported one: second order descends
# with it in seeds 0-2 on the source episodes, python -m afr.experiments.maml_descent --inner-steps 1). The first grid
# (no clipping, test pack at every step count) keeps its rows under the grid name `maml`.
MAML_RESULTS := {seeds: [0, 1, 2], meta_steps: 60, steps: [0, 1, 3, 5, 10, 25], meta_grad_clip: 1.0, \
  choose_steps_on_validation: true, progress: false, grid: maml-validated}
maml-results: $(STAMP)
	@mkdir -p $(RUN_DIR)
	$(VENV)/bin/papermill --cwd notebooks --log-level WARNING -y '$(MAML_RESULTS)' notebooks/04_maml.ipynb \
	  $(RUN_DIR)/04_maml_results.ipynb

MAML_INNER1 := {inner_steps: 1, grid: maml-inner1}
maml-inner1-results: $(STAMP)
	@mkdir -p $(RUN_DIR)
	$(VENV)/bin/papermill --cwd notebooks --log-level WARNING -y '$(MAML_RESULTS)' -y '$(MAML_INNER1)' \
	  notebooks/04_maml.ipynb $(RUN_DIR)/04_maml_inner1_results.ipynb

# Notebook 05's committed grids: 3 seeds, 60 stage-1 outer steps (records reused, resumable). Visible -> thermal with
# k = 1, 2, 4, and k = all as a grid of its own (it shares the starts); visible -> low quality (k = 1, 4, the rows
# without the contrastive terms: the CPU budget); indoor -> outdoor
# (no target training identities: the two starts trained on ORL + Yale, scored on the wild photos).
CROSSDOMAIN_GRID := seeds: [0, 1, 2], meta_steps: 60, progress: false
CROSSDOMAIN_GRIDS := thermal thermal_kall thermal_validated thermal_kall_validated thermal_lr3e4_validated \
  thermal_kall_lr3e4_validated lowquality lowquality_validated lowquality_lr3e4_validated outdoor
# the first grids: stage 2's step count fixed in advance (10; the notebook's default chooses it on validation)
CROSSDOMAIN_FIXED := adapt_steps: 10, choose_steps_on_validation: false, adapt_lr: 0.001
CROSSDOMAIN_thermal := {$(CROSSDOMAIN_GRID), $(CROSSDOMAIN_FIXED), shots: [1, 2, 4], grid: crossdomain-thermal}
CROSSDOMAIN_thermal_kall := {$(CROSSDOMAIN_GRID), $(CROSSDOMAIN_FIXED), shots: [all], grid: crossdomain-thermal_kall}
# the thermal grids with stage 2's step count chosen per run and k on the thermal validation identities among
# 0 1 3 5 10 25 steps, the test packs scored once at it; starts rebuilt where their adapters are not on this machine;
# first at the learning rate 1e-3 a one-seed check kept (results/analysis/crossdomain_lr/)
CROSSDOMAIN_VALIDATED := adapt_steps: 25, choose_steps_on_validation: true, rebuild_starts: true
CROSSDOMAIN_thermal_validated := {$(CROSSDOMAIN_GRID), $(CROSSDOMAIN_VALIDATED), shots: [1, 2, 4], adapt_lr: 0.001, \
  grid: crossdomain-thermal_validated}
CROSSDOMAIN_thermal_kall_validated := {$(CROSSDOMAIN_GRID), $(CROSSDOMAIN_VALIDATED), shots: [all], adapt_lr: 0.001, \
  grid: crossdomain-thermal_kall_validated}
# the reported thermal grids: the same again at stage-2 rate 3e-4 (notebook 05's default), the rate the three-seed
# validation-only check prefers (python -m afr.experiments.crossdomain_lr_check); the 1e-3 grids are kept
CROSSDOMAIN_thermal_lr3e4_validated := {$(CROSSDOMAIN_GRID), $(CROSSDOMAIN_VALIDATED), shots: [1, 2, 4], \
  adapt_lr: 0.0003, grid: crossdomain-thermal_lr3e4_validated}
CROSSDOMAIN_thermal_kall_lr3e4_validated := {$(CROSSDOMAIN_GRID), $(CROSSDOMAIN_VALIDATED), shots: [all], \
  adapt_lr: 0.0003, grid: crossdomain-thermal_kall_lr3e4_validated}
CROSSDOMAIN_lowquality := {$(CROSSDOMAIN_GRID), $(CROSSDOMAIN_FIXED), direction: visible->lowquality, shots: [1, 4], \
  methods: [zero-shot, lora, dalora, dalora+maml], grid: crossdomain-lowquality}
CROSSDOMAIN_lowquality_validated := {$(CROSSDOMAIN_GRID), $(CROSSDOMAIN_VALIDATED), direction: visible->lowquality, \
  shots: [1, 4], methods: [zero-shot, lora, dalora, dalora+maml], adapt_lr: 0.001, \
  grid: crossdomain-lowquality_validated}
CROSSDOMAIN_lowquality_lr3e4_validated := {$(CROSSDOMAIN_GRID), $(CROSSDOMAIN_VALIDATED), \
  direction: visible->lowquality, shots: [1, 4], methods: [zero-shot, lora, dalora, dalora+maml], adapt_lr: 0.0003, \
  grid: crossdomain-lowquality_lr3e4_validated}
CROSSDOMAIN_outdoor := {$(CROSSDOMAIN_GRID), direction: indoor->outdoor, methods: [zero-shot], adapt_lr: 0.001, \
  grid: crossdomain-outdoor}
crossdomain-results: $(STAMP)
	@mkdir -p $(RUN_DIR)
	$(foreach name,$(CROSSDOMAIN_GRIDS),$(VENV)/bin/papermill --cwd notebooks --log-level WARNING \
	  -y '$(CROSSDOMAIN_$(name))' notebooks/05_crossdomain.ipynb $(RUN_DIR)/05_crossdomain_$(name)_results.ipynb && ) true

# The full profile on a GPU box, the users' one command: `make full DATA=<CASIA-WebFace folder: train.rec/.idx/property>
# BINS=<folder with lfw.bin cfp_fp.bin agedb_30.bin calfw.bin cplfw.bin> WEIGHTS=<local Hugging Face directory>
# [THERMAL=<folder of thermal face crops, one sub-folder per identity>]`. It labels CASIA-WebFace's domains once,
# runs notebook 02 per seed, 03 (LoRA vs DA-LoRA on the labelled domains), 05 with THERMAL, and the paper's numbers
# (afr/experiments/full_chain.py says what each step does); executed notebooks go to results/notebooks/. Every
# setting is a variable below (defaults: FRoundation's recipe where it gives one, else this project's, fixed in
# advance). SMOKE=1 runs the chain in miniature on CPU (1 seed, 1 epoch, the smallest budgets): it shows the chain
# runs, its numbers are not results.
BACKBONE ?= dinov2-vits14
IDENTITIES ?= 1000
VAL_IDENTITIES ?= 100
RANK ?= 16
BATCH ?= 128
LR ?= 3e-4
EPOCHS ?= 4
SEEDS ?= 0 1 2
SHOTS ?= 10 50 100
META_STEPS ?= 200
ADAPT_STEPS ?= 50
ADAPT_BATCH ?= 128
TASKS ?= 2
WORKERS ?= 8
DEVICE ?= auto
GPUS ?= 1
DOMAIN_LABELS ?= data/processed/casia_domain_labels
THERMAL ?=
SMOKE ?=
full: $(STAMP)
	@for name in DATA BINS WEIGHTS; do eval value=\$${!name:-}; test -n "$$value" || { \
	  echo "make full: set $$name (DATA=CASIA-WebFace folder, BINS=folder of the five .bin packs, WEIGHTS=local Hugging Face directory)"; exit 2; }; done
	$(PY) -m afr.experiments.full_chain --data "$(DATA)" --bins "$(BINS)" --weights "$(WEIGHTS)" \
	  $(if $(THERMAL),--thermal "$(THERMAL)") --domain-labels "$(DOMAIN_LABELS)" --backbone $(BACKBONE) \
	  --identities $(IDENTITIES) --val-identities $(VAL_IDENTITIES) --rank $(RANK) --batch $(BATCH) --lr $(LR) \
	  --epochs $(EPOCHS) --seeds $(SEEDS) --shots $(SHOTS) --meta-steps $(META_STEPS) --adapt-steps $(ADAPT_STEPS) \
	  --adapt-batch $(ADAPT_BATCH) --tasks $(TASKS) --workers $(WORKERS) --device $(DEVICE) --gpus $(GPUS) --notebooks-out $(RUN_DIR) \
	  $(if $(SMOKE),--smoke)

# Notebook 06's committed grid: 3 seeds, the component table and every sweep (rank, K, λ1, λ2, MAML inner steps), with
# notebook 03's fitted recipe and budget (centred embeddings, class-mean centres, no augmentation, 4 epochs, lr 3e-4
# as 03's validation search chose); MAML starts of 20 outer steps, the first grid's (rebuilt where their adapters are
# not on this machine); 66 runs and 24 starts (records reused, resumable; ABLATION_GROUPS runs some groups only). The
# first grid (1 epoch, random centres, RandAugment; not fitted) keeps its rows under the grid name `ablations`, and
# reports the groups this grid has not run yet.
empty :=
space := $(empty) $(empty)
comma := ,
ABLATION_GROUPS ?= component lambda_contrastive lambda_domain inner_steps experts rank
ABLATIONS_RESULTS := {seeds: [0, 1, 2], components: [lora, lora+router, dalora, dalora+maml, dalora+contrastive, full], \
  ranks: [2, 4, 8, 16, 32], expert_counts: [2, 3, 4, 5], \
  lambda_contrastive_values: [0.01, 0.05, 0.1, 0.5], lambda_domain_values: [0.01, 0.05, 0.1, 0.5], \
  inner_steps_values: [1, 3, 5, 10], meta_steps: 20, epochs: 4, centre_embeddings: true, head_init: class-mean, \
  augment: false, rebuild_starts: true, progress: false, grid: ablations-fitted}
ablations-results: $(STAMP)
	@mkdir -p $(RUN_DIR)
	$(VENV)/bin/papermill --cwd notebooks --log-level WARNING -y '$(ABLATIONS_RESULTS)' \
	  -y '{groups: [$(subst $(space),$(comma) ,$(strip $(ABLATION_GROUPS)))]}' notebooks/06_ablations.ipynb \
	  $(RUN_DIR)/06_ablations_results.ipynb

# The fitted grid's inner-step cells 1 (the validation choice) and 3 over 5 seeds, for the paired test of one inner
# step against notebook 03's parameter-matched LoRA (seeds 0-2 are the fitted grid's runs, reused).
ABLATIONS_INNER1 := {seeds: [0, 1, 2, 3, 4], groups: [inner_steps], inner_steps_values: [1, 3], grid: ablations-inner1}
ablations-inner1-results: $(STAMP)
	@mkdir -p $(RUN_DIR)
	$(VENV)/bin/papermill --cwd notebooks --log-level WARNING -y '$(ABLATIONS_RESULTS)' -y '$(ABLATIONS_INNER1)' \
	  notebooks/06_ablations.ipynb $(RUN_DIR)/06_ablations_inner1_results.ipynb

# The same cells and seeds with MAML starts of 60 outer steps and the meta-gradient clipped to norm 1 (notebooks 04
# and 05's count and notebook 04's clip, both fixed before any of its runs): 20 outer steps left 10 of the fitted
# grid's 24 starts above where they began. 10 runs and 10 starts, new ones (a start's settings name it).
ABLATIONS_INNER1_META60 := {seeds: [0, 1, 2, 3, 4], groups: [inner_steps], inner_steps_values: [1, 3], \
  meta_steps: 60, meta_grad_clip: 1.0, grid: ablations-inner1-meta60}
ablations-inner1-meta60-results: $(STAMP)
	@mkdir -p $(RUN_DIR)
	$(VENV)/bin/papermill --cwd notebooks --log-level WARNING -y '$(ABLATIONS_RESULTS)' \
	  -y '$(ABLATIONS_INNER1_META60)' notebooks/06_ablations.ipynb $(RUN_DIR)/06_ablations_inner1_meta60_results.ipynb

# The fitted grid's cells that start from the rank-8, three-inner-step MAML start (the + MAML row, the full model, the
# λ1, λ2 and K sweeps), seeds 0-2, from those 60-step clipped starts: 30 new runs, the starts and the full model's
# runs reused from ablations-inner1-meta60 (run that first).
ABLATIONS_META60 := {groups: [component, lambda_contrastive, lambda_domain, experts], \
  components: [dalora+maml, full], meta_steps: 60, meta_grad_clip: 1.0, grid: ablations-fitted-meta60}
ablations-meta60-results: ablations-inner1-meta60-results
	$(VENV)/bin/papermill --cwd notebooks --log-level WARNING -y '$(ABLATIONS_RESULTS)' -y '$(ABLATIONS_META60)' \
	  notebooks/06_ablations.ipynb $(RUN_DIR)/06_ablations_meta60_results.ipynb

# The rest of the fitted grid's cells with a MAML start, from 60-step clipped starts: the rank sweep and inner steps
# 5 and 10, seeds 0-2: 18 new starts and runs (rank 8 with three inner steps is ablations-meta60's full model).
ABLATIONS_RANK_INNER_META60 := {groups: [rank, inner_steps], ranks: [2, 4, 8, 16, 32], \
  inner_steps_values: [3, 5, 10], meta_steps: 60, meta_grad_clip: 1.0, grid: ablations-rank-inner-meta60}
ablations-rank-inner-meta60-results: ablations-meta60-results
	$(VENV)/bin/papermill --cwd notebooks --log-level WARNING -y '$(ABLATIONS_RESULTS)' \
	  -y '$(ABLATIONS_RANK_INNER_META60)' notebooks/06_ablations.ipynb \
	  $(RUN_DIR)/06_ablations_rank_inner_meta60_results.ipynb

# The committed results that take long (hours on 2 CPU cores when nothing is recorded yet).
# Runs already recorded are kept, so an interrupted `make results` resumes.
results: $(STAMP) baseline-search recipe-search dalora-results publish-adapters maml-results maml-inner1-results crossdomain-results \
  ablations-results ablations-inner1-results ablations-inner1-meta60-results ablations-meta60-results \
  ablations-rank-inner-meta60-results

bench: $(STAMP)
	@for script in bench/*.py; do echo "== $$script"; $(PY) "$$script"; done

# Debian packages (apt.txt): installed when we are root and apt-get exists; otherwise say what to install.
APT_PACKAGES := $(shell grep -v '^\s*\#' apt.txt 2>/dev/null | tr '\n' ' ')
# $(call apt_install,PACKAGES,WHAT-IF-MISSING): apt-get install the missing ones (root and apt-get), else run
# WHAT-IF-MISSING (say what to install, or fail).
apt_install = if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	  if [ -n "$$missing" ]; then echo "apt-get install" $$missing; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "apt packages already installed: $(strip $(1))"; fi; \
	else $(2); fi
apt:
	@$(call apt_install,$(APT_PACKAGES),echo "skipping apt packages (not root or no apt-get); install them yourself: $(APT_PACKAGES)")

# The notebooks in a real browser: Debian Chromium (chromium, chromium-driver from apt.txt; installed here when
# missing, as root) drives JupyterLab from the venv (Selenium), runs every notebook as shipped with Run All Cells on
# a scratch copy of the project (build/browser/project, committed results reused), fails on any cell error, moves
# 07's threshold slider and checks the explorer answers, fails if running them changed a committed file of the
# copy (git status), then changes a parameter of 02 (epochs = 2), runs it again and checks it shows its training
# progress. Screenshots and report: build/browser/. BROWSER_NOTEBOOKS picks other notebooks;
# BROWSER_TIMEOUT is the seconds one notebook's Run All may take (a timeout fails with a screenshot).
BROWSER_PACKAGES := chromium chromium-driver
BROWSER_NOTEBOOKS ?= $(notdir $(NOTEBOOKS))
BROWSER_TIMEOUT ?= 1200
browser-test: $(STAMP)
	@$(call apt_install,$(BROWSER_PACKAGES),for p in $(BROWSER_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || \
	  { echo "browser-test: Debian packages $(BROWSER_PACKAGES) needed (run as root, or install them)"; exit 2; }; done)
	$(PY) tests/browser/run_notebooks_in_jupyterlab.py --timeout $(BROWSER_TIMEOUT) $(BROWSER_NOTEBOOKS)

# The paper: numbers, tables and figure macros regenerated from the committed results (python -m afr.paper; no
# training), then LaTeX (needs `make apt`). Fails on a LaTeX error, an unknown \result key, or any undefined
# reference or citation; the LaTeX output is in paper/latexmk.log. Without LaTeX it regenerates paper/generated/,
# then says how to install LaTeX (the LaTeX packages of apt.txt) and fails.
PAPER_DOCS := main supplementary
PAPER_LATEX_PACKAGES := texlive-latex-base texlive-publishers latexmk
.PHONY: paper
paper: $(STAMP)
	$(PY) -m afr.paper
	@for check in "command -v latexmk" "command -v pdflatex" "kpsewhich elsarticle.cls"; do $$check >/dev/null 2>&1 || { \
	  echo "paper: LaTeX is missing ('$$check' finds nothing), so the PDFs cannot be built; paper/generated/ is up to date." >&2; \
	  echo "paper: install LaTeX with 'make apt' as root, or the Debian packages of apt.txt: apt-get install $(PAPER_LATEX_PACKAGES)" >&2; \
	  exit 1; }; done
	@cd paper && for doc in $(PAPER_DOCS); do \
	  if ! latexmk -pdf -interaction=nonstopmode -halt-on-error $$doc.tex > latexmk.log 2>&1; then \
	    grep -A4 -E '^!|Error' $$doc.log latexmk.log | head -30; echo "paper: LaTeX failed on $$doc.tex (paper/latexmk.log)"; exit 1; fi; \
	  if grep -E '(Reference|Citation).*undefined|There were undefined' $$doc.log; then \
	    echo "paper: undefined references or citations in paper/$$doc.log"; exit 1; fi; \
	done
	@echo "paper: paper/main.pdf, paper/supplementary.pdf"

clean-data:
	rm -rf data/processed
