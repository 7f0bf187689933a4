# The two commands of the README: `make book` and `make test`. Both set up .venv/ first.
PY := .venv/bin/python
STAMP := .venv/.installed
# One switch keeps CI and default builds short while running the same code paths as full runs.
export YOLOV2_FAST ?= 1
export PYTHONHASHSEED := 0

.PHONY: venv test book lint clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

test: venv
	$(PY) -m ruff check yolov2 tests benchmarks
	$(PY) -m pytest -q tests

book: venv
	.venv/bin/jupyter-book build . --path-output . -W -n --keep-going

lint: venv
	$(PY) -m ruff check yolov2 tests benchmarks

clean:
	rm -rf _build
