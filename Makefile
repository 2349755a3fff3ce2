VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,cli,bench]'
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check asyncimg tests benchmarks
	$(VENV)/bin/mypy --strict asyncimg

test: lint
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/asyncimg batch examples/prompts.txt -o out --emulator

bench: $(STAMP)
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
