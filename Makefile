# freshrec: `make run` (the quickstart) and `make test` (the whole suite) do all set-up themselves.
#
# Heavy dependencies (torch is a multi-GB CUDA build on PyPI) are installed once into a cached
# environment under $(FRESHREC_CACHE), keyed by a hash of pyproject.toml's dependency lists (so
# editing tool settings there does not reinstall torch). The repository's own
# .venv is a small virtual environment that sees that cache through a .pth file and holds only
# the editable install of this checkout, so every clone gets `.venv/bin/freshrec` in seconds.

SHELL := /bin/bash
PYTHON ?= python3
FRESHREC_CACHE ?= $(HOME)/.cache/freshrec
DEPS_LIST := $(PYTHON) -c 'import tomllib; d = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
	print("\n".join(d["dependencies"] + d["optional-dependencies"]["test"] \
	+ d["optional-dependencies"]["bench"]))'
DEPS_HASH := $(shell $(DEPS_LIST) | sha256sum | cut -c1-16)
DEPS := $(FRESHREC_CACHE)/venv-$(DEPS_HASH)
VENV := .venv
KAFKA := deploy/kafka/local-kafka.sh
# The test broker listens on its own port so that it never collides with `make run`'s.
TEST_KAFKA_PORT ?= 19092
# The security tests start a broker with a SASL_SSL listener of their own, on this port + 2.
TEST_SECURE_KAFKA_PORT ?= $(shell expr $(TEST_KAFKA_PORT) + 10)
DURATION ?=
# Prometheus and promtool for the monitoring tests: Debian's `prometheus` package, unpacked into
# the cache (never installed on the system). Exported, so every recipe's pytest sees them.
TOOLS := $(FRESHREC_CACHE)/tools
PROMETHEUS_HOME := $(TOOLS)/prometheus
export FRESHREC_PROMETHEUS := $(PROMETHEUS_HOME)/usr/bin/prometheus
export FRESHREC_PROMTOOL := $(PROMETHEUS_HOME)/usr/bin/promtool

.PHONY: setup tools deploy-tools run test test-reliability unit integration kafka-start kafka-stop lint docs clean

setup: $(VENV)/.ok

tools: $(PROMETHEUS_HOME)/.ok

# Once per machine: `apt-get download` (package lists refreshed only if it cannot find the
# package), `dpkg -x` into prometheus-<version>/, and the `prometheus` link to it.
$(PROMETHEUS_HOME)/.ok:
	@echo "tools: unpacking Debian's prometheus package into $(TOOLS)"
	rm -rf $(TOOLS)/download.tmp && mkdir -p $(TOOLS)/download.tmp
	cd $(TOOLS)/download.tmp && { apt-get download prometheus \
		|| { apt-get update -q && apt-get download prometheus; }; }
	deb="$$(ls $(TOOLS)/download.tmp/prometheus_*.deb)"; \
	version="$$(dpkg-deb --field "$$deb" Version)"; dest="$(TOOLS)/prometheus-$$version"; \
	rm -rf "$$dest" "$$dest.tmp" && dpkg -x "$$deb" "$$dest.tmp" && mv "$$dest.tmp" "$$dest" \
	&& ln -sfn "prometheus-$$version" $(PROMETHEUS_HOME)
	rm -rf $(TOOLS)/download.tmp
	$(FRESHREC_PROMTOOL) --version
	touch $@

$(DEPS)/.ok:
	@echo "setup: installing dependencies into $(DEPS) (once per pyproject.toml)"
	rm -rf $(DEPS).tmp
	@# A dependency list that changed by one package should not download torch again: start
	@# from a copy of the newest environment already cached here, if any, and let pip add the
	@# difference. A fresh machine starts from an empty virtual environment.
	seed="$$(ls -1dt $(FRESHREC_CACHE)/venv-*/.ok 2>/dev/null | head -1)"; \
	if [ -n "$$seed" ]; then \
		echo "setup: starting from a copy of $$(dirname "$$seed")"; \
		cp -a "$$(readlink -f "$$(dirname "$$seed")")" $(DEPS).tmp; \
	else \
		$(PYTHON) -m venv $(DEPS).tmp; \
	fi
	$(DEPS).tmp/bin/python -m pip install -q --upgrade pip
	$(DEPS_LIST) > $(DEPS).tmp/requirements.txt
	$(DEPS).tmp/bin/python -m pip install -r $(DEPS).tmp/requirements.txt
	rm -rf $(DEPS) && mv $(DEPS).tmp $(DEPS)
	@# venv scripts carry absolute paths; the rename above breaks them, so refer to python -m only.
	touch $(DEPS)/.ok

$(VENV)/.ok: $(DEPS)/.ok pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv --without-pip $(VENV)
	echo "import site; site.addsitedir('$$(cd $(DEPS) && pwd)/lib/python$$($(PYTHON) -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')/site-packages')" \
		> $$($(VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/freshrec-deps.pth
	$(VENV)/bin/python -m pip install -q --no-deps --no-build-isolation -e .
	test -x $(VENV)/bin/freshrec
	touch $(VENV)/.ok

# The Docker Compose CLI plugin that tests/deploy runs (`docker compose config`), built once from
# the Go module proxy into $(FRESHREC_CACHE)/docker/cli-plugins (1.5-3 minutes on 2 cores).
deploy-tools:
	FRESHREC_CACHE=$(FRESHREC_CACHE) deploy/tools/install-compose.sh

kafka-start:
	$(KAFKA) start

kafka-stop:
	$(KAFKA) stop

run: setup
	FRESHREC_DURATION=$(DURATION) deploy/run-local.sh

# The whole suite: unit tests and doctests, then integration tests against a real broker that
# this target starts on $(TEST_KAFKA_PORT) and stops again, whatever the tests' outcome. The
# fault tests that kill, freeze and restart worker processes (marked `reliability`, minutes
# each) run in `make test-reliability`; CI runs both. The security tests start and stop the
# secured broker on $(TEST_SECURE_KAFKA_PORT) themselves; the last stop here only catches one
# that a killed pytest left behind.
test: setup tools deploy-tools
	@set -o pipefail; export FRESHREC_KAFKA_PORT=$(TEST_KAFKA_PORT); \
	$(KAFKA) start || exit 1; \
	FRESHREC_TEST_BOOTSTRAP=127.0.0.1:$(TEST_KAFKA_PORT) \
	FRESHREC_TEST_SECURE_KAFKA_PORT=$(TEST_SECURE_KAFKA_PORT) $(VENV)/bin/python -m pytest \
		-m "not reliability" tests consumer learner serving bench; status=$$?; \
	$(KAFKA) stop; FRESHREC_KAFKA_PORT=$(TEST_SECURE_KAFKA_PORT) $(KAFKA) stop; exit $$status

test-reliability: setup
	@set -o pipefail; export FRESHREC_KAFKA_PORT=$(TEST_KAFKA_PORT); \
	$(KAFKA) start || exit 1; \
	FRESHREC_TEST_BOOTSTRAP=127.0.0.1:$(TEST_KAFKA_PORT) $(VENV)/bin/python -m pytest \
		-m reliability tests/integration; status=$$?; \
	$(KAFKA) stop; exit $$status

unit: setup tools deploy-tools
	$(VENV)/bin/python -m pytest tests/unit tests/deploy consumer learner serving bench

integration: setup tools
	@export FRESHREC_KAFKA_PORT=$(TEST_KAFKA_PORT); $(KAFKA) start || exit 1; \
	FRESHREC_TEST_BOOTSTRAP=127.0.0.1:$(TEST_KAFKA_PORT) \
	FRESHREC_TEST_SECURE_KAFKA_PORT=$(TEST_SECURE_KAFKA_PORT) \
		$(VENV)/bin/python -m pytest tests/integration; status=$$?; \
	$(KAFKA) stop; FRESHREC_KAFKA_PORT=$(TEST_SECURE_KAFKA_PORT) $(KAFKA) stop; exit $$status

lint: setup
	$(VENV)/bin/python -m ruff check consumer learner serving tests bench
	$(VENV)/bin/python -m ruff format --check consumer learner serving tests bench
	$(VENV)/bin/python -m mypy

# The README's settings and metrics tables are generated from the code; the unit tests fail
# when they are stale.
docs: setup
	$(VENV)/bin/python -m serving.reference --readme README.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
