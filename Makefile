# explainstream developer and CI entry points. `make test` is the README's test command.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CACHE ?= $(HOME)/.cache/explainstream
LLAMA_CPP_VERSION := 0.3.36
# llama.cpp is built for the CPU it runs on, so the cached wheel is keyed by its flags.
CPU_KEY := $(shell grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | md5sum | cut -c1-12)
WHEELS := $(CACHE)/wheels/$(CPU_KEY)

.PHONY: install llama-wheel prometheus kafka-jars lint test test-fast ci bench demo clean

install: llama-wheel
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --find-links $(WHEELS) -e ".[consumer,dev]"

llama-wheel:
	@mkdir -p $(WHEELS)
	@if ls $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1; then \
		echo "llama-cpp-python $(LLAMA_CPP_VERSION): cached wheel in $(WHEELS)"; \
	else \
		echo "building llama-cpp-python $(LLAMA_CPP_VERSION) (about 5-7 minutes on 2 cores) ..."; \
		$(PY) -m pip wheel -q --no-deps -w $(WHEELS) llama-cpp-python==$(LLAMA_CPP_VERSION); \
	fi

prometheus:
	@command -v promtool >/dev/null 2>&1 || { \
		echo "installing Debian's prometheus (prometheus + promtool) ..."; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus >/dev/null; }

kafka-jars:
	$(BIN)/python -c "from consumer.dev.devbroker import fetch_jars, find_java; find_java(); print(fetch_jars())"

lint:
	$(BIN)/ruff check consumer producer_sdk schemas tests
	$(BIN)/ruff format --check consumer producer_sdk schemas tests
	$(BIN)/mypy consumer producer_sdk schemas

test:
	$(BIN)/pytest -q -ra --durations=15

test-fast:
	$(BIN)/pytest -q -m "not llama and not prometheus"

ci: install prometheus kafka-jars lint test

# The whole set (each <= 10 min on a 2-core machine); JSON, plots and REPORT.md land in
# docs/benchmarks/. `bench peer` builds llama-server once (cached), so its first run is longer.
bench:
	mkdir -p docs/benchmarks
	$(BIN)/explainstream bench engine --engines llama,sequential --concurrency 1,2,4,8 \
		--max-tokens 64 --requests 8 --json > docs/benchmarks/engine.json.tmp
	mv docs/benchmarks/engine.json.tmp docs/benchmarks/engine.json
	$(BIN)/explainstream bench peer --concurrency 1,8 --max-tokens 32 --rounds 1 --requests 8 \
		--out docs/benchmarks/peer.json
	$(BIN)/explainstream bench pipeline --out docs/benchmarks/pipeline.json
	$(BIN)/explainstream bench priority --out docs/benchmarks/priority.json
	$(BIN)/explainstream bench memory --out docs/benchmarks/memory.json
	$(BIN)/explainstream bench scale --out docs/benchmarks/scale.json
	$(BIN)/explainstream bench e2e --out docs/benchmarks/e2e.json
	$(BIN)/explainstream bench report --dir docs/benchmarks

demo:
	$(BIN)/explainstream demo

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
