# Two commands do everything: `make book` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: book test lint exercises grade bench clean system-book system-test

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Progress bars are for live runs: a page built with one would show it frozen.
book: book-assets
	TQDM_DISABLE=1 $(VENV)/bin/jupyter-book build . --all -W -n --keep-going

# The site's own copies of MathJax, RequireJS and the ipywidgets manager (npm, pinned, cached).
.PHONY: book-assets
book-assets: $(STAMP) system-book
	$(PY) book/fetch_assets.py

test: $(STAMP) system-test
	$(PY) -m ruff check .
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check .

# Regenerate the student notebooks in exercises/ from solutions/ (byte-identical if unchanged).
# The assignments are those declared in bnlib/grading/assignments/ (read once .venv exists).
ASSIGNMENTS = $(shell $(PY) -m bnlib.grading.assignments)
exercises: $(STAMP)
	for a in $(ASSIGNMENTS); do \
		PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/nbgrader generate_assignment $$a \
			--force --log-level=ERROR || exit 1; \
	done

# Grade every submission in grading/submitted (ASSIGNMENT=bn_forward to grade one;
# GRADE_ARGS="--executor celery --broker redis://HOST:6379/0" to grade on the job queue).
grade: $(STAMP)
	$(PY) -m bnlib.grading.cli grade $(if $(ASSIGNMENT),--assignment $(ASSIGNMENT)) $(GRADE_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/bench_cpu.py

clean:
	rm -rf _build

# Debian packages beyond Python (npm; for the tests also Chromium and Redis): installed when
# run as root, otherwise one line saying what to install.
system-book:
	@bash scripts/system-packages.sh book
system-test:
	@bash scripts/system-packages.sh test
