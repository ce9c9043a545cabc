# Set-up and the two commands of the README. Everything installs into .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 0

.PHONY: env demo test

$(BIN)/medbench: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

env: $(BIN)/medbench

# A short training run of Swin-Unet on Kvasir-SEG (quick preset), recorded in ./mlflow.db.
demo: env
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/mlflow run . -e train -P model=swinunet -P dataset=kvasir_seg \
		-P preset=quick --env-manager local --experiment-name medbench

test: env
	HF_HUB_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest $(PYTEST_ARGS)
