# The README's commands: `make run`, `make test`, `make bench`, `make check-darwin`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-tools lint typecheck pytest bench check-darwin test-darwin-shim install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel

# Reinstall when the build inputs change (the native module is compiled at install).
$(STAMP): $(PY) pyproject.toml setup.py csrc/metalmem.h csrc/linux.c csrc/darwin.c csrc/build_ffi.py
	$(PY) -m pip install --quiet -e '.[test,kube]'
	touch $(STAMP)

install: $(STAMP)

# The agent in observe mode on this host: metrics on 127.0.0.1:9438, nothing is ever stopped.
run: $(STAMP)
	$(VENV)/bin/metalmem-agent run

lint: $(STAMP)
	$(PY) -m ruff check metalmem cli tests benchmarks csrc/build_ffi.py
	$(PY) -m ruff format --check metalmem cli tests benchmarks csrc/build_ffi.py

typecheck: $(STAMP)
	$(PY) -m mypy

pytest: $(STAMP)
	$(PY) -m pytest -q

test: test-tools check-darwin lint typecheck pytest test-darwin-shim

# Debian's promtool (package prometheus), systemd-analyze (systemd) and wrk: the deploy tests
# run them. Installed here when missing and we are root with apt-get (CI: a clean clone as
# root); elsewhere their tests skip, each with one line naming the tool.
TEST_TOOLS := promtool:prometheus systemd-analyze:systemd
test-tools:
	@missing=""; for pair in $(TEST_TOOLS); do \
		command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "test-tools: apt-get install$$missing"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends $$missing; } >/dev/null 2>&1 \
		|| echo "test-tools: could not install$$missing; their tests will skip"; \
	else echo "test-tools: missing$$missing (not root or no apt-get); their tests will skip"; fi

# csrc/darwin.c (and the cffi module around it) must compile and link for macOS: zig's Apple
# SDK headers and libSystem stub, on any host (csrc/check_darwin.py says what is checked).
check-darwin: $(STAMP)
	$(PY) csrc/check_darwin.py

# csrc/darwin.c executed on Linux, unchanged, against a shim of the Apple APIs it calls: the
# shim's types checked against zig's Apple headers, the Sampler's darwin-backend and contract
# tests on that build, and gcov's line and branch coverage of darwin.c (tests/darwin_shim/).
# About 15 s on 2 cores; skipped with a message off Linux.
test-darwin-shim: $(STAMP)
	$(PY) tests/darwin_shim/build.py test --min-lines 100

# The benchmark suite, then docs/performance.md and its plot (about 6 minutes on 2 cores).
# METALMEM_BENCH_QUICK=1 shortens every part; METALMEM_BENCH_SKIP=agent,kube,reaction,polling,scale
# skips parts; docs/performance.md lists every switch.
bench: $(STAMP)
	$(PY) -m pytest benchmarks -q --benchmark-enable --benchmark-columns=min,median,mean,ops \
		--benchmark-json=benchmarks/results.json
	$(PY) benchmarks/agent_bench.py --json benchmarks/agent.json
	$(PY) benchmarks/reaction.py --json benchmarks/reaction.json
	$(PY) benchmarks/http_load.py --json benchmarks/http_load.json
	$(PY) benchmarks/race.py --json benchmarks/race.json
	$(PY) benchmarks/report.py benchmarks/results.json --agent benchmarks/agent.json \
		--reaction benchmarks/reaction.json --http benchmarks/http_load.json \
		--race benchmarks/race.json --write docs/performance.md

clean:
	rm -rf build dist *.egg-info metalmem/_native*.so metalmem/_native.c metalmem/_native.o
