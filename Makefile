# One entry point: `make book` builds the website, `make test` runs every check CI runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
NBVAL := --nbval-current-env --nbval-cell-timeout=300 -p no:cacheprovider
# Stored outputs are written and checked with one thread, so a sum's order (and so its last bits)
# is the same on every machine; the course's models are small enough that one thread costs little.
ONE_THREAD := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
# A second numeric path for the strict solutions run: ATen's generic kernels, MKL's
# conditional-numerical-reproducibility path and two threads. A stored output that only one CPU's
# arithmetic reproduces (a chaotic loss printed to the last digit) fails here, on any machine.
OTHER_NUMERICS := ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE OMP_NUM_THREADS=2 MKL_NUM_THREADS=2
# Every step that waits on another process (kernels, browsers, torchrun) has a hard wall-clock limit
# in seconds: a stuck one fails the step, naming what was stuck, instead of stalling CI.
LIMIT := $(BIN)/python tools/with_limit.py
# The chapters, executed by tools/run_notebooks.py (own process per page, one thread, hard limit)
# into the cache that Jupyter Book reads, so Sphinx itself executes nothing.
CHAPTERS := $(wildcard book/0*.md)
# Notebook kernels draw figures with matplotlib's inline backend; an MPLBACKEND set for scripts
# (e.g. Agg on a headless machine) would silently drop every figure from the pages.
unexport MPLBACKEND

# bash with pipefail, so a step piped through tee still fails when its command does.
SHELL := bash
.SHELLFLAGS := -o pipefail -c

.PHONY: help venv lint format book test test-unit test-notebooks test-site exercises solutions serve clean

help:
	@echo "make book       build the website into _build/html (warnings are errors)"
	@echo "make lint       ruff: lint and format check (run first by make test)"
	@echo "make format     ruff: format the Python files and apply ruff's safe fixes"
	@echo "make test       lint, unit tests, nbval on solutions/ (strict, two numeric paths) and exercises/ (lax),"
	@echo "                sync check, book build, browser test; fails if anything was written into the source tree"
	@echo "make test-site  open every page of the built site in headless Chromium, offline (after make book)"
	@echo "make exercises  regenerate exercises/ from solutions/"
	@echo "make solutions  re-execute solutions/ in place (after editing one)"
	@echo "make serve      serve the built site on http://127.0.0.1:8000"

venv: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[book,test]"
	touch $@

book: venv
	rm -rf _build/html
	$(BIN)/python tools/offline_assets.py
	$(BIN)/python tools/run_notebooks.py --jobs 2 --limit 900 --cache _build/.jupyter_cache $(CHAPTERS)
	$(ONE_THREAD) $(LIMIT) 900 $(BIN)/jupyter-book build . --warningiserror --nitpick --keep-going 2>&1 | tee _build/sphinx.log
	@if grep -q "Executing notebook" _build/sphinx.log; then \
		echo "Sphinx executed a page itself (see _build/sphinx.log): its cache entry from tools/run_notebooks.py did not match" >&2; exit 1; fi
	@echo "The book is built: open _build/html/index.html"

# Lint and format check; ruff's cache lives under _build/ (pyproject.toml), so it writes nothing else.
lint: venv
	$(LIMIT) 300 $(BIN)/ruff check .
	$(LIMIT) 300 $(BIN)/ruff format --check .

# Fixes first, then formatting (the fixes' output is formatted); `make lint` then lists what needs a person.
format: venv
	$(BIN)/ruff check --fix --exit-zero --quiet .
	$(BIN)/ruff format .

# The whole suite, bracketed by a check that it wrote nothing into the source tree.
test: venv
	$(BIN)/python tools/tree_guard.py snapshot
	$(MAKE) lint test-unit test-notebooks book test-site
	$(BIN)/python tools/tree_guard.py check

test-unit: venv
	$(LIMIT) 1200 $(BIN)/python -m pytest tests

test-notebooks: venv
	$(ONE_THREAD) $(LIMIT) 900 $(BIN)/python -m pytest --nbval $(NBVAL) --nbval-sanitize-with tests/nbval_sanitize.cfg solutions
	$(OTHER_NUMERICS) $(LIMIT) 900 $(BIN)/python -m pytest --nbval $(NBVAL) --nbval-sanitize-with tests/nbval_sanitize.cfg solutions
	$(ONE_THREAD) $(LIMIT) 900 $(BIN)/python -m pytest --nbval-lax $(NBVAL) exercises

test-site: venv
	COURSE_SITE=_build/html $(LIMIT) 900 $(BIN)/python -m pytest tests/test_site.py -p no:cacheprovider

exercises: venv
	$(BIN)/python tools/make_exercises.py

solutions: venv
	$(BIN)/python tools/run_notebooks.py --jobs 2 solutions/*.ipynb
	$(BIN)/python tools/make_exercises.py

serve:
	$(BIN)/python -m http.server --directory _build/html 8000

clean:
	rm -rf _build .pytest_cache
