# The two commands of the README: `make book` and `make test`. Both set up .venv/ first.
# `make lab` (the same set-up) opens the chapters in JupyterLab.
SHELL := /bin/bash
# The steps of `make test` (its prerequisites, left to right) run in order, even under `make -j`.
.NOTPARALLEL:
PY := .venv/bin/python
STAMP := .venv/.installed
# One switch keeps CI and default builds short while running the same code paths as full runs.
export YOLOV2_FAST ?= 1
export PYTHONHASHSEED := 0
# A reader's own VOC for chapters 6b, 8 and 9 (yolov2/book/source.py): YOLOV2_VOC=path/to/VOCdevkit
# YOLOV2_WEIGHTS=yolov2-tiny-voc.weights make book. The chapters run in book/: relative paths made absolute
# (YOLOV2_CFG only when it is a path, not a shipped cfg's name such as yolov2-tiny-voc).
BOOK_SOURCE_VARS := YOLOV2_VOC YOLOV2_WEIGHTS YOLOV2_CFG
$(foreach v,YOLOV2_VOC YOLOV2_WEIGHTS,$(if $(strip $($(v))),$(eval override $(v) := $(abspath $($(v))))))
ifneq ($(or $(findstring /,$(YOLOV2_CFG)),$(wildcard $(YOLOV2_CFG))),)
override YOLOV2_CFG := $(abspath $(YOLOV2_CFG))
endif
export $(BOOK_SOURCE_VARS)
# What the chapters' results depend on besides their code: the execution cache is dropped when it changes.
BOOK_MODE := fast=$(YOLOV2_FAST) $(foreach v,$(BOOK_SOURCE_VARS) YOLOV2_IMAGE_SET,$(v)=$(strip $($(v))))
# Every tool (nbval, jupyter-book, voila) and every kernel they start is the venv's; no global kernel.
export PATH := $(CURDIR)/.venv/bin:$(PATH)

# Unit tests: everything under tests/ except the browser tests, which need the built book.
TESTS ?= tests
# Chapters, book/NN_slug.ipynb, in order: nbval runs each one once.
CHAPTERS ?= $(sort $(wildcard book/[0-9][0-9]*_*.ipynb))
BUILD := _build
BOOK_CACHE := $(BUILD)/.jupyter_cache
VENDOR := book_assets/vendor
JB := jupyter-book build . --path-output . -W -n --keep-going
NBVAL := $(PY) -m pytest -q --nbval-lax --nbval-cell-timeout=180

.PHONY: lab venv test book lint strip vendor chromium test-unit test-chapters book-from-tests \
        test-browser cache-mode clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

# The book's browser assets (MathJax, RequireJS, the widget manager), from the npm registry.
$(VENDOR)/.vendored.json: tools/vendor_assets.py | $(STAMP)
	$(PY) tools/vendor_assets.py --dest $(VENDOR)

vendor: $(VENDOR)/.vendored.json

# Debian's chromium for the browser tests, where we may install it (root with apt-get).
chromium:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Debian's chromium for the browser tests..."; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "make: could not install chromium with apt-get; the browser tests will skip"; \
	else echo "make: chromium is not installed and cannot be here (needs root and apt-get);" \
	  "the browser tests will skip"; fi

# The execution cache does not know YOLOV2_FAST nor the data switch (YOLOV2_VOC, YOLOV2_WEIGHTS,
# YOLOV2_CFG, YOLOV2_IMAGE_SET): drop it (and Sphinx's state) when any of them changes.
cache-mode:
	@mkdir -p $(BUILD)
	@if [ "$$(cat $(BUILD)/.yolov2-mode 2>/dev/null)" != "$(BOOK_MODE)" ]; then \
	  rm -rf $(BOOK_CACHE) $(BUILD)/.doctrees $(BUILD)/html $(BUILD)/jupyter_execute; \
	  echo "$(BOOK_MODE)" > $(BUILD)/.yolov2-mode; fi

# make test: lint, unit tests, every chapter once through nbval (which fills the book's execution
# cache), the book built from that cache (executing nothing), then the browser tests on that HTML.
# Each step is also a target of its own (make test-chapters, make test-browser, ...).
test: venv vendor chromium lint test-unit test-chapters book-from-tests test-browser

lint: venv
	$(PY) -m ruff check yolov2 tests benchmarks tools book

test-unit: venv
	$(PY) -m pytest -q $(TESTS) --ignore=tests/test_book_html.py

test-chapters: venv cache-mode
	$(if $(CHAPTERS),$(NBVAL) --book-cache=$(BOOK_CACHE) $(CHAPTERS),@echo "no chapters in book/")

# Build from what test-chapters cached (--all: re-render every page from this run, not only the
# changed ones); fail if the build executed any notebook itself.
book-from-tests: venv vendor cache-mode
	@mkdir -p $(BUILD)
	set -o pipefail; $(JB) --all 2>&1 | tee $(BUILD)/book-build.log
	@if grep -n "Executing notebook" $(BUILD)/book-build.log; then \
	  echo "make: the book build executed notebooks that nbval had run (not cached?)"; exit 1; \
	else echo "book built from nbval's run: no notebook executed by the build"; fi

test-browser: venv
	$(PY) -m pytest -q tests/test_book_html.py

# make book: jupyter-book executes the chapters whose code changed since the last build (cache).
book: venv vendor cache-mode
	$(JB)

# Strip outputs from the chapters before committing (cells tagged nbval-check-output keep theirs).
strip: venv
	$(PY) tools/strip_notebooks.py book/*.ipynb

# make lab: the chapters (book/) in JupyterLab, served on 127.0.0.1 only, with the venv's kernel (the
# kernel spec's `python` is the server's own interpreter, .venv/bin/python). LAB_ARGS adds options,
# e.g. make lab LAB_ARGS="--no-browser --ServerApp.port=8890".
# (As root, in a container, JupyterLab needs --allow-root.)
LAB := $(PY) -m jupyterlab --ServerApp.ip=127.0.0.1 --ServerApp.root_dir=book \
       $(if $(filter 0,$(shell id -u)),--allow-root)
lab: venv
	$(LAB) $(LAB_ARGS)

clean:
	rm -rf $(BUILD)
