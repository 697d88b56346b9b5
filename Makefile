# One command each for the main job and the tests; both create .venv on a fresh machine.
PY := .venv/bin/python
VENV_STAMP := .venv/.installed

.PHONY: setup test lint format demo demo-convert demo-rl

$(VENV_STAMP): requirements.txt requirements-test.txt pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-test.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(VENV_STAMP)

setup: $(VENV_STAMP)

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

format: setup
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

test: lint
	JAX_PLATFORMS=cpu $(PY) -m pytest -q

# the main job: synthetic data -> training from scratch -> evaluation, 8-10 minutes on 2 CPU cores
demo: setup
	JAX_PLATFORMS=cpu $(PY) -m experiments.demo

# GRPO from the main job's SFT checkpoint (out/demo, after `make demo`) on its grounding and
# counting prompts: held-out metrics of both checkpoints side by side, reward curves
demo-rl: setup
	JAX_PLATFORMS=cpu $(PY) -m experiments.demo_rl

# a random model with the real vocabulary -> Orbax -> Hugging Face export -> score an image
demo-convert: setup
	JAX_PLATFORMS=cpu $(PY) -m experiments.demo_score
