# explainstream developer and CI entry points. The README's two commands are `make demo` and
# `make test`; each does all of its own set-up (cached under ~/.cache/explainstream).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CACHE ?= $(HOME)/.cache/explainstream
TOOLS := $(CACHE)/bin
LLAMA_CPP_VERSION := 0.3.36
# llama.cpp is built for the CPU it runs on (GGML_NATIVE), so the cached wheel is keyed by
# its flags. On x86 its AMX kernels are left out: on AMX CPUs (Intel Sapphire Rapids and
# later) the vendored llama.cpp's AMX matmul segfaults in the first llama_decode of the
# bundled Q4_1 model (seen on a Xeon with amx_int8; llama.cpp issue 20824).
CPU_KEY := $(shell grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | md5sum | cut -c1-12)
ifeq ($(shell uname -m),x86_64)
LLAMA_CFLAGS := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
endif
WHEELS := $(CACHE)/wheels/$(CPU_KEY)-noamx
# Deployment validators, built from their Go modules (see tests/deploy/validators.py).
HELM_VERSION := v3.22.0
KUBECONFORM_VERSION := v0.8.0
GO_MODULES := github.com/kedacore/keda/v2@v2.21.0 \
	github.com/prometheus-operator/prometheus-operator@v0.85.0 \
	github.com/compose-spec/compose-go/v2@v2.16.2

.PHONY: install llama-wheel prometheus kafka-jars registry-jars validators setup lint test \
	test-fast ci bench demo validate chart-schema clean gpu-assets reliability reliability-report \
	nemesis docs docs-serve docs-reference finetuned-model bench-finetuned

# -- the two commands ----------------------------------------------------------------------

demo: $(VENV)/.installed kafka-jars
	$(BIN)/explainstream demo

# Every test runs: a skipped test fails the run (tests/deploy/noskip.py), so a missing
# tool is a red line naming it, never a silent gap.
test: setup
	$(BIN)/python -m pytest -q -ra --durations=15 -p tests.deploy.noskip

# -- set-up (each step is cached and skips itself when done) ---------------------------------

setup: $(VENV)/.installed kafka-jars registry-jars validators prometheus

install: llama-wheel
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --find-links $(WHEELS) -e ".[consumer,dev]"
	@touch $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(MAKE) install

llama-wheel:
	@mkdir -p $(WHEELS)
	@if ls $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1; then \
		echo "llama-cpp-python $(LLAMA_CPP_VERSION): cached wheel in $(WHEELS)"; \
	else \
		echo "building llama-cpp-python $(LLAMA_CPP_VERSION) (about 5-7 minutes on 2 cores) ..."; \
		CFLAGS="$(LLAMA_CFLAGS) $$CFLAGS" CXXFLAGS="$(LLAMA_CFLAGS) $$CXXFLAGS" \
		$(PY) -m pip wheel -q --no-cache-dir --no-deps -w $(WHEELS) llama-cpp-python==$(LLAMA_CPP_VERSION); \
	fi

# Debian's prometheus package (prometheus + promtool) for the real-Prometheus tests.
prometheus:
	@if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then \
		echo "prometheus: $$(command -v prometheus)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's prometheus (prometheus + promtool) ..."; \
		apt-get update -q >/dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus >/dev/null; \
	else \
		echo "prometheus: CANNOT INSTALL here (needs root and apt-get): install the prometheus"; \
		echo "  and promtool binaries yourself, or the tests marked 'prometheus' will fail."; \
	fi

kafka-jars: $(VENV)/.installed
	$(BIN)/python -c "from consumer.dev.devbroker import fetch_jars, find_java; find_java(); print(fetch_jars())"

# Apicurio Registry (the real schema registry of the tests), built once with Maven.
registry-jars: $(VENV)/.installed
	$(BIN)/python -m consumer.dev.registry

validators:
	@mkdir -p $(TOOLS)
	@command -v go >/dev/null 2>&1 || { \
		echo "validators: Go is required to build helm and kubeconform (https://go.dev/dl)"; exit 1; }
	@test -x $(TOOLS)/helm || { \
		echo "building helm $(HELM_VERSION) from its Go module (a few minutes, once) ..."; \
		GOBIN=$(TOOLS) GOFLAGS=-buildvcs=false go install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION); }
	@test -x $(TOOLS)/kubeconform || { \
		echo "building kubeconform $(KUBECONFORM_VERSION) from its Go module ..."; \
		GOBIN=$(TOOLS) GOFLAGS=-buildvcs=false \
			go install github.com/yannh/kubeconform/cmd/kubeconform@$(KUBECONFORM_VERSION); }
	@go mod download $(GO_MODULES)
	@echo "validators: helm, kubeconform in $(TOOLS); KEDA, Prometheus Operator, Compose schemas"

# -- the rest ------------------------------------------------------------------------------

lint: $(VENV)/.installed
	$(BIN)/ruff check consumer producer_sdk schemas tests
	$(BIN)/ruff format --check consumer producer_sdk schemas tests
	$(BIN)/mypy consumer producer_sdk schemas

# helm lint/template, kubeconform, hadolint and the Compose schema on the repository's files.
validate: $(VENV)/.installed validators
	$(BIN)/python -m tests.deploy.validators

# Regenerate the chart's values.schema.json from consumer/config.py's Settings.
chart-schema: $(VENV)/.installed
	$(BIN)/python -m tests.deploy.chart_schema

# The documentation site (mkdocs.yml, docs/): strict, so a broken link or anchor fails.
docs: $(VENV)/.installed
	$(BIN)/mkdocs build --strict
docs-serve: $(VENV)/.installed
	$(BIN)/mkdocs serve -a 127.0.0.1:8001
# The generated reference pages: configuration from Settings, metrics from Metrics.
docs-reference: $(VENV)/.installed
	$(BIN)/python -m consumer.dev.docref

# Fine-tuning (docs/manual/finetuning.md): the bundled model trained on explanations that pass
# the grounding checks (about 40 minutes on 2 cores), then both models through bench quality.
FINETUNED ?= models/smollm2-135m-explainstream.gguf
finetuned-model: $(VENV)/.installed
	$(BIN)/explainstream finetune --out $(FINETUNED)
bench-finetuned: $(VENV)/.installed
	$(BIN)/explainstream bench quality --policies off,repair --compare-model $(FINETUNED) \
		--out docs/benchmarks/finetuned.json > docs/benchmarks/finetuned.md
	$(BIN)/explainstream bench report --dir docs/benchmarks

test-fast: $(VENV)/.installed kafka-jars
	$(BIN)/pytest -q -m "not llama and not prometheus and not deploy and not registry"

ci: lint test

# The whole set (each <= 10 min on a 2-core machine); JSON, plots and REPORT.md land in
# docs/benchmarks/. `bench peer` builds llama-server once (cached), so its first run is longer.
bench: $(VENV)/.installed
	mkdir -p docs/benchmarks
	$(BIN)/explainstream bench engine --engines llama,sequential --concurrency 1,8 --rounds 2 \
		--json > docs/benchmarks/engine.json.tmp
	mv docs/benchmarks/engine.json.tmp docs/benchmarks/engine.json
	$(BIN)/explainstream bench peer --out docs/benchmarks/peer.json
	$(BIN)/explainstream bench peer --peer-arg=-fa --peer-arg=off --out docs/benchmarks/peer_fa_off.json
	$(BIN)/explainstream bench pipeline --out docs/benchmarks/pipeline.json
	$(BIN)/explainstream bench priority --out docs/benchmarks/priority.json
	$(BIN)/explainstream bench memory --out docs/benchmarks/memory.json
	$(BIN)/explainstream bench scale --out docs/benchmarks/scale.json
	$(BIN)/explainstream bench e2e --out docs/benchmarks/e2e.json
	$(BIN)/explainstream bench quality --out docs/benchmarks/quality.json \
		--plot docs/benchmarks/quality.png > docs/benchmarks/quality.md
	$(BIN)/explainstream bench report --dir docs/benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info site

# What consumer/dev/gpu_bench.sh needs on a GPU machine without network access, in .gpu/:
# the pinned sdist without vocab files/docs/git objects, wheels for Python 3.12, vocab.gguf.
GPU_WHEELS := aiokafka==0.14.0 fastavro pydantic pydantic-core annotated-types typing-inspection \
	typing_extensions pydantic-settings python-dotenv gguf diskcache async-timeout
gpu-assets: $(VENV)/.installed
	mkdir -p .gpu/whl $(CACHE)/sdist
	test -f $(CACHE)/sdist/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz || $(BIN)/pip download -q \
		--no-deps --no-binary :all: -d $(CACHE)/sdist llama-cpp-python==$(LLAMA_CPP_VERSION)
	rm -rf .gpu/src && mkdir -p .gpu/src && tar xzf \
		$(CACHE)/sdist/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz -C .gpu/src
	tar czf .gpu/llama_cpp_python-$(LLAMA_CPP_VERSION)-stripped.tar.gz -C .gpu/src \
		--exclude=.git --exclude='*/vendor/llama.cpp/models' --exclude='*/vendor/llama.cpp/docs' \
		--exclude='*/vendor/llama.cpp/media' llama_cpp_python-$(LLAMA_CPP_VERSION)
	rm -rf .gpu/src
	$(BIN)/pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 --platform any -d .gpu/whl $(GPU_WHEELS)
	$(BIN)/explainstream bench make-model --shape vocab-only --out .gpu/vocab.gguf
	@du -sh .gpu

# The fault-injection suite alone, and the Guarantees table (README, site) regenerated from a run.
reliability: setup
	$(BIN)/python -m pytest -q -m reliability tests/reliability --durations=10
# The seeded random nemesis alone (tests/reliability/nemesis.py): MINUTES per delivery mode;
# what each run did goes to docs/reliability/nemesis-seed$(SEED).jsonl.
SEED ?= 1
MINUTES ?= 1.2
nemesis: setup
	rm -f docs/reliability/nemesis-seed$(SEED).jsonl
	NEMESIS_SEED=$(SEED) NEMESIS_MINUTES=$(MINUTES) \
		NEMESIS_REPORT=docs/reliability/nemesis-seed$(SEED).jsonl \
		$(BIN)/python -m pytest -q -m reliability tests/reliability/test_nemesis.py
reliability-report: setup
	RELIABILITY_SUMMARY=docs/reliability/summary.json $(BIN)/python -m pytest -q -m reliability \
		tests/reliability
	$(BIN)/python -m tests.reliability.summary docs/reliability/summary.json --readme README.md \
		docs/manual/guarantees.md
