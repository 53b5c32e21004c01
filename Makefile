# Two commands do all set-up on a fresh machine:  `make demo`  and  `make test`.
# Both create .venv on first use against constraints.txt (exact versions tested together):
# torch (CPU build) first, then everything else in ONE pip call (a second call would upgrade
# botocore past aiobotocore's pin; see README, Development).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip install -c constraints.txt
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0

.PHONY: demo test test-fast lint bench world lock install clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev]'
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/mirage demo

# The CPU world the demo starts from (assets/world; docs/method.md §15), rebuilt from nothing with the
# project's own commands: about 2 hours on 2 idle cores (VAE 65 min, world model 44). WORLD=DIR writes it elsewhere.
WORLD ?= assets/world
world: $(BIN)/.installed
	$(BIN)/mirage synth-data --out runs/world/videos --n 64 --frames 40 --height 128 --width 160 --texture-scale 3 --seed 0
	$(BIN)/mirage train-vae --config configs/train_vae/default.yaml
	$(BIN)/mirage synth-data --out runs/world/revisit --n 64 --frames 49 --height 128 --width 160 --texture-scale 3 --seed 1 --revisit --paths fast
	$(BIN)/mirage preprocess --config configs/preprocess/world.yaml
	$(BIN)/mirage train --config configs/train/world.yaml
	$(BIN)/mirage export-world --config configs/train/world.yaml --out $(WORLD)

# The whole suite (what CI runs), with the 15 slowest tests listed at the end.
test: $(BIN)/.installed
	$(BIN)/python -m pytest -q --durations=15

# The fast subset (no end-to-end jobs): a few minutes on 2 cores.
test-fast: $(BIN)/.installed
	$(BIN)/python -m pytest -q -m "not slow" --durations=10

# Layering (import-linter contract in pyproject.toml) and ruff.
lint: $(BIN)/.installed
	$(BIN)/lint-imports
	$(BIN)/ruff check .

bench: $(BIN)/.installed
	$(BIN)/python -m benchmarks.memory_bench --mode full

# Re-resolve constraints.txt from pyproject.toml in a scratch venv (after changing dependencies).
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock && .venv-lock/bin/pip install --upgrade pip
	.venv-lock/bin/pip install torch==2.13.0 && .venv-lock/bin/pip install -e '.[dev]'
	{ sed -n '1,3p' constraints.txt; .venv-lock/bin/pip freeze --exclude-editable | sed 's/+cpu$$//'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt && rm -rf .venv-lock

clean:
	rm -rf $(VENV) runs .pytest_cache
