# Every target that needs the virtual environment creates it first, so `make test` works on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test image-test demo bench dashboard lint clean

install: $(STAMP)

$(STAMP): pyproject.toml setup.py protos/seqserve/v1/seqserve.proto
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[train,serve,dev]"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Builds the serving and train images with podman (installed by scripts/install_podman.sh, as root) on a
# local Debian base, trains into a volume and serves it; skips, saying why, where podman cannot run.
image-test: $(STAMP)
	SEQSERVE_IMAGE_TEST=1 $(BIN)/python -m pytest tests/ops/test_image.py -q -s -rs

demo: $(STAMP)
	$(BIN)/python -m seqserve.demo

bench: $(STAMP)
	$(BIN)/python -m bench.run

# About 11 minutes: a 10-minute hostile soak and a 60 s overload run (bench/soak.py); writes
# bench/results/soak.json and soak.png. Niced: it shares the machine.
soak: $(STAMP)
	nice $(BIN)/python -m bench.soak --out bench/results

# docs/img/dashboard.png: the Grafana dashboard's PromQL over a real run (needs Debian's prometheus).
dashboard: $(STAMP)
	$(BIN)/python -m bench.dashboard

DOCKERFILES := $(filter-out %.dockerignore,$(wildcard docker/Dockerfile*))

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python scripts/typecheck_client.py
	$(BIN)/hadolint $(DOCKERFILES)
	$(BIN)/kubernetes-validate --strict --quiet docker/k8s/*.yaml
	$(BIN)/python scripts/validate_kserve.py docker/kserve/*.yaml
	@if command -v promtool >/dev/null 2>&1; then \
		promtool check config docker/prometheus.yml; \
	else echo "promtool not installed: docker/prometheus.yml and its rules not checked (apt-get install prometheus)"; fi

clean:
	rm -rf $(VENV) runs model_repository .pytest_cache
