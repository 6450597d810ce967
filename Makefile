# Everything a fresh machine needs is installed from here; nothing by hand.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
# Debian packages that tests drive for real (added as the features that need them land).
SYSTEM_PACKAGES ?= prometheus-alertmanager chromium prometheus postgresql valgrind redis-server

.PHONY: demo test bench lint system-deps clean

$(PY):
	python3 -m venv $(VENV)

# The install compiles the kit's C helpers (hatch_build.py): a compiler and the interpreter's
# headers first, so the tests meet the compiled code, not only its pure-Python twins.
$(STAMP): pyproject.toml hatch_build.py $(wildcard instrument/*/_*.c instrument/*/_*.h) | $(PY)
	bash .ci/system-deps.sh gcc
	$(PY) -c "import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" || bash .ci/system-deps.sh python3-dev
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# Debian packages some tests drive for real (browsers, Prometheus, Alertmanager, SMTP is pure Python).
system-deps:
	bash .ci/system-deps.sh $(SYSTEM_PACKAGES)

demo: $(STAMP)
	$(VENV)/bin/instrument demo $(DEMO_ARGS)

test: $(STAMP) system-deps
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP) system-deps
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/instructions.py
	$(PY) benchmarks/flusher.py
	$(PY) benchmarks/profiler.py
	$(PY) benchmarks/memory.py
	$(PY) benchmarks/collector.py
	$(PY) benchmarks/alerting.py
	$(PY) benchmarks/logging_bench.py
	$(PY) benchmarks/dashboard.py
	$(PY) benchmarks/scrape.py
	$(PY) benchmarks/postgres.py
	$(PY) benchmarks/otlp.py
	$(PY) benchmarks/summary.py
	$(PY) benchmarks/soak.py

lint: $(STAMP)
	$(VENV)/bin/ruff check instrument tests benchmarks examples
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) instrument-data .pytest_cache
