VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo bench bench-throughput lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,cli,bench]'
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check asyncimg tests benchmarks
	$(VENV)/bin/mypy --strict asyncimg
	$(VENV)/bin/mypy --strict tests/typing

test: lint
	$(PY) -m pytest -q

# The main job, offline: a batch against the embedded emulator, rate-limited to
# 8 images per 2 s so the limiter is seen at work. Two prompts fail on purpose;
# their exit status (1) is the expected result here. Run it again to see a resume.
# It ends by writing the report page, out/index.html, and printing its path.
demo: $(STAMP)
	$(VENV)/bin/asyncimg batch examples/prompts.txt -o out --emulator --emulator-latency 0.2 \
		--model dall-e-2 --size 256x256 --rate 8/2s --report; test $$? -le 1

bench: $(STAMP)
	$(PY) benchmarks/run.py
	$(PY) benchmarks/throughput.py

# Throughput under a rate limit, beside the SDK (about 4 minutes).
bench-throughput: $(STAMP)
	$(PY) benchmarks/throughput.py

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
