# Two commands set everything up on a fresh machine: `make test` and `make demo`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXTRAS ?= all,nudity,bench,dev

.PHONY: venv system-deps test test-fast demo lint clean images images-push locks

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	# torch first, from the pinned CPU wheel, so nothing later can pull a CUDA build.
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	# Test data only: the insightface wheel ships a real 6-person group photo the judge tests use (its deps are not needed).
	$(BIN)/pip install -q --no-deps insightface==2.1
	@! $(BIN)/pip show torchvision >/dev/null 2>&1 || (echo "torchvision got installed; it breaks transformers" && exit 1)
	touch $(STAMP)

venv: $(STAMP)

# Debian packages some tests use (headless Chromium renders the HTML report; chromedriver drives the serving page).
# Installed when we are root with apt; elsewhere the tests that need them are skipped with a reason that says what to
# install.
system-deps:
	@{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	      || echo "could not install chromium/chromium-driver: the report rendering and page tests will be skipped"; \
	  else echo "chromium or chromedriver missing (apt-get install chromium chromium-driver): the report rendering" \
	    "and serving page tests will be skipped"; fi; }

# --durations: CI's log lists the 30 slowest tests, so what makes CI long is seen on every run.
test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q --durations=30

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

demo: $(STAMP)
	$(BIN)/livo run

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

# Container images (images/). Tags: $(IMAGE_REPO):<pyproject version>-cuda and -cpu. Needs Docker with buildx;
# images-push prints each pushed `repo@sha256:...` (compile the pipeline with `livo compile --image <that>`).
IMAGE_REPO     ?= ghcr.io/livo-mlops/livo
IMAGE_VERSION  ?=
IMAGE_PLATFORM ?= linux/amd64
GIT_COMMIT     ?= $(shell git rev-parse HEAD 2>/dev/null)
IMAGE_ARGS = --repo "$(IMAGE_REPO)" --git-commit "$(GIT_COMMIT)" --platform "$(IMAGE_PLATFORM)" \
	$(if $(IMAGE_VERSION),--version "$(IMAGE_VERSION)")

images:
	@python3 images/build.py load $(IMAGE_ARGS)

images-push:
	@python3 images/build.py push $(IMAGE_ARGS)

# Hash-pinned dependency locks the Dockerfiles install (regenerate after changing constraints.txt or the extras).
locks: $(STAMP)
	UV=$(BIN)/uv sh images/lock.sh
