# One entry point: `make book` builds the website, `make test` runs every check CI runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
NBVAL := --nbval-current-env --nbval-cell-timeout=600 -p no:cacheprovider
# Stored outputs are written and checked with one thread, so a sum's order (and so its last bits)
# is the same on every machine; the course's models are small enough that one thread costs little.
ONE_THREAD := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
# Notebook kernels draw figures with matplotlib's inline backend; an MPLBACKEND set for scripts
# (e.g. Agg on a headless machine) would silently drop every figure from the pages.
unexport MPLBACKEND

.PHONY: help venv book test test-unit test-notebooks test-site exercises solutions serve clean

help:
	@echo "make book       build the website into _build/html (warnings are errors)"
	@echo "make test       unit tests, nbval on solutions/ (strict) and exercises/ (lax), sync check, book build, browser test"
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
	$(BIN)/jupyter-book build . --warningiserror --nitpick --keep-going
	@echo "The book is built: open _build/html/index.html"

test: test-unit test-notebooks book test-site

test-unit: venv
	$(BIN)/python -m pytest tests

test-notebooks: venv
	$(ONE_THREAD) $(BIN)/python -m pytest --nbval $(NBVAL) --nbval-sanitize-with tests/nbval_sanitize.cfg solutions
	$(ONE_THREAD) $(BIN)/python -m pytest --nbval-lax $(NBVAL) exercises

test-site: venv
	COURSE_SITE=_build/html $(BIN)/python -m pytest tests/test_site.py -p no:cacheprovider

exercises: venv
	$(BIN)/python tools/make_exercises.py

solutions: venv
	$(ONE_THREAD) $(BIN)/python tools/run_notebooks.py solutions/*.ipynb
	$(BIN)/python tools/make_exercises.py

serve:
	$(BIN)/python -m http.server --directory _build/html 8000

clean:
	rm -rf _build .pytest_cache
