# The development environment is uv.lock, installed into $(VENV) by uv at the version
# pinned here. Only python3 (3.10 or newer) is needed: pip brings uv into .tools, and uv
# never downloads an interpreter. `make lock` refreshes the lock and says what changed.
UV_VERSION := 0.13.9
PYTHON ?= python3
VENV ?= .venv
TOOLS := .tools
UV := $(TOOLS)/bin/uv
UV_STAMP := $(TOOLS)/.uv-$(UV_VERSION)
PY := $(VENV)/bin/python

export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON := $(PYTHON)
export UV_PYTHON_DOWNLOADS := never
# The lock names PyPI (pyproject.toml's [tool.uv]); an index from the caller's
# environment, or another activated venv, must not change what is resolved or where.
unexport VIRTUAL_ENV UV_INDEX UV_INDEX_URL UV_DEFAULT_INDEX UV_EXTRA_INDEX_URL \
	UV_FIND_LINKS UV_NO_INDEX UV_FROZEN UV_NO_SYNC

# What each environment installs from the lock (uv sync is exact: anything else goes).
# build: hatchling, for tests/test_wheel.py (uv builds asyncimg itself in isolation).
# bench: the SDK and limiters the benchmarks compare with, so their quick modes run too.
SYNC_test := --all-extras --group test --group lint --group build --group bench
SYNC_bench := --all-extras --all-groups
# The demo: the CLI (rich) and the report's thumbnails (Pillow), nothing else.
SYNC_demo := --extra cli --extra images
# The docs site: MkDocs and mkdocstrings, with every extra so the CLI reference can import the parser.
SYNC_docs := --all-extras --group docs

.PHONY: test test-fast venv demo docs bench bench-throughput lint lock clean

$(UV_STAMP):
	rm -rf $(TOOLS)
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	touch $@

# One stamp per environment; syncing one removes the others' stamps.
$(VENV)/.synced-%: uv.lock pyproject.toml $(UV_STAMP)
	@$(check-lock-urls)
	rm -f $(VENV)/.synced-*
	$(UV) sync --locked $(SYNC_$*)
	touch $@

# uv.lock must download from PyPI only, so that it installs on any machine that reaches PyPI.
define check-lock-urls
if grep -oE '[a-z+]+://[^/"]*' uv.lock | grep -vxE 'https://(pypi\.org|files\.pythonhosted\.org)'; \
then echo "uv.lock names the sources above, not PyPI: run make lock" >&2; exit 1; fi
endef

# name==version of every package in a uv.lock ($(1)), sorted.
locked-versions = awk '/^\[\[package\]\]/ { p = 1; n = ""; next } /^\[/ { p = 0 } \
	p && /^name = / { n = $$3 } p && /^version = / { print n "==" $$3 }' $(1) | tr -d '"' | LC_ALL=C sort -u

# The development environment that `make test` uses, for working by hand.
venv: $(VENV)/.synced-test

lint: $(VENV)/.synced-test
	$(VENV)/bin/ruff check asyncimg tests benchmarks
	$(VENV)/bin/mypy --strict asyncimg
	$(VENV)/bin/mypy --strict tests/typing

test: lint
	$(PY) -m pytest -q

# The fast part of the suite, for while you work: no subprocesses, browsers or wheel builds.
test-fast: $(VENV)/.synced-test
	$(PY) -m pytest -q -m "not slow and not subprocess"

# Every package to its newest release that pyproject.toml admits; then what changed.
lock: $(UV_STAMP)
	@if [ -f uv.lock ]; then $(call locked-versions,uv.lock); fi > $(TOOLS)/lock-before.txt
	$(UV) lock --upgrade
	@$(check-lock-urls)
	@$(call locked-versions,uv.lock) > $(TOOLS)/lock-after.txt
	@cd $(TOOLS) && { LC_ALL=C comm -23 lock-before.txt lock-after.txt | sed 's/^/- /'; \
		LC_ALL=C comm -13 lock-before.txt lock-after.txt | sed 's/^/+ /'; } > lock-changes.txt
	@if [ -s $(TOOLS)/lock-changes.txt ]; then echo "uv.lock changed (- before, + now):"; \
		cat $(TOOLS)/lock-changes.txt; else echo "uv.lock: no version changed"; fi
	@grep -q "\"$$(grep '^hatchling==' $(TOOLS)/lock-after.txt)\"" pyproject.toml || echo \
		"pyproject.toml: set build-constraint-dependencies to the lock's $$(grep '^hatchling==' \
		$(TOOLS)/lock-after.txt), then make lock again" >&2

# The main job, offline: a batch against the embedded emulator, rate-limited to
# 8 images per 2 s so the limiter is seen at work. Two prompts fail on purpose;
# their exit status (1) is the expected result here. Run it again to see a resume.
# It ends by writing the report page, out/index.html, and printing its path.
demo: $(VENV)/.synced-demo
	$(VENV)/bin/asyncimg batch examples/prompts.txt -o out --emulator --emulator-latency 0.2 \
		--model dall-e-2 --size 256x256 --rate 8/2s --report; test $$? -le 1

# The docs site into site/, offline, any warning an error (a broken link, a public name
# without a docstring: docs/hooks.py).
docs: $(VENV)/.synced-docs
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

bench: $(VENV)/.synced-bench
	$(PY) benchmarks/run.py
	$(PY) benchmarks/throughput.py

# Throughput under a rate limit, beside the SDK (about 4 minutes).
bench-throughput: $(VENV)/.synced-bench
	$(PY) benchmarks/throughput.py

clean:
	rm -rf $(VENV) $(TOOLS) out site .pytest_cache .mypy_cache .ruff_cache
